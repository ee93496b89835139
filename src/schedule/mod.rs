//! Learning-rate schedules.

pub mod cosine_restarts;

pub use adanoise_core::lr_schedule::{CosineRestartsConfig, ScheduleError};
pub use cosine_restarts::CosineRestarts;
