//! What an epoch's batches are made of, before any pixel is touched: the shuffled
//! order of the images and each image's crop offset and flip. The host pipeline and
//! the device-resident one both draw from this plan, so they give the same batches.

use super::augment::CROP_PADDING;
use crate::rng::{Purpose, stream};
use rand::RngExt;
use rand::seq::SliceRandom;

/// One image of a batch: which image, its crop offset in the padded image (`dy`, `dx` in
/// `0..=8`, 4 = centred) and whether it is mirrored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SamplePlan {
    /// The image's index in its split.
    pub index: usize,
    /// Vertical crop offset in the padded image.
    pub dy: usize,
    /// Horizontal crop offset in the padded image.
    pub dx: usize,
    /// Whether the image is mirrored.
    pub flip: bool,
}

impl SamplePlan {
    /// The image as it is, for evaluation.
    pub fn centred(index: usize) -> Self {
        Self {
            index,
            dy: CROP_PADDING,
            dx: CROP_PADDING,
            flip: false,
        }
    }
}

/// The training batches of epoch `epoch` (1-based) of a run seeded with `seed`, in order:
/// the order and the augmentation come from streams of that seed and epoch. The last batch
/// may be partial (PyTorch's `drop_last=False`).
pub fn epoch_plan(
    len: usize,
    batch_size: usize,
    seed: u64,
    epoch: u64,
) -> impl Iterator<Item = Vec<SamplePlan>> {
    let mut order: Vec<usize> = (0..len).collect();
    order.shuffle(&mut stream(seed, Purpose::EpochOrder, epoch));
    let mut aug = stream(seed, Purpose::Augmentation, epoch);
    let batch_size = batch_size.max(1);
    (0..len.div_ceil(batch_size)).map(move |b| {
        order[b * batch_size..((b + 1) * batch_size).min(len)]
            .iter()
            .map(|&index| SamplePlan {
                index,
                dy: aug.random_range(0..=2 * CROP_PADDING),
                dx: aug.random_range(0..=2 * CROP_PADDING),
                flip: aug.random_bool(0.5),
            })
            .collect()
    })
}

/// The evaluation batches of a split of `len` images: in order, centred, not mirrored.
pub fn eval_plan(len: usize, batch_size: usize) -> impl Iterator<Item = Vec<SamplePlan>> {
    let batch_size = batch_size.max(1);
    (0..len.div_ceil(batch_size)).map(move |b| {
        (b * batch_size..((b + 1) * batch_size).min(len))
            .map(SamplePlan::centred)
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_epoch_covers_every_image_once_with_offsets_in_range() {
        let batches: Vec<_> = epoch_plan(10, 4, 3, 1).collect();
        assert_eq!(batches.iter().map(Vec::len).collect::<Vec<_>>(), [4, 4, 2]);
        let mut seen: Vec<usize> = batches.iter().flatten().map(|s| s.index).collect();
        seen.sort();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
        assert!(batches.iter().flatten().all(|s| s.dy <= 8 && s.dx <= 8));
    }

    #[test]
    fn plans_depend_on_seed_and_epoch_only() {
        let plan = |seed, epoch| epoch_plan(50, 8, seed, epoch).collect::<Vec<_>>();
        assert_eq!(plan(1, 2), plan(1, 2));
        assert_ne!(plan(1, 2), plan(1, 3));
        assert_ne!(plan(1, 2), plan(2, 2));
    }

    #[test]
    fn eval_plan_is_in_order_and_centred() {
        let batches: Vec<_> = eval_plan(5, 2).collect();
        assert_eq!(batches.len(), 3);
        assert_eq!(batches[2], vec![SamplePlan::centred(4)]);
        assert_eq!(batches[0][1].index, 1);
    }
}
