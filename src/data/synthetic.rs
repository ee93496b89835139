//! A small, learnable stand-in for CIFAR-10, written in the binary release's
//! format: each class is a colour and stripe pattern plus seeded pixel noise.
//! Tests, examples and offline smoke runs use it; it is never mistaken for the
//! real data (its files are far smaller than the release's).

use super::cifar_binary::{BATCHES_DIR, TEST_FILE, TRAIN_FILES, encode_batch};
use super::{IMAGE_BYTES, IMAGE_SIZE, Split};
use crate::rng::{Purpose, stream};
use anyhow::{Context, Result, bail};
use rand::RngExt;
use std::path::Path;

/// `n` images, labels cycling through the 10 classes.
pub fn make_split(n: usize, seed: u64) -> Split {
    let mut rng = stream(seed, Purpose::TrainSubset, 99);
    let mut images = Vec::with_capacity(n * IMAGE_BYTES);
    let mut labels = Vec::with_capacity(n);
    let plane = IMAGE_SIZE * IMAGE_SIZE;
    for i in 0..n {
        let class = (i % 10) as u8;
        labels.push(class);
        for c in 0..3 {
            let base = 40 + 20 * ((class as usize + c * 3) % 10);
            for p in 0..plane {
                let stripe = if (p / IMAGE_SIZE + class as usize).is_multiple_of(4) {
                    40
                } else {
                    0
                };
                let noise: i32 = rng.random_range(-25..=25);
                images.push((base as i32 + stripe + noise).clamp(0, 255) as u8);
            }
        }
    }
    Split { images, labels }
}

/// Writes a synthetic binary release with `train` training and `test` test images into `dir`.
pub fn write_binary_release(dir: &Path, train: usize, test: usize, seed: u64) -> Result<()> {
    if train < TRAIN_FILES.len() || test == 0 {
        bail!("a synthetic dataset needs at least 5 training images and 1 test image");
    }
    let batches = dir.join(BATCHES_DIR);
    std::fs::create_dir_all(&batches)
        .with_context(|| format!("could not create {}", batches.display()))?;
    let all = make_split(train, seed);
    let per_file = train.div_ceil(TRAIN_FILES.len());
    for (k, name) in TRAIN_FILES.iter().enumerate() {
        let indices: Vec<usize> = (k * per_file..((k + 1) * per_file).min(train)).collect();
        std::fs::write(batches.join(name), encode_batch(&all.select(&indices)))?;
    }
    std::fs::write(
        batches.join(TEST_FILE),
        encode_batch(&make_split(test, seed ^ 0xfeed)),
    )?;
    Ok(())
}
