//! Cosine annealing with decaying restarts: the study's learning-rate schedule
//! (Table IV) as a pure function of the global optimiser step.

use crate::defaults;
use serde::{Deserialize, Serialize};
use std::f64::consts::PI;

/// Parameters of the schedule, in epochs and steps per epoch.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CosineRestartsConfig {
    /// Initial peak learning rate (`eta_max`).
    pub lr_max: f64,
    /// Peak learning rate reached at the last restart (`eta_final_max`).
    pub lr_final_max: f64,
    /// Floor of every cosine cycle (`eta_min`).
    pub lr_min: f64,
    /// Total length of the schedule in epochs (`E_max`).
    pub schedule_epochs: u64,
    /// Length of the first cycle in epochs (`E_restart`).
    pub restart_epochs: u64,
    /// Growth factor of the cycle length (`T_mult`).
    pub t_mult: f64,
    /// Optimiser steps per epoch (`S`).
    pub steps_per_epoch: u64,
}

/// Why a set of schedule parameters cannot define a learning rate.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScheduleError {
    #[error(
        "the restart period must be at least one epoch (got {0}); set --restart-epochs to 1 or more"
    )]
    /// `E_restart` is 0.
    RestartEpochs(u64),
    #[error(
        "the schedule must last at least one epoch (got 0); set --epochs or --schedule-epochs to 1 or more"
    )]
    /// `E_max` is 0.
    ScheduleEpochs,
    #[error(
        "an epoch must have at least one step (got 0); check the batch size and the training set size"
    )]
    /// `S` is 0.
    StepsPerEpoch,
    /// `E_max * S` steps do not fit in 64 bits.
    #[error(
        "{schedule_epochs} epochs of {steps_per_epoch} steps are more steps than can be counted (2^64); use fewer epochs or steps per epoch"
    )]
    TooLong {
        /// `E_max`.
        schedule_epochs: u64,
        /// `S`.
        steps_per_epoch: u64,
    },
    /// `T_mult` is below 1 or not finite.
    #[error("the cycle growth factor t_mult must be a finite number >= 1 (got {0})")]
    TMult(f64),
    #[error("lr_min must be a finite number >= 0 (got {0})")]
    /// `lr_min` is negative or not finite.
    LrMin(f64),
    #[error(
        "lr_max must be a finite number >= lr_min (got lr_max {lr_max}, lr_min {lr_min}); lower --lr-min or raise --lr"
    )]
    /// `lr_max` is below `lr_min` or not finite.
    LrMax {
        /// The peak rate given.
        lr_max: f64,
        /// The floor given.
        lr_min: f64,
    },
    #[error(
        "lr_final_max must lie in [lr_min, lr_max] = [{lr_min}, {lr_max}] when the schedule restarts (got {lr_final_max}); set --lr-final-max inside that range"
    )]
    /// `lr_final_max` is outside `[lr_min, lr_max]` although the schedule restarts.
    LrFinalMax {
        /// The final peak given.
        lr_final_max: f64,
        /// The floor given.
        lr_min: f64,
        /// The peak given.
        lr_max: f64,
    },
}

impl CosineRestartsConfig {
    /// The paper's defaults (Table IV) for a given peak rate, length and epoch size.
    pub fn paper(lr_max: f64, schedule_epochs: u64, steps_per_epoch: u64) -> Self {
        Self {
            lr_max,
            lr_final_max: defaults::LR_FINAL_MAX,
            lr_min: defaults::LR_MIN,
            schedule_epochs,
            restart_epochs: defaults::RESTART_EPOCHS,
            t_mult: defaults::T_MULT,
            steps_per_epoch,
        }
    }

    /// `E_max * S`, the schedule's length in steps (`None` when it does not fit in 64 bits).
    pub fn total_steps(&self) -> Option<u64> {
        self.schedule_epochs.checked_mul(self.steps_per_epoch)
    }

    /// Whether the schedule restarts at all (otherwise it is one cosine over the whole run).
    pub fn restarts(&self) -> bool {
        self.restart_epochs < self.schedule_epochs
    }

