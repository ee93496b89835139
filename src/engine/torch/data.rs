//! The LibTorch engine's images: training batches made on the host and uploaded,
//! or cut out on the device from the whole training split uploaded once
//! (normalised and zero-padded for the crop, so that a batch is one gather: the
//! same values as the host pipeline's); the evaluation splits normalised once and
//! kept on the device.

use crate::data::augment::{CROP_PADDING, Normalization, eval_batches};
use crate::data::plan::{SamplePlan, epoch_plan};
use crate::data::{Batch, IMAGE_SIZE, Split};
use crate::engine::Step;
use crate::engine::host::HostBatches;
use anyhow::Result;
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

/// Side of a padded image.
const PADDED: usize = IMAGE_SIZE + 2 * CROP_PADDING;

/// A batch on the device: images `[n, 3, 32, 32]` (f32) and labels `[n]` (i64).
pub struct DeviceBatch {
    /// The images.
    pub images: Tensor,
    /// Their labels.
    pub labels: Tensor,
}

impl DeviceBatch {
    fn upload(batch: &Batch, device: Device) -> Result<Self> {
        let n = batch.len() as i64;
        Ok(Self {
            images: Tensor::f_from_slice(&batch.images)?
                .f_reshape([n, 3, IMAGE_SIZE as i64, IMAGE_SIZE as i64])?
                .f_to_device(device)?,
            labels: Tensor::f_from_slice(&batch.labels)?.f_to_device(device)?,
        })
    }

    /// The same batch (sharing storage).
    pub fn share(&self) -> Self {
        Self {
            images: self.images.shallow_clone(),
            labels: self.labels.shallow_clone(),
        }
    }
}

/// The training split on the device: normalised images `[N, 3, 40, 40]` with a border of
/// normalised zeros (the crop's padding), and the labels.
struct DeviceSplit {
    padded: Tensor,
    labels: Tensor,
}

impl DeviceSplit {
    fn len(&self) -> usize {
        self.labels.size()[0] as usize
    }
}

impl DeviceSplit {
    fn upload(split: &Split, device: Device) -> Result<Self> {
        let table = Normalization::CIFAR10.table();
        // Every image at the crop offset that shifts it by the full padding, mirrored not:
        // written into the middle of a padded frame whose border is normalised zero.
        let n = split.len();
        let side = PADDED * PADDED;
        let mut padded = vec![0f32; n * 3 * side];
        for (i, image) in padded.chunks_exact_mut(3 * side).enumerate() {
            let src = split.image(i);
            for (c, lut) in table.iter().enumerate() {
                let plane = &mut image[c * side..(c + 1) * side];
                plane.fill(lut[0]);
                for y in 0..IMAGE_SIZE {
                    let from = &src[(c * IMAGE_SIZE + y) * IMAGE_SIZE..][..IMAGE_SIZE];
                    let to = &mut plane[(y + CROP_PADDING) * PADDED + CROP_PADDING..][..IMAGE_SIZE];
                    for (out, byte) in to.iter_mut().zip(from) {
                        *out = lut[*byte as usize];
                    }
                }
            }
        }
        let labels: Vec<i64> = split.labels.iter().map(|&l| l as i64).collect();
        Ok(Self {
            padded: Tensor::f_from_slice(&padded)?
                .f_reshape([n as i64, 3, PADDED as i64, PADDED as i64])?
                .f_to_device(device)?,
            labels: Tensor::f_from_slice(&labels)?.f_to_device(device)?,
        })
    }

    /// The batch of `samples`, in one gather (see [`Plan`]), its plan uploaded now.
    fn batch(&self, samples: &[SamplePlan]) -> Result<DeviceBatch> {
        let plan = Plan::upload(samples, self.padded.device())?;
        self.gather(&plan, 0, samples.len() as i64)
    }

    /// The batch of `len` samples from position `start` of an uploaded `plan`: image `b`
    /// channel `c` row `y` column `x` is the padded image's row `dy + y`, column `dx + x`
    /// (or `dx + 31 - x` mirrored).
    fn gather(&self, plan: &Plan, start: i64, len: i64) -> Result<DeviceBatch> {
        let side = IMAGE_SIZE as i64;
        let index = plan.index.f_narrow(0, start, len)?;
        let images = self.padded.f_index(&[
            Some(index.f_reshape([len, 1, 1, 1])?),
            Some(plan.channels.shallow_clone()),
            Some(
                plan.rows
                    .f_narrow(0, start, len)?
                    .f_reshape([len, 1, side, 1])?,
            ),
            Some(
                plan.cols
                    .f_narrow(0, start, len)?
                    .f_reshape([len, 1, 1, side])?,
            ),
        ])?;
        Ok(DeviceBatch {
            images,
            labels: self.labels.f_index_select(0, &index)?,
        })
    }
}

