//! The adaptive noise scheduler: fed one epoch's observations at a time, it
//! raises flags from the trends over a window of epochs and decides how much
//! gradient and weight noise the next epoch gets, with a cooldown
//! (`docs/method.md`, sections 5-7). Its whole state serialises, so a resumed
//! run decides exactly as an uninterrupted one.

mod config;

pub use config::{NoiseSchedulerConfig, SchedulerError};

use crate::formulas::{cooldown_length, damping, improvement, magnitude, stuckness};
use crate::policy::NoiseKind;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

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

    /// One line on what was decided and why, for logs: what the next epoch receives under
    /// `policy`. A `none` run only records what it would inject, and a baseline policy
    /// (constant, annealed) follows no decision, so its decisions are recorded only.
    pub fn describe(&self, kind: NoiseKind, policy: &crate::PolicyConfig) -> String {
        let flags: Vec<&str> = self.flags.iter().map(|f| f.into()).collect();
        let flags = flags.join(", ");
        if policy.policy != crate::NoisePolicy::Adaptive {
            return format!(
                "flags {flags}: recorded only; the {} policy follows no decision",
                policy.label()
            );
        }
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
        check_metrics(obs)
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

    /// Checks a state read back from outside (a checkpoint, a Python `state_dict`), so
    /// that a damaged or hand-edited one is refused with a reason instead of deciding
    /// nonsense or panicking: thresholds the rules can use, a schedule length, a history
    /// of exactly the observations the rules keep (the last `max(W, overfit_epochs) + 1`,
    /// or all when fewer) whose epochs follow each other up to the count observed and
    /// whose metrics are finite and non-negative, and counters within their ranges.
    pub fn validate_state(&self) -> Result<(), SchedulerError> {
        self.config.validate()?;
        if self.schedule_epochs == 0 {
            return Err(SchedulerError::ScheduleEpochs);
        }
        let bad = |why: String| Err(SchedulerError::State(why));
        if self.observed > self.schedule_epochs {
            return bad(format!(
                "it observed {} epochs, past its schedule length E_max = {}",
                self.observed, self.schedule_epochs
            ));
        }
        let kept = (self.observed as usize).min(self.keep());
        if self.history.len() != kept {
            return bad(format!(
                "it keeps {} observations where {} epochs observed call for {kept}",
                self.history.len(),
                self.observed
            ));
        }
        let first = self.observed + 1 - kept as u64;
        for (i, obs) in self.history.iter().enumerate() {
            if obs.epoch != first + i as u64 {
                return bad(format!(
                    "its observations hold epoch {} where epoch {} belongs",
                    obs.epoch,
                    first + i as u64
                ));
            }
            check_metrics(obs)?;
        }
        if self.consecutive >= self.config.consecutive_trigger {
            return bad(format!(
                "its count of consecutive noisy decisions ({}) has reached consecutive_trigger ({})",
                self.consecutive, self.config.consecutive_trigger
            ));
        }
        let longest = cooldown_length(self.config.cooldown_min, self.config.cooldown_max, 1.0);
        if self.cooldown_left > longest {
            return bad(format!(
                "its cooldown ({} epochs left) is longer than cooldown_max allows ({longest})",
                self.cooldown_left
            ));
        }
        Ok(())
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

/// Refuses an observation whose metrics are not finite numbers >= 0.
fn check_metrics(obs: &Observation) -> Result<(), SchedulerError> {
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

#[cfg(test)]
mod tests;
