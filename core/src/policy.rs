//! What noise is injected: its distribution ([`NoiseKind`]), who sets it
//! ([`NoisePolicy`]: the adaptive scheduler, or one of the field's methods to
//! compare it with) and each policy's parameters ([`PolicyConfig`]), with what
//! a policy asks of training at an epoch's start, at a step's gradients, after
//! a step's update, and of a step's labels.

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
    /// Anticorrelated weight noise after every step, `w += xi_{n+1} - xi_n` (Orvieto et
    /// al. 2022): the perturbations telescope, so the weights never drift by more than
    /// two draws.
    AntiPgd,
    /// Perturbed gradient descent (Jin et al. 2017): where the gradient norm is at most a
    /// threshold, and the last perturbation is far enough back, a perturbation of all the
    /// weights together, of a given radius.
    Perturbed,
    /// Stochastic gradient Langevin dynamics (Welling and Teh 2011): weight noise of
    /// variance `2 lr_t T` after every step.
    Langevin,
    /// Label noise (Blanc et al. 2020; Damian, Ma and Lee 2021): each training label
    /// replaced, with probability `p`, by a class drawn uniformly, at every step.
    LabelNoise,
    /// Shrink and perturb (Ash and Adams 2020): every `k` epochs, `w <- lambda w + sigma eps`.
    ShrinkPerturb,
}

impl NoisePolicy {
    /// The name used in configs, directory names and reports.
    pub fn name(self) -> &'static str {
        self.into()
    }
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

/// A noise policy with its parameters. Every parameter has a default (in
/// [`crate::defaults`]), so that a recorded configuration of an earlier version, which
/// names only its own policy's, reads as it was made.
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
    /// Anti-PGD's standard deviation of each draw `xi`, per element.
    #[serde(default = "defaults::anti_pgd_sigma")]
    pub anti_pgd_sigma: f64,
    /// Perturbed gradient descent: the gradient norm at or below which it perturbs.
    #[serde(default = "defaults::perturb_threshold")]
    pub perturb_threshold: f64,
    /// Perturbed gradient descent: the fewest optimiser steps between two perturbations.
    #[serde(default = "defaults::perturb_interval")]
    pub perturb_interval: u64,
    /// Perturbed gradient descent: the radius of the perturbation of all weights together.
    #[serde(default = "defaults::perturb_radius")]
    pub perturb_radius: f64,
    /// Langevin dynamics' temperature `T` (noise variance `2 lr_t T` per step).
    #[serde(default = "defaults::langevin_temperature")]
    pub langevin_temperature: f64,
    /// Label noise: the probability that a training label is replaced.
    #[serde(default = "defaults::label_noise")]
    pub label_noise: f64,
    /// Shrink and perturb: every this many epochs.
    #[serde(default = "defaults::shrink_every")]
    pub shrink_every: u64,
    /// Shrink and perturb: the factor `lambda` the weights are multiplied by.
    #[serde(default = "defaults::shrink_factor")]
    pub shrink_factor: f64,
    /// Shrink and perturb: the standard deviation `sigma` of the noise then added.
    #[serde(default = "defaults::shrink_sigma")]
    pub shrink_sigma: f64,
}

fn unrecorded_weight_scale() -> WeightNoiseScale {
    WeightNoiseScale::UNRECORDED
}

/// Serde's defaults of the policies' parameters, from [`crate::defaults`].
mod defaults {
    use crate::defaults as d;
    pub fn anti_pgd_sigma() -> f64 {
        d::ANTI_PGD_SIGMA
    }
    pub fn perturb_threshold() -> f64 {
        d::PERTURB_THRESHOLD
    }
    pub fn perturb_interval() -> u64 {
        d::PERTURB_INTERVAL
    }
    pub fn perturb_radius() -> f64 {
        d::PERTURB_RADIUS
    }
    pub fn langevin_temperature() -> f64 {
        d::LANGEVIN_TEMPERATURE
    }
    pub fn label_noise() -> f64 {
        d::LABEL_NOISE
    }
    pub fn shrink_every() -> u64 {
        d::SHRINK_EVERY
    }
    pub fn shrink_factor() -> f64 {
        d::SHRINK_FACTOR
    }
    pub fn shrink_sigma() -> f64 {
        d::SHRINK_SIGMA
    }
}

