//! Training: the run configuration, one step, one epoch, the run from start to
//! end (open or resume, epochs, record, stop), and what it records where (run
//! directory, metrics, checkpoint).

pub mod checkpoint;
pub mod config;
pub mod epoch;
pub mod interrupt;
pub mod lock;
pub mod metrics;
pub mod param_stats;
pub mod precision;
pub mod record;
pub mod run;
pub mod run_dir;
pub mod step;

pub use config::TrainConfig;
pub use epoch::evaluate;
pub use metrics::{EpochMetrics, RunStatus, Summary};
pub use precision::Precision;
pub use run::{Outcome, RunOptions, init_model, load_data, train, train_holding, train_with};
