//! Adaptive noise injection: the scheduler that decides when and how much (the
//! pure arithmetic of `adanoise-core`, re-exported here), the injection of that
//! noise into a Burn model's gradients and weights (`inject`), the other
//! policies' weight perturbations (`perturb`), and the label-noise draws every
//! engine trains on (`labels`).

pub mod inject;
pub mod labels;
pub mod perturb;

pub use adanoise_core::replay;
pub use adanoise_core::scheduler::{
    Decision, Flag, NoiseScheduler, NoiseSchedulerConfig, Observation, SchedulerError,
};
pub use adanoise_core::{NoiseKind, WeightNoiseScale};
pub use inject::{add_gradient_noise, add_weight_noise, host_noise, sample_noise};
