//! Training: the run configuration, the loop, what it records and where
//! (run directory, checkpoint), and its progress display.

pub mod checkpoint;
pub mod config;
pub mod epoch;
pub mod interrupt;
pub mod metrics;
pub mod param_stats;
pub mod precision;
pub mod progress;
pub mod run_dir;
pub mod trainer;

pub use config::TrainConfig;
pub use metrics::{EpochMetrics, RunStatus, Summary};
pub use precision::Precision;
pub use trainer::{Outcome, RunOptions, train};