    /// Checks the rules of `docs/method.md` (section 4), so that [`Self::lr_at`] is meaningful.
    pub fn validate(&self) -> Result<(), ScheduleError> {
        if self.restart_epochs == 0 {
            return Err(ScheduleError::RestartEpochs(self.restart_epochs));
        }
        if self.schedule_epochs == 0 {
            return Err(ScheduleError::ScheduleEpochs);
        }
        if self.steps_per_epoch == 0 {
            return Err(ScheduleError::StepsPerEpoch);
        }
        if self.total_steps().is_none() {
            return Err(ScheduleError::TooLong {
                schedule_epochs: self.schedule_epochs,
                steps_per_epoch: self.steps_per_epoch,
            });
        }
        if !(self.t_mult.is_finite() && self.t_mult >= 1.0) {
            return Err(ScheduleError::TMult(self.t_mult));
        }
        if !(self.lr_min.is_finite() && self.lr_min >= 0.0) {
            return Err(ScheduleError::LrMin(self.lr_min));
        }
        if !(self.lr_max.is_finite() && self.lr_max >= self.lr_min) {
            return Err(ScheduleError::LrMax {
                lr_max: self.lr_max,
                lr_min: self.lr_min,
            });
        }
        let final_in_range = self.lr_final_max.is_finite()
            && self.lr_final_max >= self.lr_min
            && self.lr_final_max <= self.lr_max;
        if self.restarts() && !final_in_range {
            return Err(ScheduleError::LrFinalMax {
                lr_final_max: self.lr_final_max,
                lr_min: self.lr_min,
                lr_max: self.lr_max,
            });
        }
        Ok(())
    }

    /// The learning rate at global step `t` (counting from 0). Call [`Self::validate`] first.
    pub fn lr_at(&self, t: u64) -> f64 {
        let s = self.steps_per_epoch;
        if !self.restarts() {
            let total = (self.schedule_epochs * s) as f64;
            return cosine(self.lr_min, self.lr_max, t as f64, total);
        }
        let t0 = self.restart_epochs * s;
        let t_decay = ((self.schedule_epochs - self.restart_epochs) * s) as f64;
        let (t_cur, t_i) = if self.t_mult == 1.0 {
            // Integer arithmetic: exact at every restart boundary.
            ((t % t0) as f64, t0 as f64)
        } else {
            cycle_position(t, t0, self.t_mult)
        };
        let peak = self.lr_max - (t as f64 / t_decay).min(1.0) * (self.lr_max - self.lr_final_max);
        cosine(self.lr_min, peak, t_cur, t_i)
    }
}

fn cosine(low: f64, high: f64, t_cur: f64, t_i: f64) -> f64 {
    low + 0.5 * (high - low) * (1.0 + (PI * t_cur / t_i).cos())
}

/// Start of cycle `n` for geometric cycle lengths: `T0 (m^n - 1) / (m - 1)`.
fn cycle_start(n: i32, t0: u64, m: f64) -> f64 {
    t0 as f64 * (m.powi(n) - 1.0) / (m - 1.0)
}

