//! What a run trained on, in a few lines: per split the image count and a hash of
//! the decoded labels and pixels, and the class names. Recorded in the run's
//! config and checkpoint, so that `--resume` can refuse other data (and say what
//! differs) while a moved folder with the same contents resumes.

use super::{Dataset, Split};
use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};

/// The fingerprint of one split.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitFingerprint {
    /// How many images.
    pub images: usize,
    /// MD5 of the labels, then the pixels, as decoded.
    pub md5: String,
}

impl SplitFingerprint {
    /// The fingerprint of `split`.
    pub fn of(split: &Split) -> Self {
        let digest = contents_md5(&split.labels, &split.images);
        Self {
            images: split.len(),
            md5: format!("{digest:x}"),
        }
    }
}

/// MD5 of a split's labels, then its pixels: the digest of its decoded contents (also the
/// image cache's checksum).
pub fn contents_md5(labels: &[u8], images: &[u8]) -> md5::digest::Output<Md5> {
    let mut hasher = Md5::new();
    hasher.update(labels);
    hasher.update(images);
    hasher.finalize()
}

/// The fingerprint of a dataset as loaded (before any validation split or subset, which
/// the run's config determines).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataFingerprint {
    /// The class names, in label order.
    pub classes: Vec<String>,
    /// The training images.
    pub train: SplitFingerprint,
    /// The test images.
    pub test: SplitFingerprint,
}

impl DataFingerprint {
    /// The fingerprint of `data`.
    pub fn of(data: &Dataset) -> Self {
        Self {
            classes: data.classes.clone(),
            train: SplitFingerprint::of(&data.train),
            test: SplitFingerprint::of(&data.test),
        }
    }

    /// What differs from `other`, one phrase each (empty when nothing does).
    pub fn differences(&self, other: &DataFingerprint) -> Vec<String> {
        let mut out = Vec::new();
        if self.classes != other.classes {
            out.push(format!(
                "classes [{}] -> [{}]",
                self.classes.join(", "),
                other.classes.join(", ")
            ));
        }
        for (name, a, b) in [
            ("training", &self.train, &other.train),
            ("test", &self.test, &other.test),
        ] {
            if a.images != b.images {
                out.push(format!("{name} images {} -> {}", a.images, b.images));
            } else if a.md5 != b.md5 {
                out.push(format!(
                    "{name} images: same count ({}), other contents",
                    a.images
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::synthetic::make_split;

    #[test]
    fn differences_name_what_changed() {
        let data = Dataset {
            train: make_split(20, 1),
            val: None,
            test: make_split(5, 2),
            classes: (0..10).map(|c| c.to_string()).collect(),
        };
        let a = DataFingerprint::of(&data);
        assert!(a.differences(&a.clone()).is_empty());
        let mut other = data.clone();
        other.train = make_split(19, 1);
        assert_eq!(
            a.differences(&DataFingerprint::of(&other)),
            vec!["training images 20 -> 19".to_string()]
        );
        let mut other = data.clone();
        other.test.images[7] ^= 1;
        assert_eq!(
            a.differences(&DataFingerprint::of(&other)),
            vec!["test images: same count (5), other contents".to_string()]
        );
        let mut other = data;
        other.classes.pop();
        assert!(a.differences(&DataFingerprint::of(&other))[0].starts_with("classes"));
    }
}
