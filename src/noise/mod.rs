//! Adaptive noise injection: the scheduler that decides when and how much
//! (`scheduler`), and the injection of that noise into gradients and weights
//! (`inject`).

pub mod inject;
pub mod replay;
pub mod scheduler;

pub use inject::{NoiseKind, add_gradient_noise, add_weight_noise};
pub use scheduler::{Decision, Flag, NoiseScheduler, NoiseSchedulerConfig, Observation};
