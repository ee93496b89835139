//! The adaptive noise scheduler: fed one epoch's observations at a time, it
//! raises flags from the trends over a window of epochs and decides how much
//! gradient and weight noise the next epoch gets, with a cooldown
//! (`docs/method.md`, sections 5-7). Its whole state serialises, so a resumed
//! run decides exactly as an uninterrupted one.

use crate::defaults;
use crate::formulas::{cooldown_length, damping, improvement, magnitude, stuckness};
use crate::policy::NoiseKind;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// The scheduler's thresholds; the defaults are the study's Table V.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NoiseSchedulerConfig {
    /// Checks start after this many epochs (`MinEpochs_beforeflag`).
    pub min_epochs_before_flag: u64,
    /// Window `W`, in epochs, over which trends are measured.
    pub flag_window: u64,
    /// Minimum relative val-loss improvement over the window (`ValPlateauDelta`).
    pub val_plateau_delta: f64,
    /// Consecutive epochs of rising val loss for the overfit flag (`NEpochsOverfit`).
    pub overfit_epochs: u64,
    /// Minimum relative grad-norm improvement over the window (`Gradient_plateau`).
    pub grad_plateau: f64,
    /// Threshold on the mean relative weight update over the window (`LowWeightUpdate`).
    pub low_weight_update: f64,
    /// Smallest noise standard deviation.
    pub sigma_min: f64,
    /// Largest noise standard deviation.
    pub sigma_max: f64,
    /// Consecutive injecting decisions that trigger a cooldown (`ConsecutiveTrigger`).
    pub consecutive_trigger: u64,
    /// Shortest cooldown in epochs (`CD_min`).
    pub cooldown_min: f64,
    /// Longest cooldown in epochs (`CD_max`).
    pub cooldown_max: f64,
}

impl Default for NoiseSchedulerConfig {
    fn default() -> Self {
        Self {
            min_epochs_before_flag: defaults::MIN_EPOCHS_BEFORE_FLAG,
            flag_window: defaults::FLAG_WINDOW,
            val_plateau_delta: defaults::VAL_PLATEAU_DELTA,
            overfit_epochs: defaults::OVERFIT_EPOCHS,
            grad_plateau: defaults::GRAD_PLATEAU,
            low_weight_update: defaults::LOW_WEIGHT_UPDATE,
            sigma_min: defaults::SIGMA_MIN,
            sigma_max: defaults::SIGMA_MAX,
            consecutive_trigger: defaults::CONSECUTIVE_TRIGGER,
            cooldown_min: defaults::COOLDOWN_MIN,
            cooldown_max: defaults::COOLDOWN_MAX,
        }
    }
}

/// Why the scheduler cannot be built or cannot take an observation.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SchedulerError {
    /// A threshold for which the rules are meaningless.
    #[error("the noise scheduler's {0}")]
    Threshold(String),
    /// `E_max` is 0.
    #[error("the schedule length E_max must be at least 1 epoch (got 0)")]
    ScheduleEpochs,
    /// An epoch that does not follow the last one observed.
    #[error(
        "epoch {got} was observed where epoch {expected} was expected (epochs start at 1 and follow each other)"
    )]
    EpochOrder {
        /// The epoch given.
        got: u64,
        /// The epoch that should have come.
        expected: u64,
    },
    /// An epoch past `E_max`, where the damping (periodic in the epoch) is undefined.
    #[error(
        "epoch {epoch} is past the schedule length E_max = {schedule_epochs}: the noise damping 0.5 (1 + cos(pi e / E_max)) is only defined up to E_max; pass a longer schedule (--epochs / --schedule-epochs) or stop at epoch {schedule_epochs}"
    )]
    PastSchedule {
        /// The epoch given.
        epoch: u64,
        /// `E_max`.
        schedule_epochs: u64,
    },
    /// A metric that is negative, NaN or infinite.
    #[error("epoch {epoch}: {field} is {value}, but it must be a finite number >= 0")]
    Metric {
        /// The epoch of the observation.
        epoch: u64,
        /// Which metric.
        field: &'static str,
        /// Its value.
        value: f64,
    },
}