/// Samples' plans on the device, as the gather reads them: which image, and for each
/// output row and column the padded image's row and column.
struct Plan {
    index: Tensor,
    rows: Tensor,
    cols: Tensor,
    channels: Tensor,
}

impl Plan {
    /// Uploads the plans of `samples` (one copy to the device).
    fn upload(samples: &[SamplePlan], device: Device) -> Result<Self> {
        let side = IMAGE_SIZE as i64;
        let n = samples.len();
        // One host buffer, one upload: the indices, then each image's rows, then its columns.
        let mut host = Vec::with_capacity(n * (1 + 2 * IMAGE_SIZE));
        host.extend(samples.iter().map(|s| s.index as i64));
        for s in samples {
            host.extend((0..side).map(|k| s.dy as i64 + k));
        }
        for s in samples {
            host.extend((0..side).map(|k| s.dx as i64 + if s.flip { side - 1 - k } else { k }));
        }
        let all = Tensor::f_from_slice(&host)?.f_to_device(device)?;
        let (n, side) = (n as i64, side);
        Ok(Self {
            index: all.f_narrow(0, 0, n)?,
            rows: all.f_narrow(0, n, n * side)?.f_reshape([n, side])?,
            cols: all
                .f_narrow(0, n + n * side, n * side)?
                .f_reshape([n, side])?,
            channels: Tensor::f_arange(3, (Kind::Int64, device))?.f_reshape([1, 3, 1, 1])?,
        })
    }
}

/// A whole epoch's plan on the device, uploaded at its first step, so that a step copies
/// nothing to the device (a copy from the host would wait for the GPU).
struct EpochOnDevice {
    epoch: u64,
    batches: Vec<Vec<SamplePlan>>,
    starts: Vec<i64>,
    plan: Plan,
}

/// An evaluation split on the device, normalised, centred, in order.
pub struct EvalImages {
    images: Tensor,
    labels: Tensor,
    batch_size: i64,
}

impl EvalImages {
    fn upload(split: &Split, batch_size: usize, device: Device) -> Result<Self> {
        let batches = eval_batches(split, split.len().max(1), Normalization::CIFAR10);
        let all = DeviceBatch::upload(&batches[0], device)?;
        Ok(Self {
            images: all.images,
            labels: all.labels,
            batch_size: batch_size as i64,
        })
    }

    /// The batches of `batch_size` images, in order.
    pub fn batches(&self) -> Result<Vec<DeviceBatch>> {
        let n = self.labels.size()[0];
        (0..n)
            .step_by(self.batch_size as usize)
            .map(|start| {
                let len = self.batch_size.min(n - start);
                Ok(DeviceBatch {
                    images: self.images.f_narrow(0, start, len)?,
                    labels: self.labels.f_narrow(0, start, len)?,
                })
            })
            .collect()
    }
}

/// The training split on the device, with the plan of the epoch being trained.
struct OnDevice {
    split: DeviceSplit,
    epoch: Option<EpochOnDevice>,
    batch_size: usize,
    seed: u64,
}

impl OnDevice {
    /// The batch of `step`: from its epoch's plan, uploaded at the epoch's first step seen,
    /// when the step is on it; else from its own samples, uploaded now.
    fn batch(&mut self, step: &Step) -> Result<DeviceBatch> {
        if self.epoch.as_ref().is_none_or(|e| e.epoch != step.epoch) {
            self.epoch = Some(self.upload_epoch(step.epoch)?);
        }
        let on_plan = self.epoch.as_ref().filter(|e| {
            e.batches
                .get(step.index)
                .is_some_and(|b| b.as_slice() == step.samples)
        });
        match on_plan {
            Some(e) => self
                .split
                .gather(&e.plan, e.starts[step.index], step.samples.len() as i64),
            None => self.split.batch(step.samples),
        }
    }

    fn upload_epoch(&self, epoch: u64) -> Result<EpochOnDevice> {
        let batches: Vec<Vec<SamplePlan>> =
            epoch_plan(self.split.len(), self.batch_size, self.seed, epoch).collect();
        let mut starts = Vec::with_capacity(batches.len());
        let mut at = 0i64;
        for b in &batches {
            starts.push(at);
            at += b.len() as i64;
        }
        let all: Vec<SamplePlan> = batches.iter().flatten().copied().collect();
        Ok(EpochOnDevice {
            epoch,
            plan: Plan::upload(&all, self.split.padded.device())?,
            batches,
            starts,
        })
    }
}

