//! Training: the run configuration, one epoch, the run from start to end (open or
//! resume, epochs, record, stop), and what it records where (run directory,
//! metrics, checkpoint), whatever engine ([`crate::engine`]) holds the tensors.

pub mod checkpoint;
pub mod config;
pub mod epoch;
pub mod interrupt;
pub mod lock;
pub mod metrics;
pub mod precision;
pub mod record;
pub mod run;
pub mod run_dir;

pub use crate::engine::burn::init_model;
pub use config::TrainConfig;
pub use metrics::{EpochMetrics, RunStatus, Summary};
pub use precision::Precision;
pub use run::{Outcome, RunOptions, load_data, train, train_holding, train_with};