impl NoiseSchedulerConfig {
    /// Rejects thresholds for which the rules are meaningless.
    pub fn validate(&self) -> Result<(), SchedulerError> {
        self.check().map_err(SchedulerError::Threshold)
    }

    fn check(&self) -> Result<(), String> {
        let positive = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(format!("{name} must be a finite number > 0 (got {v})"))
            }
        };
        if self.flag_window == 0 {
            return Err("flag_window must be at least 1 epoch".into());
        }
        if self.overfit_epochs == 0 {
            return Err("overfit_epochs must be at least 1".into());
        }
        if self.consecutive_trigger == 0 {
            return Err("consecutive_trigger must be at least 1".into());
        }
        positive("val_plateau_delta", self.val_plateau_delta)?;
        positive("grad_plateau", self.grad_plateau)?;
        if !(self.low_weight_update.is_finite() && self.low_weight_update >= 0.0) {
            return Err(format!(
                "low_weight_update must be a finite number >= 0 (got {})",
                self.low_weight_update
            ));
        }
        if !(self.sigma_min.is_finite()
            && self.sigma_min >= 0.0
            && self.sigma_max.is_finite()
            && self.sigma_max >= self.sigma_min)
        {
            return Err(format!(
                "sigma_min and sigma_max must satisfy 0 <= sigma_min <= sigma_max (got {} and {})",
                self.sigma_min, self.sigma_max
            ));
        }
        if !(self.cooldown_min.is_finite()
            && self.cooldown_min >= 0.0
            && self.cooldown_max.is_finite()
            && self.cooldown_max >= self.cooldown_min)
        {
            return Err(format!(
                "cooldown_min and cooldown_max must satisfy 0 <= cooldown_min <= cooldown_max (got {} and {})",
                self.cooldown_min, self.cooldown_max
            ));
        }
        Ok(())
    }
}

/// What is observed after each epoch.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    /// The epoch observed, from 1.
    pub epoch: u64,
    /// Mean training loss over the epoch's batches as trained.
    pub train_loss: f64,
    /// Loss over the validation set after the epoch.
    pub val_loss: f64,
    /// Mean over the epoch's steps of the global gradient norm.
    pub grad_norm: f64,
    /// Relative change of the parameter vector over the epoch.
    pub weight_update: f64,
}

impl Observation {
    /// The four metrics with their names.
    pub fn metrics(&self) -> [(&'static str, f64); 4] {
        [
            ("train_loss", self.train_loss),
            ("val_loss", self.val_loss),
            ("grad_norm", self.grad_norm),
            ("weight_update", self.weight_update),
        ]
    }
}

/// A flag raised by the checks, in the order the method lists them.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    strum::Display,
    strum::IntoStaticStr,
    strum::EnumIter,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Flag {
    /// The gradient norm improved by less than `grad_plateau` over the window.
    GradPlateau,
    /// The mean weight update over the window is below `low_weight_update`.
    LowWeightUpdate,
    /// The validation loss improved by less than `val_plateau_delta` over the window.
    ValPlateau,
    /// The validation loss rose while the training loss did not, epoch after epoch.
    Overfit,
}

/// The decision taken after an epoch: the noise of the next epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// The epoch just observed; the noise applies to the next one.
    pub epoch: u64,
    /// Standard deviation of the next epoch's gradient noise (0: none).
    pub grad_sigma: f64,
    /// Standard deviation of the weight noise at the next epoch's start (0: none).
    pub weight_sigma: f64,
    /// The flags raised, in the method's order; empty when the checks are not active.
    pub flags: Vec<Flag>,
    /// Cooldown epochs left including the one this decision suppresses, or 0.
    pub cooldown: u64,
}

