//! Mixed precision, as PyTorch's autocast with `GradScaler` does it: the weights, their
//! gradients and the optimiser state stay in f32, and each step computes in bf16 or f16
//! (each engine says how). f16 adds dynamic loss scaling so that small gradients do not
//! flush to zero: the loss is multiplied by a scale before backward and the gradients
//! divided by it after; a step whose gradients are not finite is skipped and the scale
//! halved, and after 2,000 finite steps in a row it doubles (PyTorch's defaults).

use serde::{Deserialize, Serialize};

/// The floating-point type a training step computes in.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
    strum::Display,
    strum::IntoStaticStr,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum Precision {
    /// Everything in f32.
    #[default]
    F32,
    /// Forward and backward in bfloat16 (f32's range, 8 bits of mantissa): no loss scaling.
    Bf16,
    /// Forward and backward in IEEE half precision, with dynamic loss scaling.
    F16,
}

impl Precision {
    /// The name used on the command line and in configs.
    pub fn name(self) -> &'static str {
        self.into()
    }
}

/// PyTorch `GradScaler`'s defaults.
const INITIAL_SCALE: f64 = 65536.0;
const GROWTH_INTERVAL: u64 = 2000;

/// The state of dynamic loss scaling, saved in checkpoints so a resumed run goes on with it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossScale {
    /// The factor the loss is multiplied by before backward.
    pub scale: f64,
    /// Finite steps since the scale last changed.
    pub good_steps: u64,
}

impl Default for LossScale {
    fn default() -> Self {
        Self {
            scale: INITIAL_SCALE,
            good_steps: 0,
        }
    }
}

impl LossScale {
    /// Records one step's outcome: `finite` gradients count towards growth, others halve
    /// the scale (the step itself is skipped by the caller).
    pub fn update(&mut self, finite: bool) {
        if finite {
            self.good_steps += 1;
            if self.good_steps == GROWTH_INTERVAL {
                self.scale *= 2.0;
                self.good_steps = 0;
            }
        } else {
            self.scale *= 0.5;
            self.good_steps = 0;
        }
    }
}

/// The loss scale a run in `precision` starts with: PyTorch's initial one for f16, none
/// for the others.
pub fn initial_loss_scale(precision: Precision) -> Option<LossScale> {
    (precision == Precision::F16).then(LossScale::default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_scale_follows_grad_scaler() {
        let mut s = LossScale::default();
        assert_eq!(s.scale, 65536.0);
        s.update(false);
        assert_eq!((s.scale, s.good_steps), (32768.0, 0));
        for _ in 0..GROWTH_INTERVAL - 1 {
            s.update(true);
        }
        assert_eq!((s.scale, s.good_steps), (32768.0, GROWTH_INTERVAL - 1));
        s.update(true);
        assert_eq!((s.scale, s.good_steps), (65536.0, 0));
        s.update(true);
        s.update(false);
        assert_eq!((s.scale, s.good_steps), (32768.0, 0));
    }
}