impl Default for PolicyConfig {
    fn default() -> Self {
        use crate::defaults as d;
        Self {
            policy: NoisePolicy::Adaptive,
            noise_sigma: d::NOISE_SIGMA,
            anneal_eta: d::ANNEAL_ETA,
            anneal_gamma: d::ANNEAL_GAMMA,
            weight_scale: WeightNoiseScale::FOR_NEW_RUNS,
            anti_pgd_sigma: d::ANTI_PGD_SIGMA,
            perturb_threshold: d::PERTURB_THRESHOLD,
            perturb_interval: d::PERTURB_INTERVAL,
            perturb_radius: d::PERTURB_RADIUS,
            langevin_temperature: d::LANGEVIN_TEMPERATURE,
            label_noise: d::LABEL_NOISE,
            shrink_every: d::SHRINK_EVERY,
            shrink_factor: d::SHRINK_FACTOR,
            shrink_sigma: d::SHRINK_SIGMA,
        }
    }
}

/// A policy parameter that makes no sense.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct PolicyError(pub String);

/// What a policy does to the weights at an epoch's start: `w <- shrink w + noise`, the
/// noise of standard deviation `sigma` read as `scale` says.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochStart {
    /// The factor the weights are multiplied by first (1: none).
    pub shrink: f64,
    /// The noise's standard deviation (under the relative scale, the factor of each
    /// tensor's root mean square); 0: none.
    pub sigma: f64,
    /// How `sigma` applies to each tensor.
    pub scale: WeightNoiseScale,
}

/// What a policy does to the weights right after a step's update.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AfterStep {
    /// Nothing.
    Nothing,
    /// Anti-PGD: add `xi_{n+1} - xi_n`, each `xi` of standard deviation `sigma` per
    /// element, drawn for step `n` (from 0, the weights' starting draw `xi_0` included).
    Anticorrelated {
        /// The standard deviation of each draw.
        sigma: f64,
    },
    /// Langevin dynamics: add noise of standard deviation `sigma = sqrt(2 lr_t T)`.
    Langevin {
        /// The standard deviation of this step's noise.
        sigma: f64,
    },
    /// Perturbed gradient descent: perturb when [`PerturbRule::fires`] says so.
    Perturbed(PerturbRule),
}

/// When perturbed gradient descent perturbs, and by how much.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PerturbRule {
    /// The gradient norm at or below which it perturbs.
    pub threshold: f64,
    /// The fewest steps between two perturbations.
    pub interval: u64,
    /// The perturbation's radius, over all weights together.
    pub radius: f64,
}

