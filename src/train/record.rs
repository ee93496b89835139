//! What a run keeps between epochs and processes: the engine's state (model,
//! optimiser, and for a stop in the middle of an epoch its starting weights),
//! the LR schedule's step, the noise scheduler's state and the decision in
//! force, and that epoch's sums, written together into `checkpoint.bin`.

use super::checkpoint::{self, Checkpoint, CheckpointState};
use super::epoch::PartialEpoch;
use super::precision::LossScale;
use crate::engine::EngineRecord;
use crate::noise::{Decision, NoiseScheduler};
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The noise scheduler and the decision in force for the next epoch (checkpointed together).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NoiseState {
    /// The scheduler with its history.
    pub scheduler: NoiseScheduler,
    /// The decision taken after the last recorded epoch.
    pub next: Decision,
    /// Perturbed gradient descent: the global step of its last perturbation.
    #[serde(default)]
    pub last_perturbation: Option<u64>,
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
    /// The engine that wrote the tensors (`Burn`, `LibTorch`), so that a checkpoint of the
    /// other engine is refused by name rather than as unreadable bytes.
    #[serde(default)]
    pub engine: Option<String>,
}

/// Writes the checkpoint after `epochs_done` whole epochs and `step` optimiser steps.
pub fn save(
    path: &Path,
    epochs_done: u64,
    step: u64,
    engine: EngineRecord,
    extra: &ExtraState,
) -> Result<()> {
    checkpoint::save(
        path,
        &Checkpoint {
            state: CheckpointState {
                epoch: epochs_done,
                step,
                extra: serde_json::to_value(extra)?,
            },
            model: engine.model,
            optimizer: engine.optimizer,
            epoch_start_model: engine.epoch_start,
        },
    )
}
