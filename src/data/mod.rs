//! CIFAR-10 data: the in-memory dataset, its two on-disk formats (the binary
//! release and image folders), the download of the binary release, and the
//! augmentation pipeline that feeds training batches.

pub mod augment;
pub mod cifar_binary;
pub mod device_data;
pub mod download;
pub mod fingerprint;
pub mod image_folder;
pub mod placement;
pub mod plan;
pub mod source;
pub mod split;
pub mod synthetic;

pub use augment::{Batch, BatchStream, Normalization, eval_batches};
pub use source::{DataFormat, load_cifar10};

/// Side length of a CIFAR image.
pub const IMAGE_SIZE: usize = 32;
/// Channels of a CIFAR image.
pub const CHANNELS: usize = 3;
/// Bytes of one image, channel-major (all red, then green, then blue), as in the binary release.
pub const IMAGE_BYTES: usize = CHANNELS * IMAGE_SIZE * IMAGE_SIZE;
/// CIFAR-10's class names in label order.
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// Images and labels of one split, held as raw bytes (`N x 3 x 32 x 32`, channel-major).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// Pixels, `N x 3 x 32 x 32` bytes, channel-major.
    pub images: Vec<u8>,
    /// Labels, one byte each.
    pub labels: Vec<u8>,
}

impl Split {
    /// Images in the split.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the split is empty.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The bytes of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        &self.images[i * IMAGE_BYTES..(i + 1) * IMAGE_BYTES]
    }

    /// The images at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> Split {
        let mut images = Vec::with_capacity(indices.len() * IMAGE_BYTES);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            images.extend_from_slice(self.image(i));
            labels.push(self.labels[i]);
        }
        Split { images, labels }
    }
}

/// The splits of a dataset with its class names.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// The images trained on.
    pub train: Split,
    /// Training images held out for validation (`--val-split`); none when the test set
    /// is the validation set.
    pub val: Option<Split>,
    /// The test images.
    pub test: Split,
    /// The class names, in label order.
    pub classes: Vec<String>,
}

impl Dataset {
    /// How many classes.
    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }

    /// The split the scheduler and the report validate on: the held-out images, or the
    /// test set when none are held out.
    pub fn validation(&self) -> &Split {
        self.val.as_ref().unwrap_or(&self.test)
    }
}
