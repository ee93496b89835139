//! The LibTorch engine's state as bytes for checkpoints: named tensors in
//! libtorch's own serialisation (`param.<i>`, `buffer.<i>`), always taken to the
//! CPU, and loaded back into the live tensors in place (so their device and
//! memory layout stay).

use super::models::TorchModel;
use anyhow::{Context, Result, bail};
use std::io::Cursor;
use tch::Tensor;

/// `tensors` named `<prefix>.<i>`, as CPU copies.
pub fn named(prefix: &str, tensors: &[Tensor]) -> Result<Vec<(String, Tensor)>> {
    tensors
        .iter()
        .enumerate()
        .map(|(i, t)| {
            Ok((
                format!("{prefix}.{i}"),
                t.f_detach()?.f_to_device(tch::Device::Cpu)?,
            ))
        })
        .collect()
}

/// Named tensors as bytes.
pub fn to_bytes(named: &[(String, Tensor)]) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    Tensor::save_multi_to_stream(named, &mut bytes)
        .context("libtorch could not serialise the engine's state")?;
    Ok(bytes)
}

/// Named tensors from bytes.
pub fn from_bytes(bytes: &[u8]) -> Result<Vec<(String, Tensor)>> {
    Tensor::load_multi_from_stream(Cursor::new(bytes))
        .context("the checkpoint's LibTorch state is unreadable (written by another engine?)")
}

/// The model's weights and BatchNorm statistics as bytes.
pub fn model_bytes(model: &TorchModel) -> Result<Vec<u8>> {
    let mut all = named("param", model.params())?;
    all.extend(named("buffer", model.buffers())?);
    to_bytes(&all)
}

/// Copies the tensors named `<prefix>.<i>` in `saved` into `into`, checking that every one
/// is there with its shape.
fn copy_into(saved: &[(String, Tensor)], prefix: &str, into: &[Tensor]) -> Result<()> {
    let _guard = tch::no_grad_guard();
    for (i, target) in into.iter().enumerate() {
        let name = format!("{prefix}.{i}");
        let Some((_, value)) = saved.iter().find(|(n, _)| *n == name) else {
            bail!("the checkpoint does not fit this model: it has no {name}");
        };
        if value.size() != target.size() {
            bail!(
                "the checkpoint does not fit this model: {name} is {:?}, the model's {:?}",
                value.size(),
                target.size()
            );
        }
        target.shallow_clone().f_copy_(value)?;
    }
    Ok(())
}

/// Loads a model record (as [`model_bytes`] wrote it) into `model`.
pub fn load_model(model: &TorchModel, bytes: &[u8]) -> Result<()> {
    let saved = from_bytes(bytes)?;
    copy_into(&saved, "param", model.params())?;
    copy_into(&saved, "buffer", model.buffers())
}

/// The weights at an epoch's start, from their record, on the model's device.
pub fn load_epoch_start(model: &TorchModel, bytes: &[u8]) -> Result<Vec<Tensor>> {
    let saved = from_bytes(bytes)?;
    let copies = model
        .params()
        .iter()
        .map(Tensor::f_detach_copy)
        .collect::<Result<Vec<_>, _>>()?;
    copy_into(&saved, "param", &copies)?;
    Ok(copies)
}
