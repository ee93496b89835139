//! The scheduler's thresholds (the study's Table V by default), their checks, and
//! the errors the scheduler gives.

use crate::defaults;
use serde::{Deserialize, Serialize};

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
    /// A saved state (a checkpoint's, a `state_dict`) that the rules cannot go on from.
    #[error("the noise scheduler's saved state is unusable: {0}")]
    State(String),
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
            && self.sigma_max >= self.sigma_min
            && self.sigma_max <= f32::MAX as f64)
        {
            return Err(format!(
                "sigma_min and sigma_max must satisfy 0 <= sigma_min <= sigma_max <= {:e} (f32's largest; got {} and {})",
                f32::MAX,
                crate::formulas::compact(self.sigma_min),
                crate::formulas::compact(self.sigma_max)
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
