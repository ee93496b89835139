//! The adaptive noise scheduler of `method.md`: fed one epoch's observations at
//! a time, it raises flags from the trends over a window of epochs and decides
//! how much gradient and weight noise the next epoch gets, with a cooldown.
//! Pure arithmetic in f64: no tensors, so any training loop can use it.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::f64::consts::PI;

/// The thresholds of Table V (the defaults).
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
    pub sigma_min: f64,
    pub sigma_max: f64,
    /// Consecutive injecting decisions that trigger a cooldown (`ConsecutiveTrigger`).
    pub consecutive_trigger: u64,
    pub cooldown_min: f64,
    pub cooldown_max: f64,
}

impl Default for NoiseSchedulerConfig {
    fn default() -> Self {
        Self {
            min_epochs_before_flag: 70,
            flag_window: 10,
            val_plateau_delta: 1e-4,
            overfit_epochs: 3,
            grad_plateau: 0.025,
            low_weight_update: 5e-4,
            sigma_min: 0.01,
            sigma_max: 0.05,
            consecutive_trigger: 10,
            cooldown_min: 3.0,
            cooldown_max: 10.0,
        }
    }
}

impl NoiseSchedulerConfig {
    /// Rejects thresholds for which the rules are meaningless.
    pub fn validate(&self) -> Result<(), String> {
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
    pub epoch: u64,
    pub train_loss: f64,
    pub val_loss: f64,
    pub grad_norm: f64,
    pub weight_update: f64,
}

/// A flag raised by the checks, in the order `method.md` lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Flag {
    GradPlateau,
    LowWeightUpdate,
    ValPlateau,
    Overfit,
}

/// The decision taken after an epoch: the noise of the next epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// The epoch just observed; the noise applies to the next one.
    pub epoch: u64,
    pub grad_sigma: f64,
    pub weight_sigma: f64,
    pub flags: Vec<Flag>,
    /// Cooldown epochs left including the one this decision suppresses, or 0.
    pub cooldown: u64,
}

impl Decision {
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
}

/// `F_stuck = 1 - sigmoid(k I - d)` with `k = 2 / d`, evaluated as `sigmoid(d - k I)`, which
/// neither overflows nor cancels when `k` is large (`d = 1e-4` gives `k = 20,000`).
pub fn stuckness(improvement: f64, delta: f64) -> f64 {
    let k = 2.0 / delta;
    let z = delta - k * improvement;
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// Signed relative improvement `(x0 - x1) / x0`; 0 when `x0` is 0 (nothing to improve on).
fn improvement(x0: f64, x1: f64) -> f64 {
    if x0 == 0.0 { 0.0 } else { (x0 - x1) / x0 }
}

/// `round_half_away_from_zero`.
fn round_half_away(x: f64) -> u64 {
    x.round().max(0.0) as u64
}

/// The scheduler's whole state; serialisable so that a resumed run decides exactly alike.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NoiseScheduler {
    config: NoiseSchedulerConfig,
    /// `E_max` of the damping `0.5 (1 + cos(pi e / E_max))`.
    schedule_epochs: u64,
    /// The last `W + 1` observations (enough for the window and the overfit check).
    history: VecDeque<Observation>,
    observed: u64,
    consecutive: u64,
    cooldown_left: u64,
}

impl NoiseScheduler {
    pub fn new(config: NoiseSchedulerConfig, schedule_epochs: u64) -> Self {
        Self {
            config,
            schedule_epochs: schedule_epochs.max(1),
            history: VecDeque::new(),
            observed: 0,
            consecutive: 0,
            cooldown_left: 0,
        }
    }

    pub fn config(&self) -> &NoiseSchedulerConfig {
        &self.config
    }

    fn keep(&self) -> usize {
        (self.config.flag_window.max(self.config.overfit_epochs) + 1) as usize
    }

