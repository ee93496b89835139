//! What noise is injected: its distribution ([`NoiseKind`]) and who sets its
//! standard deviation ([`NoisePolicy`]).

use serde::{Deserialize, Serialize};

/// The distribution of injected noise.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Default,
    Serialize,
    Deserialize,
    strum::Display,
    strum::IntoStaticStr,
    strum::EnumString,
    strum::VariantArray,
)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case")]
pub enum NoiseKind {
    /// Decide and record, never inject (the baseline).
    #[default]
    None,
    /// `sigma * N(0, 1)` per element.
    Gaussian,
    /// `U(-sqrt(3) sigma, sqrt(3) sigma)` per element: the same standard deviation.
    Uniform,
}

impl NoiseKind {
    /// The name used in configs, directory names and reports.
    pub fn name(self) -> &'static str {
        self.into()
    }
}

/// Who sets the noise: the adaptive scheduler, or one of the field's baselines.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Default,
    Serialize,
    Deserialize,
    strum::Display,
    strum::IntoStaticStr,
    strum::EnumString,
    strum::VariantArray,
)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case")]
pub enum NoisePolicy {
    /// The adaptive scheduler's decisions: gradient and weight noise when training looks
    /// stuck or overfitting.
    #[default]
    Adaptive,
    /// Gradient noise of a constant standard deviation at every step.
    Constant,
    /// Gradient noise with `sigma_t = sqrt(eta / (1 + t)^gamma)` at every step `t`
    /// (Neelakantan et al. 2015).
    Annealed,
}

/// How large weight noise is, given the sigma decided: the study says only "a random noise
/// tensor that matches the shape of the input tensor", scaled by sigma, which can be read
/// in more than one way. New runs take [`WeightNoiseScale::FOR_NEW_RUNS`]; a recorded
/// configuration that names none was written when `absolute` was the only reading, and
/// means [`WeightNoiseScale::UNRECORDED`].
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    strum::Display,
    strum::IntoStaticStr,
    strum::EnumString,
    strum::VariantArray,
)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case")]
pub enum WeightNoiseScale {
    /// Standard deviation sigma for every element, whatever the tensor's own scale (the
    /// study's text read literally).
    Absolute,
    /// Standard deviation sigma times the tensor's root mean square, taken just before the
    /// noise is added: a tensor of small weights gets proportionally small noise.
    Relative,
    /// No weight noise at all (decisions are still taken and recorded; gradient noise is
    /// still applied).
    None,
}

impl WeightNoiseScale {
    /// The reading of a new run that names none: `relative`, the one that reproduces the
    /// study's tables (under `absolute`, baby-cnn's noisy runs collapse 10 points below
    /// the study's).
    pub const FOR_NEW_RUNS: Self = Self::Relative;

    /// What a recorded configuration (a run's `config.toml`, a checkpointed state) that
    /// names no reading means: it was written when `absolute` was the only one.
    pub const UNRECORDED: Self = Self::Absolute;

    /// The name used in configs, directory names and reports.
    pub fn name(self) -> &'static str {
        self.into()
    }

    /// The standard deviation of the noise added to a tensor whose root mean square is
    /// `rms`, for a decided sigma `sigma`.
    pub fn sigma_for(self, sigma: f64, rms: f64) -> f64 {
        match self {
            Self::Absolute => sigma,
            Self::Relative => sigma * rms,
            Self::None => 0.0,
        }
    }
}

/// A noise policy with its parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PolicyConfig {
    /// Who sets the noise.
    pub policy: NoisePolicy,
    /// The constant policy's standard deviation.
    pub noise_sigma: f64,
    /// The annealed policy's `eta`.
    pub anneal_eta: f64,
    /// The annealed policy's `gamma`.
    pub anneal_gamma: f64,
    /// How the adaptive policy's weight noise is scaled.
    #[serde(default = "unrecorded_weight_scale")]
    pub weight_scale: WeightNoiseScale,
}

fn unrecorded_weight_scale() -> WeightNoiseScale {
    WeightNoiseScale::UNRECORDED
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            policy: NoisePolicy::Adaptive,
            noise_sigma: crate::defaults::NOISE_SIGMA,
            anneal_eta: crate::defaults::ANNEAL_ETA,
            anneal_gamma: crate::defaults::ANNEAL_GAMMA,
            weight_scale: WeightNoiseScale::FOR_NEW_RUNS,
        }
    }
}

/// A policy parameter that makes no sense.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct PolicyError(pub String);

