//! `checkpoint.bin`: everything needed to continue a run exactly (model with BN
//! statistics, optimiser state, LR-schedule step, epoch, and the state of any
//! per-run component such as the noise scheduler), in one file with a checksum,
//! replaced atomically after every epoch.

use crate::fsio::write_atomic;
use anyhow::{Context, Result, bail};
use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The checkpoint's file name in a run directory.
pub const CHECKPOINT_FILE: &str = "checkpoint.bin";
const MAGIC: &[u8; 16] = b"ADANOISE-CKPT-2\n";

/// The small, human-readable part of a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointState {
    /// Epochs completed.
    pub epoch: u64,
    /// Global optimiser steps taken (the LR schedule's position).
    pub step: u64,
    /// State of other components (the noise scheduler), as JSON.
    #[serde(default)]
    pub extra: serde_json::Value,
}

/// A whole checkpoint: state plus the model's and the optimiser's burnpack records, and,
/// for a checkpoint written in the middle of an epoch, the model at that epoch's start.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// Epoch, step and the other components' state.
    pub state: CheckpointState,
    /// The model's record (weights and BatchNorm statistics).
    pub model: Vec<u8>,
    /// The optimiser's record.
    pub optimizer: Vec<u8>,
    /// The model at the start of a stopped epoch.
    pub epoch_start_model: Option<Vec<u8>>,
}

fn section(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Writes `ckpt` to `path` atomically, with a checksum.
pub fn save(path: &Path, ckpt: &Checkpoint) -> Result<()> {
    let mut body = Vec::with_capacity(ckpt.model.len() + ckpt.optimizer.len() + 256);
    section(&mut body, &serde_json::to_vec(&ckpt.state)?);
    section(&mut body, &ckpt.model);
    section(&mut body, &ckpt.optimizer);
    section(
        &mut body,
        ckpt.epoch_start_model.as_deref().unwrap_or_default(),
    );
    let mut out = Vec::with_capacity(body.len() + 32);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&Md5::digest(&body));
    out.extend_from_slice(&body);
    write_atomic(path, &out)
}

/// Reads a checkpoint; `Ok(None)` when there is none.
pub fn load(path: &Path) -> Result<Option<Checkpoint>> {
    if !path.exists() {
        return Ok(None);
    }
    let bytes =
        std::fs::read(path).with_context(|| format!("could not read {}", path.display()))?;
    let corrupt = || {
        format!(
            "{} is corrupt (it was not written by this adanoise, or was damaged); delete the run directory and train again",
            path.display()
        )
    };
    if bytes.len() < 32
        || &bytes[..16] != MAGIC
        || Md5::digest(&bytes[32..]).as_slice() != &bytes[16..32]
    {
        bail!(corrupt());
    }
    let mut rest = &bytes[32..];
    let mut take = || -> Option<Vec<u8>> {
        let len = u64::from_le_bytes(rest.get(..8)?.try_into().ok()?) as usize;
        let data = rest.get(8..8 + len)?.to_vec();
        rest = &rest[8 + len..];
        Some(data)
    };
    let (Some(state), Some(model), Some(optimizer), Some(start)) = (take(), take(), take(), take())
    else {
        bail!(corrupt());
    };
    let state = serde_json::from_slice(&state).with_context(corrupt)?;
    let epoch_start_model = (!start.is_empty()).then_some(start);
    Ok(Some(Checkpoint {
        state,
        model,
        optimizer,
        epoch_start_model,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_detects_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CHECKPOINT_FILE);
        assert!(load(&path).unwrap().is_none());
        let ckpt = Checkpoint {
            state: CheckpointState {
                epoch: 3,
                step: 30,
                extra: serde_json::json!({"k": 1}),
            },
            model: vec![1, 2, 3],
            optimizer: vec![9; 10],
            epoch_start_model: Some(vec![4, 5]),
        };
        save(&path, &ckpt).unwrap();
        let back = load(&path).unwrap().unwrap();
        assert_eq!(back.state, ckpt.state);
        assert_eq!(back.model, ckpt.model);
        assert_eq!(back.optimizer, ckpt.optimizer);
        assert_eq!(back.epoch_start_model, ckpt.epoch_start_model);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert!(load(&path).unwrap_err().to_string().contains("corrupt"));
    }
}