impl Decision {
    /// Whether the next epoch gets any noise.
    pub fn injects(&self) -> bool {
        self.grad_sigma > 0.0 || self.weight_sigma > 0.0
    }

    /// No noise: the decision in force before the first epoch.
    pub fn quiet(epoch: u64) -> Self {
        Decision {
            epoch,
            grad_sigma: 0.0,
            weight_sigma: 0.0,
            flags: Vec::new(),
            cooldown: 0,
        }
    }

    /// One line on what was decided and why, for logs; a `none` run only records what it
    /// would inject.
    pub fn describe(&self, kind: NoiseKind) -> String {
        let flags: Vec<&str> = self.flags.iter().map(|f| f.into()).collect();
        let flags = flags.join(", ");
        if self.cooldown > 0 {
            return format!(
                "flags {flags} but cooldown ({} epochs left): no noise next epoch",
                self.cooldown
            );
        }
        let verb = if kind == NoiseKind::None {
            "would inject"
        } else {
            "injects"
        };
        format!(
            "flags {flags}: {verb} grad sigma {:.4}, weight sigma {:.4} ({kind}) next epoch",
            self.grad_sigma, self.weight_sigma
        )
    }
}

/// The trends of the window ending at the newest observation.
struct Trends {
    i_grad: f64,
    i_val: f64,
    mean_update: f64,
    overfit: bool,
}

/// The scheduler's whole state; serialisable so that a resumed run decides exactly alike.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NoiseScheduler {
    config: NoiseSchedulerConfig,
    /// `E_max` of the damping `0.5 (1 + cos(pi e / E_max))`.
    schedule_epochs: u64,
    /// The last `max(W, overfit_epochs) + 1` observations.
    history: VecDeque<Observation>,
    observed: u64,
    consecutive: u64,
    cooldown_left: u64,
}

impl NoiseScheduler {
    /// A scheduler before its first observation, for a schedule of `schedule_epochs` epochs.
    pub fn new(config: NoiseSchedulerConfig, schedule_epochs: u64) -> Result<Self, SchedulerError> {
        config.validate()?;
        if schedule_epochs == 0 {
            return Err(SchedulerError::ScheduleEpochs);
        }
        Ok(Self {
            config,
            schedule_epochs,
            history: VecDeque::new(),
            observed: 0,
            consecutive: 0,
            cooldown_left: 0,
        })
    }

    /// The thresholds.
    pub fn config(&self) -> &NoiseSchedulerConfig {
        &self.config
    }

    /// `E_max`.
    pub fn schedule_epochs(&self) -> u64 {
        self.schedule_epochs
    }

    /// Epochs observed so far.
    pub fn observed(&self) -> u64 {
        self.observed
    }

    fn keep(&self) -> usize {
        (self.config.flag_window.max(self.config.overfit_epochs) + 1) as usize
    }

    fn sigma(&self, improvement: f64, delta: f64, epoch: u64) -> f64 {
        let c = &self.config;
        let stuck = stuckness(improvement, delta);
        magnitude(
            c.sigma_min,
            c.sigma_max,
            stuck,
            damping(epoch, self.schedule_epochs),
        )
    }

    fn check(&self, obs: &Observation) -> Result<(), SchedulerError> {
        let expected = self.observed + 1;
        if obs.epoch != expected {
            return Err(SchedulerError::EpochOrder {
                got: obs.epoch,
                expected,
            });
        }
        if obs.epoch > self.schedule_epochs {
            return Err(SchedulerError::PastSchedule {
                epoch: obs.epoch,
                schedule_epochs: self.schedule_epochs,
            });
        }
        for (field, value) in obs.metrics() {
            if !(value.is_finite() && value >= 0.0) {
                return Err(SchedulerError::Metric {
                    epoch: obs.epoch,
                    field,
                    value,
                });
            }
        }
        Ok(())
    }