/// Where the training batches come from.
enum TrainImages {
    Host(HostBatches),
    Device(Box<OnDevice>),
}

/// A run's images for the LibTorch engine.
pub struct TorchData {
    train: TrainImages,
    device: Device,
    /// The validation images.
    pub val: EvalImages,
    /// The test images, when a validation split is held out.
    pub test: Option<EvalImages>,
    last: Option<(Vec<SamplePlan>, DeviceBatch)>,
    /// Whether batches are given channels-last (NHWC) strides.
    channels_last: bool,
}

impl TorchData {
    /// Places the splits on `device`; training batches are cut out there when `on_device`.
    pub fn new(
        data: crate::engine::EngineData,
        batch_size: usize,
        seed: u64,
        device: Device,
        on_device: bool,
    ) -> Result<Self> {
        let val = EvalImages::upload(&data.val, batch_size, device)?;
        let test = match &data.test {
            Some(test) => Some(EvalImages::upload(test, batch_size, device)?),
            None => None,
        };
        let train = if on_device {
            TrainImages::Device(Box::new(OnDevice {
                split: DeviceSplit::upload(&data.train, device)?,
                epoch: None,
                batch_size,
                seed,
            }))
        } else {
            TrainImages::Host(HostBatches::new(Arc::new(data.train), batch_size, seed))
        };
        Ok(Self {
            train,
            device,
            val,
            test,
            last: None,
            channels_last: false,
        })
    }

    /// The same data, its batches with channels-last strides when `yes` (the evaluation
    /// splits converted once, here).
    pub fn channels_last(mut self, yes: bool) -> Result<Self> {
        self.channels_last = yes;
        if yes {
            for eval in std::iter::once(&mut self.val).chain(self.test.as_mut()) {
                eval.images = super::models::channels_last(&eval.images)?;
            }
        }
        Ok(self)
    }

    /// The batch of `step`'s samples on the device: the last one again when the same
    /// samples are asked for twice in a row (a benchmark's fixed batch).
    pub fn batch(&mut self, step: &Step) -> Result<DeviceBatch> {
        if let Some((samples, batch)) = &self.last
            && samples.as_slice() == step.samples
        {
            return Ok(batch.share());
        }
        let mut batch = match &mut self.train {
            TrainImages::Device(on_device) => on_device.batch(step)?,
            TrainImages::Host(host) => DeviceBatch::upload(&host.batch(step), self.device)?,
        };
        if self.channels_last {
            batch.images = super::models::channels_last(&batch.images)?;
        }
        self.last = Some((step.samples.to_vec(), batch.share()));
        Ok(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::IMAGE_BYTES;
    use crate::data::augment::materialize;

    #[test]
    fn batches_cut_on_the_device_equal_the_host_pipelines() {
        let split = Split {
            images: (0..20 * IMAGE_BYTES).map(|i| (i * 7 % 256) as u8).collect(),
            labels: (0..20).map(|i| (i % 10) as u8).collect(),
        };
        let on_device = DeviceSplit::upload(&split, Device::Cpu).unwrap();
        for samples in crate::data::plan::epoch_plan(20, 6, 3, 2) {
            let want = materialize(&split, &samples, &Normalization::CIFAR10.table());
            let got = on_device.batch(&samples).unwrap();
            let mut images = vec![0f32; want.images.len()];
            got.images.copy_data(&mut images, want.images.len());
            assert_eq!(images, want.images, "the same values, bit for bit");
            let mut labels = vec![0i64; want.labels.len()];
            got.labels.copy_data(&mut labels, want.labels.len());
            assert_eq!(labels, want.labels);
        }
        // Through the epoch's plan uploaded once, and off the plan: the same batches.
        let data = crate::engine::EngineData {
            train: split.clone(),
            val: split.select(&[0, 1]),
            test: None,
            classes: 10,
        };
        let mut placed = TorchData::new(data, 6, 3, Device::Cpu, true).unwrap();
        let plan: Vec<_> = crate::data::plan::epoch_plan(20, 6, 3, 2).collect();
        let off_plan = vec![SamplePlan::centred(4), SamplePlan::centred(9)];
        for (index, samples) in plan.iter().enumerate().chain([(1, &off_plan)]) {
            let step = Step {
                epoch: 2,
                index,
                samples,
                lr: 0.1,
                grad_noise: None,
                measure_norm: false,
                relabel: None,
            };
            let want = materialize(&split, samples, &Normalization::CIFAR10.table());
            let got = placed.batch(&step).unwrap();
            let mut images = vec![0f32; want.images.len()];
            got.images.copy_data(&mut images, want.images.len());
            assert_eq!(images, want.images, "batch {index}");
        }
    }
}