    fn damping(&self, epoch: u64) -> f64 {
        0.5 * (1.0 + (PI * epoch as f64 / self.schedule_epochs as f64).cos())
    }

    fn sigma(&self, improvement: f64, delta: f64, epoch: u64) -> f64 {
        let c = &self.config;
        let f = stuckness(improvement, delta);
        (c.sigma_min + f * (c.sigma_max - c.sigma_min)) * self.damping(epoch)
    }

    /// Feeds the observations of epoch `obs.epoch` and returns the decision for the next epoch.
    pub fn observe(&mut self, obs: Observation) -> Decision {
        self.history.push_back(obs);
        while self.history.len() > self.keep() {
            self.history.pop_front();
        }
        self.observed += 1;
        let c = self.config;
        let e = obs.epoch;
        let w = c.flag_window as usize;
        let active = e > c.min_epochs_before_flag && self.observed > c.flag_window;
        let mut decision = Decision::quiet(e);
        let mut f_grad = 0.0;
        let (mut grad_sigma, mut weight_sigma) = (0.0, 0.0);
        if active {
            let n = self.history.len();
            let (then, now) = (&self.history[n - 1 - w], &self.history[n - 1]);
            let i_grad = improvement(then.grad_norm, now.grad_norm);
            let i_val = improvement(then.val_loss, now.val_loss);
            let mean_update = self
                .history
                .iter()
                .skip(n - w)
                .map(|o| o.weight_update)
                .sum::<f64>()
                / w as f64;
            let k = c.overfit_epochs as usize;
            // Needs k + 1 epochs; with fewer observed the flag cannot be raised yet.
            let overfit = n > k
                && (n - k..n).all(|i| {
                    let (prev, cur) = (&self.history[i - 1], &self.history[i]);
                    cur.val_loss > prev.val_loss && cur.train_loss <= prev.train_loss
                });
            let raised = [
                (i_grad < c.grad_plateau, Flag::GradPlateau),
                (mean_update < c.low_weight_update, Flag::LowWeightUpdate),
                (i_val < c.val_plateau_delta, Flag::ValPlateau),
                (overfit, Flag::Overfit),
            ];
            decision.flags = raised
                .iter()
                .filter(|(on, _)| *on)
                .map(|(_, f)| *f)
                .collect();
            f_grad = stuckness(i_grad, c.grad_plateau);
            let has = |f: Flag| decision.flags.contains(&f);
            if has(Flag::GradPlateau) || has(Flag::LowWeightUpdate) {
                grad_sigma = self.sigma(i_grad, c.grad_plateau, e);
            }
            if has(Flag::ValPlateau) || has(Flag::Overfit) {
                weight_sigma = self.sigma(i_val, c.val_plateau_delta, e);
            }
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
                self.cooldown_left =
                    round_half_away(c.cooldown_min + f_grad * (c.cooldown_max - c.cooldown_min));
            }
        } else {
            self.consecutive = 0;
        }
        decision
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
        NoiseScheduler::new(config, 300)
    }

    /// A healthy epoch: everything improving fast, big updates.
    fn healthy(e: u64) -> Observation {
        let s = 0.5f64.powi(e as i32);
        obs(e, s, s, s, 0.1)
    }

    #[test]
    fn no_checks_before_min_epochs_and_window() {
        let mut s = small();
        for e in 1..=2 {
            let d = s.observe(obs(e, 1.0, 1.0, 1.0, 0.0));
            assert!(d.flags.is_empty() && !d.injects(), "epoch {e}");
        }
        assert!(!s.observe(obs(3, 1.0, 1.0, 1.0, 0.0)).flags.is_empty());
    }

    #[test]
    fn each_flag_on_its_own() {
        let mut s = small();
        for e in 1..=3 {
            assert!(s.observe(healthy(e)).flags.is_empty());
        }
        // Gradient norm stalls.
        let mut s2 = s.clone();
        let d = s2.observe(obs(4, 0.0625, 0.0625, 0.25, 0.1));
        assert_eq!(d.flags, vec![Flag::GradPlateau]);
        assert!(d.grad_sigma > 0.0 && d.weight_sigma == 0.0);
        // Weight updates tiny.
        let mut s2 = s.clone();
        let d = s2.observe(obs(4, 0.0625, 0.0625, 0.0625, 0.0));
        // Mean of the last two updates: (0.1 + 0) / 2 = 0.05, not below 5e-4.
        assert!(d.flags.is_empty());
        let d = s2.observe(obs(5, 0.03, 0.03, 0.03, 0.0));
        assert_eq!(d.flags, vec![Flag::LowWeightUpdate]);
        assert!(d.grad_sigma > 0.0);
        // Validation loss stalls.
        let mut s2 = s.clone();
        let d = s2.observe(obs(4, 0.0625, 0.25, 0.0625, 0.1));
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
        let mut s = NoiseScheduler::new(config, 300);
        let vals = [1.0, 0.5, 0.6, 0.7, 0.8];
        let trains = [1.0, 0.9, 0.8, 0.8, 0.7];
        let mut last = Decision::quiet(0);
        for (i, (v, t)) in vals.iter().zip(trains).enumerate() {
            // Gradient norm halves each epoch, big updates: only val-based flags can fire.
            last = s.observe(obs(i as u64 + 1, t, *v, 0.5f64.powi(i as i32), 0.1));
        }
        assert!(last.flags.contains(&Flag::Overfit), "{last:?}");
        // Train loss rising in one of the epochs breaks it.
        let mut s = NoiseScheduler::new(config, 300);
        let trains = [1.0, 0.9, 0.8, 0.85, 0.7];
        for (i, (v, t)) in vals.iter().zip(trains).enumerate() {
            last = s.observe(obs(i as u64 + 1, t, *v, 0.5f64.powi(i as i32), 0.1));
        }
        assert!(!last.flags.contains(&Flag::Overfit), "{last:?}");
    }

    #[test]
    fn stuckness_at_its_extremes() {
        // k = 20,000: no overflow either way, values in [0, 1].
        assert_eq!(stuckness(1e6, 1e-4), 0.0);
        assert_eq!(stuckness(-1e6, 1e-4), 1.0);
        assert!((stuckness(0.0, 1e-4) - 1.0 / (1.0 + (-1e-4f64).exp())).abs() < 1e-15);
        let tiny = stuckness(0.01, 1e-4); // z = 1e-4 - 200
        assert!(tiny > 0.0 && tiny < 1e-80);
        assert!(stuckness(f64::INFINITY, 0.025) == 0.0);
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
        let mut s = NoiseScheduler::new(config, 100);
        s.observe(obs(1, 1.0, 1.0, 1.0, 1.0));
        // Flat gradient norm: I_grad = 0, F_grad = sigmoid(0.025) ~ 0.506: CD = round(2 + 0.506*2) = 3.
        let decisions: Vec<Decision> = (2..=9)
            .map(|e| s.observe(obs(e, 1.0, 0.5f64.powi(e as i32), 1.0, 1.0)))
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
        let mut s = NoiseScheduler::new(config, 100);
        s.observe(obs(1, 1.0, 1.0, 1.0, 1.0));
        assert!(s.observe(obs(2, 1.0, 0.5, 1.0, 1.0)).injects());
        assert!(!s.observe(obs(3, 1.0, 0.25, 0.5, 1.0)).injects()); // healthy: resets
        assert!(s.observe(obs(4, 1.0, 0.1, 0.5, 1.0)).injects());
        let d = s.observe(obs(5, 1.0, 0.05, 0.5, 1.0));
        assert!(d.injects() && d.cooldown == 0); // second in a row: injects, cooldown starts next
        assert!(s.observe(obs(6, 1.0, 0.01, 0.5, 1.0)).cooldown > 0);
    }
}
