//! Where batches are assembled: on the host (a background thread augments bytes into
//! floats and each batch is uploaded) or on the training device (the dataset is uploaded
//! once and batches are cut out there). Both follow the same epoch plan
//! ([`crate::data::plan::epoch_plan`]), so a run's batches do not depend on the choice.

use super::Split;
use super::augment::{Batch, Normalization, eval_batches};
use super::device_data::{DeviceSplit, byte_storage};
use super::plan::{SamplePlan, eval_plan};
use crate::device::DeviceKind;
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The user's choice of where batches are assembled.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    Serialize,
    Deserialize,
    clap::ValueEnum,
    strum::Display,
    strum::IntoStaticStr,
)]
#[serde(rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case")]
pub enum DataPlacement {
    /// On the device for GPU backends, on the host for the CPU ones (cpu, libtorch-cpu).
    #[default]
    Auto,
    /// A host thread augments each batch, which is then uploaded.
    Host,
    /// The dataset lives on the device; crop, flip and normalisation run there.
    Device,
}

impl DataPlacement {
    /// Whether batches are assembled on the device for a run on `kind`.
    pub fn on_device(self, kind: DeviceKind) -> bool {
        match self {
            Self::Auto => !matches!(kind, DeviceKind::Cpu | DeviceKind::LibtorchCpu),
            Self::Host => false,
            Self::Device => true,
        }
    }
}

/// A batch ready for the model: images `[n, 3, 32, 32]` and labels `[n]` on the plain device.
pub type BatchTensors = (Tensor<4>, Tensor<1, Int>);

/// Uploads a host batch.
pub fn batch_tensors(batch: Batch, device: &Device) -> BatchTensors {
    let n = batch.len();
    let images = Tensor::<4>::from_data(TensorData::new(batch.images, [n, 3, 32, 32]), device);
    let labels = Tensor::<1, Int>::from_data(TensorData::new(batch.labels, [n]), device);
    (images, labels)
}

/// A training or test split, placed for a run.
pub enum PlacedSplit {
    /// Augmented on the host by a background thread, then uploaded.
    Host(Arc<Split>),
    /// Uploaded once; batches are cut out on the device.
    Device(Arc<DeviceSplit>),
}

impl PlacedSplit {
    /// Places `split` for a run on `device` (the plain device, not its autodiff wrapper).
    pub fn new(split: Arc<Split>, on_device: bool, device: &Device) -> Self {
        if on_device {
            let storage = byte_storage(device);
            Self::Device(Arc::new(DeviceSplit::upload(
                &split,
                Normalization::CIFAR10,
                device,
                storage,
            )))
        } else {
            Self::Host(split)
        }
    }

    /// Images in the split.
    pub fn len(&self) -> usize {
        match self {
            Self::Host(split) => split.len(),
            Self::Device(split) => split.len(),
        }
    }

    /// Whether the split is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The same split for evaluation: in order, centred, with host batches prepared once.
    pub fn for_eval(&self, batch_size: usize) -> EvalSplit {
        match self {
            Self::Host(split) => {
                EvalSplit::Host(eval_batches(split, batch_size, Normalization::CIFAR10))
            }
            Self::Device(split) => EvalSplit::Device(split.clone(), batch_size),
        }
    }
}

/// A split's evaluation batches.
pub enum EvalSplit {
    /// Prepared host batches, uploaded one by one.
    Host(Vec<Batch>),
    /// The split on the device, and the batch size.
    Device(Arc<DeviceSplit>, usize),
}

impl EvalSplit {
    /// The evaluation batches, in order, on `device`.
    pub fn batches(&self, device: &Device) -> Box<dyn Iterator<Item = BatchTensors> + '_> {
        match self {
            Self::Host(batches) => {
                let device = device.clone();
                Box::new(
                    batches
                        .iter()
                        .map(move |b| batch_tensors(b.clone(), &device)),
                )
            }
            Self::Device(split, batch_size) => Box::new(
                eval_plan(split.len(), *batch_size)
                    .map(|samples: Vec<SamplePlan>| split.batch(&samples)),
            ),
        }
    }
}
