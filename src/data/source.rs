//! Finds out what a data folder holds (the binary release or an image folder),
//! downloads the release into an empty folder, and applies `--train-subset`.

use super::{Dataset, cifar_binary, download, image_folder};
use crate::events::Observer;
use crate::rng::{Purpose, stream};
use anyhow::{Result, bail};
use rand::seq::SliceRandom;
use std::path::Path;

/// The seed of the fixed shuffle that `--train-subset` takes its first N images from,
/// the same for every run so that runs with the same N train on the same images.
pub const SUBSET_SEED: u64 = 0x5eed_c1fa;

/// The on-disk layout found in a data folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataFormat {
    /// CIFAR-10's binary release (`cifar-10-batches-bin/`).
    CifarBinary,
    /// A folder of images (`train/<class>/`, `test/<class>/`).
    ImageFolder,
}

/// Detects the layout of `dir`; `None` when it holds neither.
pub fn detect(dir: &Path) -> Option<DataFormat> {
    if cifar_binary::is_present(dir) {
        Some(DataFormat::CifarBinary)
    } else if image_folder::is_present(dir) {
        Some(DataFormat::ImageFolder)
    } else {
        None
    }
}

/// Loads the dataset in `dir`, downloading the binary release when the folder holds no data.
pub fn load_cifar10(
    dir: &Path,
    allow_download: bool,
    observer: &mut dyn Observer,
) -> Result<Dataset> {
    let format = match detect(dir) {
        Some(format) => format,
        None if allow_download => {
            download::ensure_cifar10(dir, observer)?;
            DataFormat::CifarBinary
        }
        None => bail!(
            "{} holds no dataset. {}",
            dir.display(),
            download::offline_help(dir)
        ),
    };
    match format {
        DataFormat::CifarBinary => cifar_binary::load(dir),
        DataFormat::ImageFolder => image_folder::load(dir, observer),
    }
}

/// Keeps the first `n` training images of a fixed seeded shuffle.
pub fn train_subset(data: &mut Dataset, n: usize) -> Result<()> {
    if n == 0 {
        bail!("--train-subset must be at least 1");
    }
    if n > data.train.len() {
        bail!(
            "--train-subset {n} asks for more images than the {} of the training set",
            data.train.len()
        );
    }
    let mut order: Vec<usize> = (0..data.train.len()).collect();
    order.shuffle(&mut stream(SUBSET_SEED, Purpose::TrainSubset, 0));
    order.truncate(n);
    data.train = data.train.select(&order);
    Ok(())
}
