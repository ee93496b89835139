//! What a run keeps between epochs and processes: the model, optimiser and
//! schedule state written into `checkpoint.bin`, the noise scheduler's state and
//! the decision in force, and (for a stop in the middle of an epoch) that
//! epoch's sums and its starting weights.

use super::checkpoint::{self, Checkpoint, CheckpointState};
use super::epoch::{Optimization, PartialEpoch};
use super::precision::LossScale;
use crate::models::Model;
use crate::noise::{Decision, NoiseScheduler};
use anyhow::{Context, Result};
use burn::module::Module;
use burn::optim::OptimizerRecord;
use burn::store::ModuleRecord;
use burn::tensor::Bytes;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The noise scheduler and the decision in force for the next epoch (checkpointed together).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NoiseState {
    /// The scheduler with its history.
    pub scheduler: NoiseScheduler,
    /// The decision taken after the last recorded epoch.
    pub next: Decision,
}

/// What a checkpoint's `extra` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExtraState {
    /// The noise scheduler's state.
    pub noise: NoiseState,
    /// Set when the checkpoint was written in the middle of an epoch.
    #[serde(default)]
    pub partial: Option<PartialEpoch>,
    /// The f16 loss scale (absent for other precisions).
    #[serde(default)]
    pub loss_scale: Option<LossScale>,
    /// The run's seed, so that a checkpoint copied from another run is refused.
    #[serde(default)]
    pub seed: Option<u64>,
    /// What the run trained on, so that a checkpoint of other data is refused.
    #[serde(default)]
    pub data: Option<crate::data::fingerprint::DataFingerprint>,
}

fn record_error(e: burn::store::RecordError) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

/// The model's weights and BatchNorm statistics as bytes.
pub fn model_bytes(model: &Model) -> Result<Vec<u8>> {
    // BatchNorm running statistics keep their latest update aside until synced; `valid()`
    // syncs them (a record taken without it would lose the last step's update).
    let _ = model.valid();
    Ok(model
        .clone()
        .into_record()
        .into_bytes()
        .map_err(record_error)?
        .to_vec())
}

/// `template` with the weights of `bytes`.
pub fn load_model(template: Model, bytes: Vec<u8>) -> Result<Model> {
    let record = ModuleRecord::from_bytes(Bytes::from_bytes_vec(bytes))
        .map_err(record_error)
        .context("the checkpoint's model record is unreadable")?;
    template
        .try_load_record(record)
        .map_err(record_error)
        .context("the checkpoint does not fit this model")
}

/// Writes the checkpoint: after `epochs_done` whole epochs, plus, for a stop in the middle
/// of the next one, the model at its start (`epoch_start`, with `extra.partial` set).
pub fn save(
    path: &Path,
    epochs_done: u64,
    model: &Model,
    opt: &Optimization,
    extra: &ExtraState,
    epoch_start: Option<&Model>,
) -> Result<()> {
    let epoch_start_model = epoch_start.map(model_bytes).transpose()?;
    checkpoint::save(
        path,
        &Checkpoint {
            state: CheckpointState {
                epoch: epochs_done,
                step: opt.schedule.current_step(),
                extra: serde_json::to_value(extra)?,
            },
            model: model_bytes(model)?,
            optimizer: opt
                .optim
                .to_record()
                .into_bytes()
                .map_err(record_error)?
                .to_vec(),
            epoch_start_model,
        },
    )
}

/// The optimiser's state from a checkpoint's bytes.
pub fn optimizer_record(bytes: Vec<u8>) -> Result<OptimizerRecord> {
    OptimizerRecord::from_bytes(Bytes::from_bytes_vec(bytes))
        .map_err(record_error)
        .context("the checkpoint's optimiser record is unreadable")
}