impl PerturbRule {
    /// Whether global step `step` (from 0), whose gradient norm before noise was `norm`,
    /// perturbs, the last perturbation having been at step `last`.
    pub fn fires(&self, step: u64, norm: f64, last: Option<u64>) -> bool {
        norm <= self.threshold && last.is_none_or(|l| step >= l + self.interval)
    }
}

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
        check("anneal-gamma", self.anneal_gamma)?;
        check("anti-pgd-sigma", self.anti_pgd_sigma)?;
        check("perturb-threshold", self.perturb_threshold)?;
        check("perturb-radius", self.perturb_radius)?;
        check("langevin-temperature", self.langevin_temperature)?;
        check("shrink-factor", self.shrink_factor)?;
        check("shrink-sigma", self.shrink_sigma)?;
        let probability = |name: &str, v: f64| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(PolicyError(format!(
                    "--{name} is a probability: it must be from 0 to 1 (got {})",
                    crate::formulas::compact(v)
                )))
            }
        };
        probability("label-noise", self.label_noise)?;
        if self.shrink_every == 0 {
            return Err(PolicyError(
                "--shrink-every must be at least 1 epoch".into(),
            ));
        }
        Ok(())
    }

    /// The gradient noise's standard deviation at global step `step`, given the adaptive
    /// scheduler's decision in force (`decided`, used by the adaptive policy only); 0 for
    /// the policies that act on weights or labels.
    pub fn grad_sigma(&self, decided: f64, step: u64) -> f64 {
        match self.policy {
            NoisePolicy::Adaptive => decided,
            NoisePolicy::Constant => self.noise_sigma,
            NoisePolicy::Annealed => {
                crate::formulas::annealed_sigma(self.anneal_eta, self.anneal_gamma, step)
            }
            _ => 0.0,
        }
    }

    /// The adaptive weight noise's sigma at an epoch's start: the decision's (0 when the
    /// weight-noise scale is `none`), 0 for every other policy. Under the `relative` scale
    /// it is a factor of each tensor's root mean square.
    pub fn weight_sigma(&self, decided: f64) -> f64 {
        match (self.policy, self.weight_scale) {
            (NoisePolicy::Adaptive, WeightNoiseScale::None) => 0.0,
            (NoisePolicy::Adaptive, _) => decided,
            _ => 0.0,
        }
    }

    /// What the policy does to the weights at the start of `epoch` (from 1): the adaptive
    /// decision's weight noise (`decided`), or shrink and perturb every `shrink_every`
    /// epochs after the first (epochs `k + 1`, `2k + 1`, ...; never before any training).
    pub fn epoch_start(&self, epoch: u64, decided: f64) -> Option<EpochStart> {
        match self.policy {
            NoisePolicy::ShrinkPerturb
                if epoch > 1 && (epoch - 1).is_multiple_of(self.shrink_every) =>
            {
                Some(EpochStart {
                    shrink: self.shrink_factor,
                    sigma: self.shrink_sigma,
                    scale: WeightNoiseScale::Absolute,
                })
            }
            _ => {
                let sigma = self.weight_sigma(decided);
                (sigma > 0.0).then_some(EpochStart {
                    shrink: 1.0,
                    sigma,
                    scale: self.weight_scale,
                })
            }
        }
    }

    /// What the policy does to the weights after a step's update at learning rate `lr`.
    pub fn after_step(&self, lr: f64) -> AfterStep {
        match self.policy {
            NoisePolicy::AntiPgd => AfterStep::Anticorrelated {
                sigma: self.anti_pgd_sigma,
            },
            NoisePolicy::Langevin => AfterStep::Langevin {
                sigma: (2.0 * lr * self.langevin_temperature).sqrt(),
            },
            NoisePolicy::Perturbed => AfterStep::Perturbed(PerturbRule {
                threshold: self.perturb_threshold,
                interval: self.perturb_interval,
                radius: self.perturb_radius,
            }),
            _ => AfterStep::Nothing,
        }
    }

    /// The probability that a training label is replaced at a step: the label-noise
    /// policy's, `None` for the others.
    pub fn label_noise(&self) -> Option<f64> {
        (self.policy == NoisePolicy::LabelNoise).then_some(self.label_noise)
    }

    /// A short label for reports: `adaptive, relative weight noise`, `adaptive, absolute
    /// weight noise`, `constant 0.01`, `annealed eta 0.01 gamma 0.55`, `anti-pgd sigma
    /// 0.001`, ... The adaptive policy's label always names its reading, which changed
    /// default once: a row must never leave it to the reader to guess.
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
            NoisePolicy::AntiPgd => format!("anti-pgd sigma {}", compact(self.anti_pgd_sigma)),
            NoisePolicy::Perturbed => format!(
                "perturbed r {} at norm <= {}, {} steps apart",
                compact(self.perturb_radius),
                compact(self.perturb_threshold),
                self.perturb_interval
            ),
            NoisePolicy::Langevin => {
                format!("langevin T {}", compact(self.langevin_temperature))
            }
            NoisePolicy::LabelNoise => format!("label noise p {}", compact(self.label_noise)),
            NoisePolicy::ShrinkPerturb => format!(
                "shrink-perturb every {} x{} + {}",
                self.shrink_every,
                compact(self.shrink_factor),
                compact(self.shrink_sigma)
            ),
        }
    }

    /// Why this policy with noise `kind`, over a run of `epochs` epochs, would inject
    /// nothing (or a distribution it does not draw), naming the option to change; `None`
    /// when it injects (or, being adaptive, may inject or only record).
    pub fn injects_nothing(&self, kind: NoiseKind, epochs: u64) -> Option<String> {
        use crate::formulas::compact;
        let policy = self.policy;
        let nothing = |option: &str, value: String| {
            Some(format!(
                "--noise-policy {policy} with --{option} {value} injects nothing: give a value that does, or --noise none for a run without noise"
            ))
        };
        match policy {
            NoisePolicy::Adaptive => None,
            _ if kind == NoiseKind::None => Some(format!(
                "--noise-policy {policy} injects noise, but --noise is none, so it would inject nothing: pass --noise {}, or leave --noise-policy at adaptive (with --noise none the adaptive scheduler only decides and records)",
                if policy == NoisePolicy::LabelNoise { "uniform" } else { "gaussian or --noise uniform" }
            )),
            NoisePolicy::LabelNoise if kind != NoiseKind::Uniform => Some(
                "--noise-policy label-noise draws each replacement class uniformly, so it takes --noise uniform (--noise gaussian would name a distribution it never draws)".into(),
            ),
            NoisePolicy::Constant if self.noise_sigma == 0.0 => {
                nothing("noise-sigma", "0".into())
            }
            NoisePolicy::Annealed if self.anneal_eta == 0.0 => Some(format!(
                "--noise-policy annealed with --anneal-eta 0 injects nothing (sigma_t^2 = eta / (1 + t)^{}): give an eta above 0, or --noise none for a run without noise",
                compact(self.anneal_gamma)
            )),
            NoisePolicy::AntiPgd if self.anti_pgd_sigma == 0.0 => {
                nothing("anti-pgd-sigma", "0".into())
            }
            NoisePolicy::Perturbed if self.perturb_radius == 0.0 => {
                nothing("perturb-radius", "0".into())
            }
            NoisePolicy::Perturbed if self.perturb_threshold == 0.0 => Some(
                "--noise-policy perturbed with --perturb-threshold 0 perturbs only where the gradient is exactly zero, which training never reaches: give a threshold above 0, or --noise none for a run without noise".into(),
            ),
            NoisePolicy::Langevin if self.langevin_temperature == 0.0 => {
                nothing("langevin-temperature", "0".into())
            }
            NoisePolicy::LabelNoise if self.label_noise == 0.0 => {
                nothing("label-noise", "0".into())
            }
            NoisePolicy::ShrinkPerturb if self.shrink_factor == 1.0 && self.shrink_sigma == 0.0 => {
                Some("--noise-policy shrink-perturb with --shrink-factor 1 and --shrink-sigma 0 changes nothing: give a factor below 1 or a sigma above 0, or --noise none for a run without noise".into())
            }
            NoisePolicy::ShrinkPerturb if self.shrink_every >= epochs => Some(format!(
                "--noise-policy shrink-perturb with --shrink-every {} shrinks first at the start of epoch {}, which a run of {epochs} epochs never reaches: give --shrink-every below {epochs}",
                self.shrink_every,
                self.shrink_every + 1
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
            NoisePolicy::AntiPgd => "--anti-pgd-sigma",
            NoisePolicy::Perturbed => "--perturb-radius",
            NoisePolicy::Langevin => "--langevin-temperature",
            NoisePolicy::LabelNoise => "--label-noise",
            NoisePolicy::ShrinkPerturb => "--shrink-sigma",
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
    fn perturbed_fires_exactly_where_its_rule_says() {
        let rule = PerturbRule {
            threshold: 0.5,
            interval: 3,
            radius: 1.0,
        };
        // Norms of steps 0..10, by hand: below the threshold at 1, 2, 3, 4, 6, 7, 9.
        let norms = [0.9, 0.4, 0.5, 0.1, 0.2, 0.7, 0.3, 0.3, 0.6, 0.2];
        let mut last = None;
        let mut fired = Vec::new();
        for (step, norm) in norms.iter().enumerate() {
            if rule.fires(step as u64, *norm, last) {
                last = Some(step as u64);
                fired.push(step);
            }
        }
        // 1 (first below), then 4 (>= 1 + 3), then 7 (>= 4 + 3); 9 is only 2 after 7.
        assert_eq!(fired, vec![1, 4, 7]);
    }

    #[test]
    fn shrink_perturb_acts_every_k_epochs_after_the_first() {
        let p = PolicyConfig {
            policy: NoisePolicy::ShrinkPerturb,
            shrink_every: 3,
            ..Default::default()
        };
        let epochs: Vec<u64> = (1..=10)
            .filter(|e| p.epoch_start(*e, 0.05).is_some())
            .collect();
        assert_eq!(epochs, vec![4, 7, 10]);
        let start = p.epoch_start(4, 0.05).unwrap();
        assert_eq!((start.shrink, start.sigma), (0.4, 1e-3));
        assert_eq!(start.scale, WeightNoiseScale::Absolute);
        assert_eq!(p.grad_sigma(0.03, 5), 0.0, "no gradient noise");
        // The adaptive policy's weight noise at an epoch's start, with no shrink.
        let adaptive = PolicyConfig::default();
        let start = adaptive.epoch_start(9, 0.02).unwrap();
        assert_eq!((start.shrink, start.sigma), (1.0, 0.02));
        assert!(adaptive.epoch_start(9, 0.0).is_none());
    }

    #[test]
    fn langevin_and_anti_pgd_act_after_each_step() {
        let langevin = PolicyConfig {
            policy: NoisePolicy::Langevin,
            langevin_temperature: 2e-5,
            ..Default::default()
        };
        // sqrt(2 * 0.1 * 2e-5) = sqrt(4e-6) = 2e-3.
        match langevin.after_step(0.1) {
            AfterStep::Langevin { sigma } => assert!((sigma - 2e-3).abs() < 1e-15),
            other => panic!("{other:?}"),
        }
        let anti = PolicyConfig {
            policy: NoisePolicy::AntiPgd,
            ..Default::default()
        };
        assert_eq!(
            anti.after_step(0.1),
            AfterStep::Anticorrelated { sigma: 1e-3 }
        );
        assert_eq!(PolicyConfig::default().after_step(0.1), AfterStep::Nothing);
        let labels = PolicyConfig {
            policy: NoisePolicy::LabelNoise,
            label_noise: 0.2,
            ..Default::default()
        };
        assert_eq!(labels.label_noise(), Some(0.2));
        assert_eq!(anti.label_noise(), None);
    }

    #[test]
    fn policies_that_would_inject_nothing_are_named() {
        let with = |policy, f: fn(&mut PolicyConfig)| {
            let mut p = PolicyConfig {
                policy,
                ..Default::default()
            };
            f(&mut p);
            p
        };
        use NoisePolicy::*;
        let refused = [
            (
                with(AntiPgd, |p| p.anti_pgd_sigma = 0.0),
                "--anti-pgd-sigma",
            ),
            (
                with(Perturbed, |p| p.perturb_radius = 0.0),
                "--perturb-radius",
            ),
            (
                with(Perturbed, |p| p.perturb_threshold = 0.0),
                "--perturb-threshold",
            ),
            (
                with(Langevin, |p| p.langevin_temperature = 0.0),
                "--langevin-temperature",
            ),
            (with(LabelNoise, |p| p.label_noise = 0.0), "--label-noise"),
            (
                with(ShrinkPerturb, |p| {
                    p.shrink_factor = 1.0;
                    p.shrink_sigma = 0.0
                }),
                "--shrink-factor",
            ),
            (
                with(ShrinkPerturb, |p| p.shrink_every = 300),
                "--shrink-every",
            ),
        ];
        for (policy, option) in refused {
            let why = policy
                .injects_nothing(NoiseKind::Uniform, 300)
                .unwrap_or_else(|| panic!("{policy:?}"));
            assert!(why.contains(option), "{why}");
        }
        let labels = with(LabelNoise, |_| {});
        assert!(labels.injects_nothing(NoiseKind::Uniform, 300).is_none());
        let why = labels.injects_nothing(NoiseKind::Gaussian, 300).unwrap();
        assert!(why.contains("--noise uniform"), "{why}");
        use strum::VariantArray;
        for policy in NoisePolicy::VARIANTS.iter().filter(|p| **p != Adaptive) {
            let p = with(*policy, |_| {});
            assert!(
                p.injects_nothing(NoiseKind::None, 300).is_some(),
                "{policy}"
            );
            assert!(p.validate().is_ok());
        }
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
        let bad = PolicyConfig {
            label_noise: 1.5,
            ..Default::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("probability")
        );
        let bad = PolicyConfig {
            shrink_every: 0,
            ..Default::default()
        };
        assert!(bad.validate().is_err());
    }
}
