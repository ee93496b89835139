//! A split that lives on the training device as bytes, zero-padded for the crop, and
//! its batches assembled there: the per-step upload is four integers per image (which
//! image, crop offset, flip), never pixels. Selection, crop, flip and normalisation are
//! tensor operations on the device, drawn from the same [`SamplePlan`]s as the host
//! pipeline, so both give the same batches.

use super::augment::{CROP_PADDING, Normalization};
use super::plan::SamplePlan;
use super::{CHANNELS, IMAGE_SIZE, Split};
use burn::tensor::{DType, Device, Int, Tensor, TensorData};

/// Side of a padded image.
const PADDED: usize = IMAGE_SIZE + 2 * CROP_PADDING;

/// One split on the device: images `N x 3 x 40 x 40` (bytes, zero border) and labels `N`.
pub struct DeviceSplit {
    images: Tensor<4, Int>,
    labels: Tensor<1, Int>,
    len: usize,
    mean: Tensor<4>,
    std: Tensor<4>,
    device: Device,
}

impl DeviceSplit {
    /// Uploads `split` once. Pixels stay bytes (`u8`) on the device where the backend stores
    /// them so; `storage` picks the integer type (see [`byte_storage`]).
    pub fn upload(split: &Split, norm: Normalization, device: &Device, storage: DType) -> Self {
        let n = split.len();
        let mut padded = vec![0u8; n * CHANNELS * PADDED * PADDED];
        for (i, dst) in padded
            .chunks_exact_mut(CHANNELS * PADDED * PADDED)
            .enumerate()
        {
            let src = split.image(i);
            for c in 0..CHANNELS {
                for y in 0..IMAGE_SIZE {
                    let from = (c * IMAGE_SIZE + y) * IMAGE_SIZE;
                    let to = (c * PADDED + y + CROP_PADDING) * PADDED + CROP_PADDING;
                    dst[to..to + IMAGE_SIZE].copy_from_slice(&src[from..from + IMAGE_SIZE]);
                }
            }
        }
        let images = Tensor::<4, Int>::from_data(
            TensorData::new(padded, [n, CHANNELS, PADDED, PADDED]),
            (device, storage),
        );
        let labels = Tensor::<1, Int>::from_data(
            TensorData::new(
                split.labels.iter().map(|&l| l as i64).collect::<Vec<_>>(),
                [n],
            ),
            device,
        );
        let channel =
            |v: [f32; 3]| Tensor::<4>::from_data(TensorData::new(v.to_vec(), [1, 3, 1, 1]), device);
        Self {
            images,
            labels,
            len: n,
            mean: channel(norm.mean),
            std: channel(norm.std),
            device: device.clone(),
        }
    }

    /// Images in the split.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the split is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The batch of `samples`: normalised images `[n, 3, 32, 32]` and labels `[n]`.
    pub fn batch(&self, samples: &[SamplePlan]) -> (Tensor<4>, Tensor<1, Int>) {
        let n = samples.len();
        let side = IMAGE_SIZE as i64;
        // The one upload of a step: index, dy, dx and flip of each image.
        let mut plan = Vec::with_capacity(4 * n);
        plan.extend(samples.iter().map(|s| s.index as i64));
        plan.extend(samples.iter().map(|s| s.dy as i64));
        plan.extend(samples.iter().map(|s| s.dx as i64));
        plan.extend(samples.iter().map(|s| s.flip as i64));
        let plan = Tensor::<2, Int>::from_data(TensorData::new(plan, [4, n]), &self.device);
        let row = |r: usize| plan.clone().slice([r..r + 1, 0..n]).reshape([n]);
        let (index, dy, dx, flip) = (row(0), row(1), row(2), row(3));

        let picked = self.images.clone().select(0, index.clone());
        // Rows y of the crop come from padded rows dy + y.
        let ys = Tensor::<1, Int>::arange(0..side, &self.device);
        let rows = dy.reshape([n, 1, 1, 1]) + ys.reshape([1, 1, side as usize, 1]);
        let rows = rows.expand([n, CHANNELS, IMAGE_SIZE, PADDED]);
        let cropped_rows = picked.gather(2, rows);
        // Columns x come from dx + x, or dx + 31 - x when mirrored: dx + x + flip * (31 - 2x).
        let xs = Tensor::<1, Int>::arange(0..side, &self.device).reshape([1, 1, 1, IMAGE_SIZE]);
        let mirror = xs.clone().mul_scalar(-2).add_scalar(side - 1);
        let cols = dx.reshape([n, 1, 1, 1]) + xs + flip.reshape([n, 1, 1, 1]) * mirror;
        let cols = cols.expand([n, CHANNELS, IMAGE_SIZE, IMAGE_SIZE]);
        let pixels = cropped_rows.gather(3, cols);

        let images = pixels
            .float()
            .div_scalar(255.0)
            .sub(self.mean.clone())
            .div(self.std.clone());
        (images, self.labels.clone().select(0, index))
    }
}

/// The integer type that holds pixels on `device`: bytes where the backend stores and
/// indexes them, otherwise its default integer (four times the memory, same values).
pub fn byte_storage(device: &Device) -> DType {
    let probe_device = device.clone();
    let bytes_work = crate::device::catch_quietly(move || {
        let probe = Tensor::<2, Int>::from_data(
            TensorData::new(vec![7u8, 250, 3, 9], [2, 2]),
            (&probe_device, DType::U8),
        );
        let index = Tensor::<2, Int>::from_data(
            TensorData::new(vec![1i64, 0, 0, 1], [2, 2]),
            &probe_device,
        );
        let picked = probe
            .clone()
            .gather(1, index)
            .float()
            .into_data()
            .iter::<f32>()
            .collect::<Vec<_>>();
        probe.dtype() == DType::U8 && picked == [250.0, 7.0, 3.0, 9.0]
    });
    if bytes_work == Ok(true) {
        DType::U8
    } else {
        Tensor::<1, Int>::zeros([1], device).dtype()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::IMAGE_BYTES;
    use crate::data::augment::materialize;
    use crate::data::plan::{epoch_plan, eval_plan};

    fn split(n: usize) -> Split {
        Split {
            images: (0..n * IMAGE_BYTES).map(|i| (i * 7 % 251) as u8).collect(),
            labels: (0..n).map(|i| (i % 10) as u8).collect(),
        }
    }

    /// The device batches equal the host pipeline's, crop, flip and normalisation included.
    #[test]
    fn device_batches_equal_host_batches() {
        let device = Device::flex();
        let split = split(9);
        let norm = Normalization::CIFAR10;
        let on_device = DeviceSplit::upload(&split, norm, &device, byte_storage(&device));
        let table = norm.table();
        let plans = epoch_plan(split.len(), 4, 11, 2).chain(eval_plan(split.len(), 4));
        let mut flips = 0;
        for samples in plans {
            flips += samples.iter().filter(|s| s.flip).count();
            let host = materialize(&split, &samples, &table);
            let (images, labels) = on_device.batch(&samples);
            assert_eq!(images.dims(), [samples.len(), 3, 32, 32]);
            let images: Vec<f32> = images.into_data().iter::<f32>().collect();
            for (a, b) in images.iter().zip(&host.images) {
                assert!((a - b).abs() <= 1e-6, "{a} vs {b}");
            }
            assert_eq!(
                labels.into_data().iter::<i64>().collect::<Vec<_>>(),
                host.labels
            );
        }
        assert!(flips > 0, "the plan must exercise the mirror");
    }
}
