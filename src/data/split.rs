//! The validation split: `N` training images held out, stratified by class and
//! chosen by a shuffle seeded with the split seed alone (not the run's seed), so
//! that every seed of a study holds out the same images and never trains on them.

use super::{Dataset, Split};
use crate::rng::{Purpose, stream};
use anyhow::{Result, bail};
use rand::seq::SliceRandom;

/// The default split seed.
pub const SPLIT_SEED: u64 = 0x5eed_0a1d;

/// How many of each class's `counts` to hold out so that they sum to `n`: proportional
/// shares, the remainders going to the classes with the largest fractions (then the
/// lower label).
fn quotas(counts: &[usize], n: usize) -> Vec<usize> {
    let total: usize = counts.iter().sum();
    let mut quota: Vec<usize> = counts.iter().map(|c| c * n / total).collect();
    let mut order: Vec<usize> = (0..counts.len()).collect();
    // Largest fractional part first: (c * n) mod total.
    order.sort_by_key(|&i| (std::cmp::Reverse(counts[i] * n % total), i));
    let missing = n - quota.iter().sum::<usize>();
    for &i in order.iter().take(missing) {
        quota[i] += 1;
    }
    quota
}

/// The indices of `split` to hold out: `n` of them, stratified by class.
pub fn held_out_indices(split: &Split, classes: usize, n: usize, seed: u64) -> Vec<usize> {
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for (i, &label) in split.labels.iter().enumerate() {
        by_class[label as usize].push(i);
    }
    let counts: Vec<usize> = by_class.iter().map(Vec::len).collect();
    let quota = quotas(&counts, n);
    let mut out = Vec::with_capacity(n);
    for (class, (mut members, k)) in by_class.into_iter().zip(quota).enumerate() {
        members.shuffle(&mut stream(seed, Purpose::ValidationSplit, class as u64));
        out.extend_from_slice(&members[..k]);
    }
    out.sort_unstable();
    out
}

/// Moves `n` stratified training images of `data` into its validation split.
pub fn hold_out(data: &mut Dataset, n: usize, seed: u64) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let classes = data.classes.len();
    if n < classes {
        bail!(
            "--val-split {n} is smaller than the number of classes ({classes}): a stratified split needs at least one held-out image per class; use --val-split {classes} or more (or 0 to validate on the test set)"
        );
    }
    if n >= data.train.len() {
        bail!(
            "--val-split {n} would hold out every training image (the training set has {}); use a smaller --val-split",
            data.train.len()
        );
    }
    let held = held_out_indices(&data.train, data.classes.len(), n, seed);
    let mut is_held = vec![false; data.train.len()];
    for &i in &held {
        is_held[i] = true;
    }
    let kept: Vec<usize> = (0..data.train.len()).filter(|&i| !is_held[i]).collect();
    let val = data.train.select(&held);
    let train = data.train.select(&kept);
    for (label, class) in data.classes.iter().enumerate() {
        if !train.labels.contains(&(label as u8)) {
            bail!(
                "--val-split {n} holds out every training image of class '{class}'; use a smaller --val-split"
            );
        }
    }
    data.train = train;
    data.val = Some(val);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::IMAGE_BYTES;

    fn split(labels: Vec<u8>) -> Split {
        Split {
            images: (0..labels.len() * IMAGE_BYTES)
                .map(|i| (i / IMAGE_BYTES) as u8)
                .collect(),
            labels,
        }
    }

    #[test]
    fn quotas_are_proportional_and_sum_to_n() {
        assert_eq!(quotas(&[100, 100, 100, 100], 10), vec![3, 3, 2, 2]);
        assert_eq!(quotas(&[50, 30, 20], 10), vec![5, 3, 2]);
        assert_eq!(quotas(&[5000; 10], 5000), vec![500; 10]);
        assert_eq!(quotas(&[1, 1, 98], 3).iter().sum::<usize>(), 3);
    }

    #[test]
    fn the_split_is_stratified_disjoint_and_depends_on_its_seed_only() {
        let labels: Vec<u8> = (0..200).map(|i| (i % 4) as u8).collect();
        let data = Dataset {
            train: split(labels),
            val: None,
            test: split(vec![0, 1]),
            classes: (0..4).map(|c| c.to_string()).collect(),
        };
        let mut a = data.clone();
        hold_out(&mut a, 40, SPLIT_SEED).unwrap();
        let val = a.val.as_ref().unwrap();
        assert_eq!((a.train.len(), val.len()), (160, 40));
        for class in 0..4u8 {
            assert_eq!(val.labels.iter().filter(|&&l| l == class).count(), 10);
        }
        // Every image is in exactly one of the two: their first bytes (the image index) are
        // disjoint and together cover all 200.
        let mut seen: Vec<u8> = (0..a.train.len())
            .map(|i| a.train.image(i)[0])
            .chain((0..val.len()).map(|i| val.image(i)[0]))
            .collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..200).map(|i| i as u8).collect::<Vec<_>>());
        // The same seed holds out the same images; another seed others.
        let mut b = data.clone();
        hold_out(&mut b, 40, SPLIT_SEED).unwrap();
        assert_eq!(b.val, a.val);
        let mut c = data.clone();
        hold_out(&mut c, 40, 7).unwrap();
        assert_ne!(c.val, a.val);
    }

    #[test]
    fn impossible_splits_are_explained() {
        let data = Dataset {
            train: split(vec![0, 0, 0, 1]),
            val: None,
            test: split(vec![0]),
            classes: vec!["a".into(), "b".into()],
        };
        let err = hold_out(&mut data.clone(), 4, 1).unwrap_err().to_string();
        assert!(err.contains("every training image"), "{err}");
        let err = hold_out(&mut data.clone(), 3, 1).unwrap_err().to_string();
        assert!(err.contains("class 'b'"), "{err}");
        let err = hold_out(&mut data.clone(), 1, 1).unwrap_err().to_string();
        assert!(
            err.contains("smaller than the number of classes (2)"),
            "{err}"
        );
    }
}