    fn trends(&self) -> Trends {
        let w = self.config.flag_window as usize;
        let n = self.history.len();
        let (then, now) = (&self.history[n - 1 - w], &self.history[n - 1]);
        let mean_update = self
            .history
            .iter()
            .skip(n - w)
            .map(|o| o.weight_update)
            .sum::<f64>()
            / w as f64;
        let k = self.config.overfit_epochs as usize;
        // Needs k + 1 epochs; with fewer observed the flag cannot be raised yet.
        let overfit = n > k
            && (n - k..n).all(|i| {
                let (prev, cur) = (&self.history[i - 1], &self.history[i]);
                cur.val_loss > prev.val_loss && cur.train_loss <= prev.train_loss
            });
        Trends {
            i_grad: improvement(then.grad_norm, now.grad_norm),
            i_val: improvement(then.val_loss, now.val_loss),
            mean_update,
            overfit,
        }
    }

    /// The flags, sigmas and `F_grad` the trends call for, before any cooldown.
    fn wanted(&self, epoch: u64) -> (Vec<Flag>, f64, f64, f64) {
        let c = &self.config;
        let t = self.trends();
        let raised = [
            (t.i_grad < c.grad_plateau, Flag::GradPlateau),
            (t.mean_update < c.low_weight_update, Flag::LowWeightUpdate),
            (t.i_val < c.val_plateau_delta, Flag::ValPlateau),
            (t.overfit, Flag::Overfit),
        ];
        let flags: Vec<Flag> = raised
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, f)| *f)
            .collect();
        let has = |f: Flag| flags.contains(&f);
        let grad_sigma = if has(Flag::GradPlateau) || has(Flag::LowWeightUpdate) {
            self.sigma(t.i_grad, c.grad_plateau, epoch)
        } else {
            0.0
        };
        let weight_sigma = if has(Flag::ValPlateau) || has(Flag::Overfit) {
            self.sigma(t.i_val, c.val_plateau_delta, epoch)
        } else {
            0.0
        };
        let stuck_grad = stuckness(t.i_grad, c.grad_plateau);
        (flags, grad_sigma, weight_sigma, stuck_grad)
    }

    /// Feeds the observations of epoch `obs.epoch` and returns the decision for the next
    /// epoch. Epochs must follow each other from 1, stay within `E_max`, and carry finite,
    /// non-negative metrics; otherwise the state is left unchanged and an error says why.
    pub fn observe(&mut self, obs: Observation) -> Result<Decision, SchedulerError> {
        self.check(&obs)?;
        self.history.push_back(obs);
        while self.history.len() > self.keep() {
            self.history.pop_front();
        }
        self.observed += 1;
        let c = self.config;
        let active = obs.epoch > c.min_epochs_before_flag && self.observed > c.flag_window;
        let mut decision = Decision::quiet(obs.epoch);
        let (mut grad_sigma, mut weight_sigma, mut stuck_grad) = (0.0, 0.0, 0.0);
        if active {
            (decision.flags, grad_sigma, weight_sigma, stuck_grad) = self.wanted(obs.epoch);
        }
        let wants_noise =
            grad_sigma > 0.0 || weight_sigma > 0.0 || (active && !decision.flags.is_empty());
        if self.cooldown_left > 0 {
            decision.cooldown = self.cooldown_left;
            self.cooldown_left -= 1;
            self.consecutive = 0;
        } else if wants_noise {
            decision.grad_sigma = grad_sigma;
            decision.weight_sigma = weight_sigma;
            self.consecutive += 1;
            if self.consecutive >= c.consecutive_trigger {
                self.consecutive = 0;
                self.cooldown_left = cooldown_length(c.cooldown_min, c.cooldown_max, stuck_grad);
            }
        } else {
            self.consecutive = 0;
        }
        Ok(decision)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(epoch: u64, train: f64, val: f64, grad: f64, update: f64) -> Observation {
        Observation {
            epoch,
            train_loss: train,
            val_loss: val,
            grad_norm: grad,
            weight_update: update,
        }
    }

    /// A scheduler with checks from epoch 3 on, window 2.
    fn small() -> NoiseScheduler {
        let config = NoiseSchedulerConfig {
            min_epochs_before_flag: 2,
            flag_window: 2,
            overfit_epochs: 2,
            ..Default::default()
        };
        NoiseScheduler::new(config, 300).unwrap()
    }

    /// A healthy epoch: everything improving fast, big updates.
    fn healthy(e: u64) -> Observation {
        let s = 0.5f64.powi(e as i32);
        obs(e, s, s, s, 0.1)
    }

    fn see(s: &mut NoiseScheduler, o: Observation) -> Decision {
        s.observe(o).unwrap()
    }

    #[test]
    fn no_checks_before_min_epochs_and_window() {
        let mut s = small();
        for e in 1..=2 {
            let d = see(&mut s, obs(e, 1.0, 1.0, 1.0, 0.0));
            assert!(d.flags.is_empty() && !d.injects(), "epoch {e}");
        }
        assert!(!see(&mut s, obs(3, 1.0, 1.0, 1.0, 0.0)).flags.is_empty());
    }

    #[test]
    fn each_flag_on_its_own() {
        let mut s = small();
        for e in 1..=3 {
            assert!(see(&mut s, healthy(e)).flags.is_empty());
        }
        // Gradient norm stalls.
        let mut s2 = s.clone();
        let d = see(&mut s2, obs(4, 0.0625, 0.0625, 0.25, 0.1));
        assert_eq!(d.flags, vec![Flag::GradPlateau]);
        assert!(d.grad_sigma > 0.0 && d.weight_sigma == 0.0);
        // Weight updates tiny.
        let mut s2 = s.clone();
        let d = see(&mut s2, obs(4, 0.0625, 0.0625, 0.0625, 0.0));
        // Mean of the last two updates: (0.1 + 0) / 2 = 0.05, not below 5e-4.
        assert!(d.flags.is_empty());
        let d = see(&mut s2, obs(5, 0.03, 0.03, 0.03, 0.0));
        assert_eq!(d.flags, vec![Flag::LowWeightUpdate]);
        assert!(d.grad_sigma > 0.0);
        // Validation loss stalls.
        let mut s2 = s.clone();
        let d = see(&mut s2, obs(4, 0.0625, 0.25, 0.0625, 0.1));
        assert_eq!(d.flags, vec![Flag::ValPlateau]);
        assert!(d.weight_sigma > 0.0 && d.grad_sigma == 0.0);
    }

    #[test]
    fn overfit_needs_val_up_and_train_not_up_each_epoch() {
        let config = NoiseSchedulerConfig {
            min_epochs_before_flag: 0,
            flag_window: 3,
            overfit_epochs: 3,
            ..Default::default()
        };
        let vals = [1.0, 0.5, 0.6, 0.7, 0.8];
        let run = |trains: [f64; 5]| {
            let mut s = NoiseScheduler::new(config, 300).unwrap();
            let mut last = Decision::quiet(0);
            for (i, (v, t)) in vals.iter().zip(trains).enumerate() {
                // Gradient norm halves each epoch, big updates: only val-based flags can fire.
                last = see(&mut s, obs(i as u64 + 1, t, *v, 0.5f64.powi(i as i32), 0.1));
            }
            last
        };
        let last = run([1.0, 0.9, 0.8, 0.8, 0.7]);
        assert!(last.flags.contains(&Flag::Overfit), "{last:?}");
        // Train loss rising in one of the epochs breaks it.
        let last = run([1.0, 0.9, 0.8, 0.85, 0.7]);
        assert!(!last.flags.contains(&Flag::Overfit), "{last:?}");
    }

    #[test]
    fn cooldown_after_consecutive_trigger() {
        let config = NoiseSchedulerConfig {
            min_epochs_before_flag: 0,
            flag_window: 1,
            consecutive_trigger: 3,
            cooldown_min: 2.0,
            cooldown_max: 4.0,
            ..Default::default()
        };
        let mut s = NoiseScheduler::new(config, 100).unwrap();
        see(&mut s, obs(1, 1.0, 1.0, 1.0, 1.0));
        // Flat gradient norm: I_grad = 0, F_grad = sigmoid(0.025) ~ 0.506: CD = round(2 + 0.506*2) = 3.
        let decisions: Vec<Decision> = (2..=9)
            .map(|e| see(&mut s, obs(e, 1.0, 0.5f64.powi(e as i32), 1.0, 1.0)))
            .collect();
        let pattern: Vec<(bool, u64)> = decisions
            .iter()
            .map(|d| (d.injects(), d.cooldown))
            .collect();
        assert_eq!(
            pattern,
            vec![
                (true, 0),
                (true, 0),
                (true, 0),
                (false, 3),
                (false, 2),
                (false, 1),
                (true, 0),
                (true, 0)
            ]
        );
        // Flags are still recorded during the cooldown.
        assert_eq!(decisions[3].flags, vec![Flag::GradPlateau]);
    }

    #[test]
    fn a_decision_without_noise_resets_the_count() {
        let config = NoiseSchedulerConfig {
            min_epochs_before_flag: 0,
            flag_window: 1,
            consecutive_trigger: 2,
            ..Default::default()
        };
        let mut s = NoiseScheduler::new(config, 100).unwrap();
        see(&mut s, obs(1, 1.0, 1.0, 1.0, 1.0));
        assert!(see(&mut s, obs(2, 1.0, 0.5, 1.0, 1.0)).injects());
        assert!(!see(&mut s, obs(3, 1.0, 0.25, 0.5, 1.0)).injects()); // healthy: resets
        assert!(see(&mut s, obs(4, 1.0, 0.1, 0.5, 1.0)).injects());
        let d = see(&mut s, obs(5, 1.0, 0.05, 0.5, 1.0));
        assert!(d.injects() && d.cooldown == 0); // second in a row: injects, cooldown starts next
        assert!(see(&mut s, obs(6, 1.0, 0.01, 0.5, 1.0)).cooldown > 0);
    }

    #[test]
    fn bad_observations_are_refused_and_leave_the_state_alone() {
        let mut s = NoiseScheduler::new(NoiseSchedulerConfig::default(), 3).unwrap();
        let before = s.clone();
        let err = s.observe(obs(2, 1.0, 1.0, 1.0, 0.1)).unwrap_err();
        assert_eq!(
            err,
            SchedulerError::EpochOrder {
                got: 2,
                expected: 1
            }
        );
        let err = s.observe(obs(1, 1.0, -1.0, 1.0, 0.1)).unwrap_err();
        assert!(err.to_string().contains("val_loss is -1"), "{err}");
        let err = s.observe(obs(1, 1.0, 1.0, f64::NAN, 0.1)).unwrap_err();
        assert!(err.to_string().contains("grad_norm is NaN"), "{err}");
        assert_eq!(s, before);
        for e in 1..=3 {
            see(&mut s, obs(e, 1.0, 1.0, 1.0, 0.1));
        }
        let err = s.observe(obs(4, 1.0, 1.0, 1.0, 0.1)).unwrap_err();
        assert!(
            err.to_string()
                .contains("past the schedule length E_max = 3"),
            "{err}"
        );
    }

    #[test]
    fn decisions_describe_themselves() {
        let mut d = Decision::quiet(80);
        d.flags = vec![Flag::GradPlateau, Flag::LowWeightUpdate];
        d.grad_sigma = 0.0255;
        assert_eq!(
            d.describe(NoiseKind::Gaussian),
            "flags grad_plateau, low_weight_update: injects grad sigma 0.0255, weight sigma 0.0000 (gaussian) next epoch"
        );
        assert!(d.describe(NoiseKind::None).contains("would inject"));
        d.cooldown = 2;
        assert!(
            d.describe(NoiseKind::None)
                .contains("cooldown (2 epochs left)")
        );
    }
}