impl PolicyConfig {
    /// Rejects parameters the policy cannot use.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let check = |name: &str, v: f64| {
            // The noise is drawn and added in f32: a sigma beyond f32's range is infinite there.
            if v.is_finite() && v >= 0.0 && v <= f32::MAX as f64 {
                Ok(())
            } else {
                Err(PolicyError(format!(
                    "--{name} must be a number from 0 to {:e} (f32's largest; got {})",
                    f32::MAX,
                    crate::formulas::compact(v)
                )))
            }
        };
        check("noise-sigma", self.noise_sigma)?;
        check("anneal-eta", self.anneal_eta)?;
        check("anneal-gamma", self.anneal_gamma)
    }

    /// The gradient noise's standard deviation at global step `step`, given the adaptive
    /// scheduler's decision in force (`decided`, used by the adaptive policy only).
    pub fn grad_sigma(&self, decided: f64, step: u64) -> f64 {
        match self.policy {
            NoisePolicy::Adaptive => decided,
            NoisePolicy::Constant => self.noise_sigma,
            NoisePolicy::Annealed => {
                crate::formulas::annealed_sigma(self.anneal_eta, self.anneal_gamma, step)
            }
        }
    }

    /// The weight noise's sigma at an epoch's start: the adaptive decision's (0 when the
    /// weight-noise scale is `none`), none for the baselines, which only perturb gradients.
    /// Under the `relative` scale it is a factor of each tensor's root mean square.
    pub fn weight_sigma(&self, decided: f64) -> f64 {
        match (self.policy, self.weight_scale) {
            (_, WeightNoiseScale::None) => 0.0,
            (NoisePolicy::Adaptive, _) => decided,
            (NoisePolicy::Constant | NoisePolicy::Annealed, _) => 0.0,
        }
    }

    /// A short label for reports: `adaptive, relative weight noise`, `adaptive, absolute
    /// weight noise`, `constant 0.01`, `annealed eta 0.01 gamma 0.55`. The adaptive policy's
    /// label always names its reading, which changed default once: a row must never leave
    /// it to the reader to guess.
    pub fn label(&self) -> String {
        use crate::formulas::compact;
        match self.policy {
            NoisePolicy::Adaptive => match self.weight_scale {
                WeightNoiseScale::Absolute => "adaptive, absolute weight noise".into(),
                WeightNoiseScale::Relative => "adaptive, relative weight noise".into(),
                WeightNoiseScale::None => "adaptive, no weight noise".into(),
            },
            NoisePolicy::Constant => format!("constant {}", compact(self.noise_sigma)),
            NoisePolicy::Annealed => format!(
                "annealed eta {} gamma {}",
                compact(self.anneal_eta),
                compact(self.anneal_gamma)
            ),
        }
    }

    /// Why this policy with noise `kind` would inject nothing, naming the option to change;
    /// `None` when it injects (or, being adaptive, may inject or only record).
    pub fn injects_nothing(&self, kind: NoiseKind) -> Option<String> {
        use crate::formulas::compact;
        match self.policy {
            NoisePolicy::Adaptive => None,
            _ if kind == NoiseKind::None => Some(format!(
                "--noise-policy {} injects noise at every step, but --noise is none, so it would inject nothing: pass --noise gaussian or --noise uniform, or leave --noise-policy at adaptive (with --noise none the adaptive scheduler only decides and records)",
                self.policy
            )),
            NoisePolicy::Constant if self.noise_sigma == 0.0 => Some(
                "--noise-policy constant with --noise-sigma 0 injects nothing: give a sigma above 0, or --noise none for a run without noise".into(),
            ),
            NoisePolicy::Annealed if self.anneal_eta == 0.0 => Some(format!(
                "--noise-policy annealed with --anneal-eta 0 injects nothing (sigma_t^2 = eta / (1 + t)^{}): give an eta above 0, or --noise none for a run without noise",
                compact(self.anneal_gamma)
            )),
            _ => None,
        }
    }

    /// The option that lowers this policy's noise, for advice after a divergence.
    pub fn sigma_option(&self) -> &'static str {
        match self.policy {
            NoisePolicy::Adaptive => "--sigma-max",
            NoisePolicy::Constant => "--noise-sigma",
            NoisePolicy::Annealed => "--anneal-eta",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_policy_gives_its_sigma_at_given_steps() {
        let adaptive = PolicyConfig::default();
        assert_eq!(adaptive.grad_sigma(0.03, 500), 0.03);
        assert_eq!(adaptive.weight_sigma(0.02), 0.02);
        let constant = PolicyConfig {
            policy: NoisePolicy::Constant,
            noise_sigma: 0.004,
            ..adaptive
        };
        for step in [0, 1, 10_000] {
            assert_eq!(constant.grad_sigma(0.03, step), 0.004);
        }
        assert_eq!(constant.weight_sigma(0.02), 0.0);
        let annealed = PolicyConfig {
            policy: NoisePolicy::Annealed,
            ..adaptive
        };
        // sqrt(0.01 / (1 + t)^0.55), by hand: t = 0 -> 0.1; t = 999 -> 0.1 * 1000^-0.275.
        assert_eq!(annealed.grad_sigma(0.03, 0), 0.1);
        let want = 0.1 * 1000f64.powf(-0.275);
        assert!((annealed.grad_sigma(0.03, 999) - want).abs() < 1e-15);
        assert!((want - 0.014962).abs() < 1e-6);
        assert_eq!(annealed.weight_sigma(0.02), 0.0);
    }

    #[test]
    fn the_weight_noise_scale_reads_sigma_three_ways() {
        assert_eq!(WeightNoiseScale::Absolute.sigma_for(0.04, 0.02), 0.04);
        assert_eq!(
            WeightNoiseScale::Relative.sigma_for(0.04, 0.02),
            0.04 * 0.02
        );
        assert_eq!(WeightNoiseScale::None.sigma_for(0.04, 0.02), 0.0);
        let none = PolicyConfig {
            weight_scale: WeightNoiseScale::None,
            ..Default::default()
        };
        assert_eq!(none.weight_sigma(0.03), 0.0);
        assert_eq!(none.grad_sigma(0.03, 7), 0.03, "gradient noise stays");
        assert_eq!(none.label(), "adaptive, no weight noise");
    }

    #[test]
    fn bad_parameters_are_named() {
        let bad = PolicyConfig {
            anneal_gamma: -1.0,
            ..Default::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("--anneal-gamma")
        );
    }
}
