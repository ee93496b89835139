//! A Burn model's and optimiser's state as bytes (Burn's burnpack records), for
//! checkpoints, and back.

use crate::models::Model;
use anyhow::{Context, Result};
use burn::module::Module;
use burn::optim::{ModuleOptimizer, OptimizerRecord};
use burn::store::ModuleRecord;
use burn::tensor::Bytes;

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

/// The optimiser's state as bytes.
pub fn optimizer_bytes(optim: &ModuleOptimizer) -> Result<Vec<u8>> {
    Ok(optim
        .to_record()
        .into_bytes()
        .map_err(record_error)?
        .to_vec())
}

/// The optimiser's state from a checkpoint's bytes.
pub fn optimizer_record(bytes: Vec<u8>) -> Result<OptimizerRecord> {
    OptimizerRecord::from_bytes(Bytes::from_bytes_vec(bytes))
        .map_err(record_error)
        .context("the checkpoint's optimiser record is unreadable")
}
