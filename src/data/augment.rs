//! Training and evaluation batches: per-channel normalisation, and the train-time
//! augmentation of `docs/method.md` (section 1: random 32x32 crop of the image zero-padded by 4,
//! then a horizontal flip with probability 0.5), prepared on a background thread
//! so the model never waits for data.

use super::plan::{SamplePlan, epoch_plan, eval_plan};
use super::{IMAGE_BYTES, IMAGE_SIZE, Split};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;

/// Zero padding on each side before the random crop.
pub const CROP_PADDING: usize = 4;

/// Per-channel mean and standard deviation applied to pixels scaled to [0, 1].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalization {
    /// Per-channel mean of pixels in [0, 1].
    pub mean: [f32; 3],
    /// Per-channel standard deviation.
    pub std: [f32; 3],
}

impl Normalization {
    /// CIFAR-10's statistics (`docs/method.md`, section 1).
    pub const CIFAR10: Normalization = Normalization {
        mean: [0.4914, 0.4822, 0.4465],
        std: [0.2471, 0.2435, 0.2616],
    };

    /// Lookup table: normalised value of each byte value, per channel.
    pub fn table(&self) -> [[f32; 256]; 3] {
        let mut t = [[0f32; 256]; 3];
        for (c, row) in t.iter_mut().enumerate() {
            for (v, out) in row.iter_mut().enumerate() {
                *out = (v as f32 / 255.0 - self.mean[c]) / self.std[c];
            }
        }
        t
    }
}

/// One batch of normalised images (`len x 3 x 32 x 32`, row-major) and their labels.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Pixels, `len x 3 x 32 x 32`, normalised.
    pub images: Vec<f32>,
    /// Labels.
    pub labels: Vec<i64>,
}

impl Batch {
    /// Images in the batch.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// Writes one image shifted by a crop offset (`dy`, `dx` in `0..=8`, 4 = centred) and
/// optionally mirrored; pixels that fall in the zero padding become normalised zeros.
pub fn augment_into(
    src: &[u8],
    dst: &mut [f32],
    dy: usize,
    dx: usize,
    flip: bool,
    table: &[[f32; 256]; 3],
) {
    let n = IMAGE_SIZE;
    for (c, lut) in table.iter().enumerate() {
        let plane = &src[c * n * n..(c + 1) * n * n];
        let out = &mut dst[c * n * n..(c + 1) * n * n];
        for y in 0..n {
            let sy = (y + dy) as isize - CROP_PADDING as isize;
            for x in 0..n {
                let ox = if flip { n - 1 - x } else { x };
                let sx = (ox + dx) as isize - CROP_PADDING as isize;
                let inside = (0..n as isize).contains(&sy) && (0..n as isize).contains(&sx);
                let byte = if inside {
                    plane[sy as usize * n + sx as usize]
                } else {
                    0
                };
                out[y * n + x] = lut[byte as usize];
            }
        }
    }
}

/// Number of batches of an epoch: the last one may be partial (PyTorch's `drop_last=False`).
pub fn batches_per_epoch(len: usize, batch_size: usize) -> usize {
    len.div_ceil(batch_size)
}

/// Builds the batch of `samples` from `split`'s bytes.
pub fn materialize(split: &Split, samples: &[SamplePlan], table: &[[f32; 256]; 3]) -> Batch {
    let mut images = vec![0f32; samples.len() * IMAGE_BYTES];
    for (s, dst) in samples.iter().zip(images.chunks_exact_mut(IMAGE_BYTES)) {
        augment_into(split.image(s.index), dst, s.dy, s.dx, s.flip, table);
    }
    Batch {
        images,
        labels: samples
            .iter()
            .map(|s| split.labels[s.index] as i64)
            .collect(),
    }
}

/// The augmented training batches of one epoch, produced on a background thread, each
/// with the plan it was made from.
pub struct BatchStream {
    receiver: Receiver<(Vec<SamplePlan>, Batch)>,
    worker: Option<JoinHandle<()>>,
}

impl BatchStream {
    /// Starts producing epoch `epoch` (1-based) of a run seeded with `seed` (see [`epoch_plan`]).
    pub fn start(
        split: Arc<Split>,
        batch_size: usize,
        norm: Normalization,
        seed: u64,
        epoch: u64,
    ) -> Self {
        Self::start_at(split, batch_size, norm, seed, epoch, 0)
    }

    /// As [`Self::start`], skipping the first `skip` batches (to go on with a stopped epoch):
    /// their random draws are made, so the later batches are those of an uninterrupted epoch.
    pub fn start_at(
        split: Arc<Split>,
        batch_size: usize,
        norm: Normalization,
        seed: u64,
        epoch: u64,
        skip: usize,
    ) -> Self {
        let (sender, receiver) = sync_channel(4);
        let worker = std::thread::Builder::new()
            .name("adanoise-data".into())
            .spawn(move || {
                let table = norm.table();
                for samples in epoch_plan(split.len(), batch_size, seed, epoch).skip(skip) {
                    let batch = materialize(&split, &samples, &table);
                    if sender.send((samples, batch)).is_err() {
                        return; // the consumer stopped early
                    }
                }
            })
            .expect("could not start the data thread");
        Self {
            receiver,
            worker: Some(worker),
        }
    }
}

impl Iterator for BatchStream {
    type Item = (Vec<SamplePlan>, Batch);

