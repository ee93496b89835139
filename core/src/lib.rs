//! The adaptive noise injection method without a tensor library: everything in
//! it is a pure function of per-epoch (or per-step) numbers, so the same code
//! drives adanoise's Burn training loop, its `noise-replay` command and the
//! Python package for PyTorch users.
//!
//! - [`defaults`]: the study's defaults (Tables IV and V), the one home of every
//!   default value.
//! - [`lr_schedule`]: cosine annealing with decaying restarts.
//! - [`scheduler`]: the adaptive noise scheduler: flags, sigmas, cooldown, the
//!   decision record and the scheduler's resumable state.
//! - [`formulas`]: the closed forms the scheduler and the policies use.
//! - [`policy`]: who sets the noise (the adaptive scheduler, or a method of the
//!   field: constant or annealed gradient noise, anti-PGD, perturbed gradient
//!   descent, Langevin dynamics, label noise, shrink and perturb) and its
//!   distribution.
//! - [`replay`]: reading recorded metrics and replaying the scheduler on them.
//!
//! The rules are written out in the repository's `docs/method.md`.

#![warn(missing_docs)]

pub mod defaults;
pub mod formulas;
pub mod lr_schedule;
pub mod policy;
pub mod replay;
pub mod scheduler;

pub use lr_schedule::{CosineRestartsConfig, ScheduleError};
pub use policy::{
    AfterStep, EpochStart, NoiseKind, NoisePolicy, PerturbRule, PolicyConfig, WeightNoiseScale,
};
pub use scheduler::{
    Decision, Flag, NoiseScheduler, NoiseSchedulerConfig, Observation, SchedulerError,
};