/// `T_cur` and `T_i` at step `t` when cycles grow by `m > 1`. Cycle starts are real
/// numbers and may fall between two steps (with `T0 = 10, m = 1.5` the fourth cycle starts
/// at 47.5), so `T_cur` is fractional there. The closed form for `n` can land one cycle
/// off at a boundary through rounding, so it is checked against those real starts.
fn cycle_position(t: u64, t0: u64, m: f64) -> (f64, f64) {
    let t_f = t as f64;
    let mut n = ((t_f / t0 as f64 * (m - 1.0) + 1.0).ln() / m.ln()).floor() as i32;
    n = n.max(0);
    while cycle_start(n + 1, t0, m) <= t_f {
        n += 1;
    }
    while n > 0 && cycle_start(n, t0, m) > t_f {
        n -= 1;
    }
    (t_f - cycle_start(n, t0, m), t0 as f64 * m.powi(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(a: f64, b: f64) -> f64 {
        ((a - b) / b).abs()
    }

    #[test]
    fn paper_values_of_the_method() {
        let c = CosineRestartsConfig::paper(1e-3, 300, 391);
        c.validate().unwrap();
        assert_eq!(c.lr_at(0), 1e-3);
        assert!(rel(c.lr_at(19_550), 8.02e-4) < 1e-3);
        assert!(rel(c.lr_at(97_750), 1e-5) < 1e-12);
    }

    #[test]
    fn cycle_ends_near_lr_min() {
        let c = CosineRestartsConfig::paper(1e-3, 300, 10);
        let last = c.lr_at(499);
        assert!(last < 1e-6 + 1e-7, "{last}");
    }

    #[test]
    fn short_runs_are_one_cosine_without_decay() {
        let c = CosineRestartsConfig {
            lr_final_max: 5.0, // ignored without restarts
            ..CosineRestartsConfig::paper(0.1, 4, 10)
        };
        c.validate().unwrap();
        assert_eq!(c.lr_at(0), 0.1);
        let mid = c.lr_at(20);
        assert!(rel(mid, 1e-6 + 0.5 * (0.1 - 1e-6)) < 1e-12);
        assert!(c.lr_at(39) < c.lr_at(38));
    }

    #[test]
    fn geometric_cycles_restart_at_their_boundaries() {
        let c = CosineRestartsConfig {
            t_mult: 2.0,
            restart_epochs: 1,
            ..CosineRestartsConfig::paper(1.0, 100, 10)
        };
        c.validate().unwrap();
        // Cycles: [0,10), [10,30), [30,70), ...
        for boundary in [10u64, 30, 70, 150] {
            let (t_cur, _) = cycle_position(boundary, 10, 2.0);
            assert_eq!(t_cur, 0.0, "restart expected at {boundary}");
            let (t_cur, _) = cycle_position(boundary - 1, 10, 2.0);
            assert!(t_cur > 0.0);
        }
        assert_eq!(cycle_position(29, 10, 2.0), (19.0, 20.0));
    }

    #[test]
    fn meaningless_parameters_are_rejected() {
        let ok = CosineRestartsConfig::paper(1e-3, 300, 391);
        let cases = [
            CosineRestartsConfig {
                restart_epochs: 0,
                ..ok
            },
            CosineRestartsConfig { t_mult: 0.5, ..ok },
            CosineRestartsConfig {
                steps_per_epoch: 0,
                ..ok
            },
            CosineRestartsConfig {
                schedule_epochs: 0,
                ..ok
            },
            CosineRestartsConfig { lr_min: -1.0, ..ok },
            CosineRestartsConfig { lr_min: 1e-2, ..ok },
            CosineRestartsConfig {
                lr_final_max: 1e-2,
                ..ok
            },
            CosineRestartsConfig {
                lr_final_max: 1e-7,
                ..ok
            },
            CosineRestartsConfig {
                lr_max: f64::NAN,
                ..ok
            },
        ];
        for c in cases {
            assert!(c.validate().is_err(), "{c:?} should be rejected");
        }
    }

    /// The formula of `docs/method.md` written out directly in f64, with no correction.
    fn by_the_formula(c: &CosineRestartsConfig, t: u64) -> f64 {
        let (t0, m) = ((c.restart_epochs * c.steps_per_epoch) as f64, c.t_mult);
        let t_decay = ((c.schedule_epochs - c.restart_epochs) * c.steps_per_epoch) as f64;
        let t = t as f64;
        let n = ((t / t0 * (m - 1.0) + 1.0).ln() / m.ln()).floor();
        let t_i = t0 * m.powf(n);
        let t_cur = t - t0 * (m.powf(n) - 1.0) / (m - 1.0);
        let peak = c.lr_max - (t / t_decay).min(1.0) * (c.lr_max - c.lr_final_max);
        c.lr_min + 0.5 * (peak - c.lr_min) * (1.0 + (PI * t_cur / t_i).cos())
    }

    #[test]
    fn fractional_cycle_starts_follow_the_formula() {
        // T0 = 10 steps, T_mult 1.5: cycles start at 0, 10, 25, 47.5, 81.25, 131.875.
        let c = CosineRestartsConfig {
            lr_max: 0.1,
            lr_final_max: 0.01,
            lr_min: 0.001,
            schedule_epochs: 30,
            restart_epochs: 2,
            t_mult: 1.5,
            steps_per_epoch: 5,
        };
        c.validate().unwrap();
        for t in 0..150 {
            let (got, want) = (c.lr_at(t), by_the_formula(&c, t));
            assert!(
                (got - want).abs() <= 1e-15 * want,
                "step {t}: {got} vs {want}"
            );
        }
        // Step 81 is 33.5 steps into the 33.75-step cycle that starts at 47.5: the rate is
        // near its floor. Rounding the next start (81.25) to 81 restarts it there instead.
        let (t_cur, t_i) = cycle_position(81, 10, 1.5);
        assert_eq!((t_cur, t_i), (33.5, 33.75));
        assert!(c.lr_at(81) < 0.0011, "{}", c.lr_at(81));
        // Step 48 is half a step into the cycle that starts at 47.5.
        assert_eq!(cycle_position(48, 10, 1.5), (0.5, 22.5 * 1.5));
    }
}