    fn next(&mut self) -> Option<(Vec<SamplePlan>, Batch)> {
        self.receiver.recv().ok()
    }
}

impl Drop for BatchStream {
    fn drop(&mut self) {
        // Unblock the worker by dropping our end first, then wait for it.
        let (_, dead) = sync_channel(0);
        drop(std::mem::replace(&mut self.receiver, dead));
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// The evaluation batches of a split: normalised, not augmented, in order.
pub fn eval_batches(split: &Split, batch_size: usize, norm: Normalization) -> Vec<Batch> {
    let table = norm.table();
    eval_plan(split.len(), batch_size)
        .map(|samples| materialize(split, &samples, &table))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp() -> Vec<u8> {
        (0..IMAGE_BYTES).map(|i| (i % 200) as u8 + 1).collect()
    }

    const IDENTITY: Normalization = Normalization {
        mean: [0.0; 3],
        std: [1.0 / 255.0; 3],
    };

    #[test]
    fn centred_crop_without_flip_is_identity() {
        let src = ramp();
        let mut dst = vec![0f32; IMAGE_BYTES];
        augment_into(&src, &mut dst, 4, 4, false, &IDENTITY.table());
        for (a, b) in src.iter().zip(&dst) {
            assert!((*a as f32 - b).abs() < 1e-3);
        }
    }

    #[test]
    fn shifted_crop_pads_with_zero_and_flip_mirrors() {
        let src = ramp();
        let mut dst = vec![0f32; IMAGE_BYTES];
        augment_into(&src, &mut dst, 0, 0, false, &IDENTITY.table());
        // Crop at the top-left of the padded image: the first 4 rows and columns are padding.
        assert_eq!(dst[0], 0.0);
        assert_eq!(dst[3 * 32 + 10], 0.0);
        assert!((dst[4 * 32 + 4] - src[0] as f32).abs() < 1e-3);
        augment_into(&src, &mut dst, 4, 4, true, &IDENTITY.table());
        assert!((dst[0] - src[31] as f32).abs() < 1e-3);
        assert!((dst[1024 + 32 + 31] - src[1024 + 32] as f32).abs() < 1e-3);
    }

    #[test]
    fn cifar_normalisation_matches_formula() {
        let t = Normalization::CIFAR10.table();
        assert!((t[0][255] - (1.0 - 0.4914) / 0.2471).abs() < 1e-6);
        assert!((t[2][0] - (-0.4465 / 0.2616)).abs() < 1e-6);
    }

    #[test]
    fn epoch_stream_is_reproducible_and_covers_every_image() {
        let split = Arc::new(Split {
            images: (0..10 * IMAGE_BYTES).map(|i| (i % 256) as u8).collect(),
            labels: (0..10).collect(),
        });
        let batches = |epoch| -> Vec<Batch> {
            BatchStream::start(split.clone(), 4, Normalization::CIFAR10, 1, epoch)
                .map(|(_, batch)| batch)
                .collect()
        };
        let (a, b, c) = (batches(2), batches(2), batches(3));
        assert_eq!(a.iter().map(Batch::len).collect::<Vec<_>>(), vec![4, 4, 2]);
        assert_eq!(
            a.iter().map(|x| &x.images).collect::<Vec<_>>(),
            b.iter().map(|x| &x.images).collect::<Vec<_>>()
        );
        assert_ne!(
            a.iter().map(|x| &x.labels).collect::<Vec<_>>(),
            c.iter().map(|x| &x.labels).collect::<Vec<_>>()
        );
        let mut labels: Vec<i64> = a.iter().flat_map(|x| x.labels.clone()).collect();
        labels.sort();
        assert_eq!(labels, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn a_stream_started_late_continues_the_same_epoch() {
        let split = Arc::new(Split {
            images: (0..10 * IMAGE_BYTES).map(|i| (i % 256) as u8).collect(),
            labels: (0..10).collect(),
        });
        let all: Vec<(Vec<SamplePlan>, Batch)> =
            BatchStream::start(split.clone(), 3, Normalization::CIFAR10, 5, 1).collect();
        let rest: Vec<(Vec<SamplePlan>, Batch)> =
            BatchStream::start_at(split, 3, Normalization::CIFAR10, 5, 1, 2).collect();
        assert_eq!(rest.len(), 2);
        assert_eq!(rest[0].1.images, all[2].1.images);
        assert_eq!(rest[1].1.labels, all[3].1.labels);
        // Each batch comes with the plan it was made from: the epoch's plan.
        let plan: Vec<Vec<SamplePlan>> = epoch_plan(10, 3, 5, 1).collect();
        assert_eq!(all.iter().map(|(s, _)| s.clone()).collect::<Vec<_>>(), plan);
    }

    #[test]
    fn stream_can_be_dropped_early() {
        let split = Arc::new(Split {
            images: vec![0; 100 * IMAGE_BYTES],
            labels: vec![0; 100],
        });
        let mut s = BatchStream::start(split, 1, Normalization::CIFAR10, 0, 1);
        assert!(s.next().is_some());
        drop(s);
    }
}
