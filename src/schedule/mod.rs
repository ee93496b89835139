//! Learning-rate schedules.

pub mod cosine_restarts;

pub use cosine_restarts::{CosineRestarts, CosineRestartsConfig, ScheduleError};
