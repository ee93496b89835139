//! Reader for CIFAR-10's binary release (`cifar-10-batches-bin/`): five training
//! batches and one test batch of 3,073-byte records (a label byte, then 3,072
//! channel-major pixel bytes). Every file is checked before it is trusted.

use super::{CIFAR10_CLASSES, Dataset, IMAGE_BYTES, Split};
use anyhow::{Context, Result, bail};
use std::path::Path;

/// Bytes of one record: the label and the image.
pub const RECORD_BYTES: usize = 1 + IMAGE_BYTES;
/// Records in each file of the real release.
pub const RECORDS_PER_FILE: usize = 10_000;
/// Folder name of the extracted release.
pub const BATCHES_DIR: &str = "cifar-10-batches-bin";
/// The five training batch files of the release.
pub const TRAIN_FILES: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];
/// The test batch file of the release.
pub const TEST_FILE: &str = "test_batch.bin";

/// Parses one batch file's bytes; `name` is only used in error messages.
pub fn parse_batch(bytes: &[u8], name: &str) -> Result<Split> {
    if bytes.is_empty() {
        bail!(
            "{name} is empty; a CIFAR-10 batch file holds {RECORDS_PER_FILE} records of {RECORD_BYTES} bytes. Delete it and run `adanoise data download` again"
        );
    }
    if !bytes.len().is_multiple_of(RECORD_BYTES) {
        bail!(
            "{name} is {} bytes, not a multiple of the {RECORD_BYTES}-byte record: the file is truncated or corrupt. Delete it and run `adanoise data download` again",
            bytes.len()
        );
    }
    let records = bytes.len() / RECORD_BYTES;
    if records > RECORDS_PER_FILE {
        bail!(
            "{name} holds {records} records, more than the {RECORDS_PER_FILE} of a CIFAR-10 batch file: it is not a CIFAR-10 batch. Delete it and run `adanoise data download` again"
        );
    }
    let mut split = Split {
        images: Vec::with_capacity(records * IMAGE_BYTES),
        labels: Vec::with_capacity(records),
    };
    for (i, record) in bytes.chunks_exact(RECORD_BYTES).enumerate() {
        let label = record[0];
        if label as usize >= CIFAR10_CLASSES.len() {
            bail!(
                "{name}: record {i} has label {label}, but CIFAR-10 labels are 0-9: the file is corrupt. Delete it and run `adanoise data download` again"
            );
        }
        split.labels.push(label);
        split.images.extend_from_slice(&record[1..]);
    }
    Ok(split)
}

fn read_batch(path: &Path) -> Result<Split> {
    let bytes = std::fs::read(path).with_context(|| {
        format!(
            "could not read the CIFAR-10 batch file {}; run `adanoise data download` to fetch the release",
            path.display()
        )
    })?;
    parse_batch(&bytes, &path.display().to_string())
}

/// Whether `dir` looks like an extracted binary release (has its test batch).
pub fn is_present(dir: &Path) -> bool {
    dir.join(BATCHES_DIR).join(TEST_FILE).is_file()
}

/// Loads and checks the whole release from `data_dir/cifar-10-batches-bin/`.
pub fn load(data_dir: &Path) -> Result<Dataset> {
    let dir = data_dir.join(BATCHES_DIR);
    let mut train = Split {
        images: Vec::new(),
        labels: Vec::new(),
    };
    for name in TRAIN_FILES {
        let part = read_batch(&dir.join(name))?;
        train.images.extend(part.images);
        train.labels.extend(part.labels);
    }
    let test = read_batch(&dir.join(TEST_FILE))?;
    Ok(Dataset {
        train,
        val: None,
        test,
        classes: CIFAR10_CLASSES.iter().map(|c| c.to_string()).collect(),
    })
}

/// Encodes a split in the binary format (used to make synthetic test data).
pub fn encode_batch(split: &Split) -> Vec<u8> {
    let mut out = Vec::with_capacity(split.len() * RECORD_BYTES);
    for i in 0..split.len() {
        out.push(split.labels[i]);
        out.extend_from_slice(split.image(i));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(n: usize) -> Vec<u8> {
        let split = Split {
            images: (0..n * IMAGE_BYTES).map(|i| (i % 251) as u8).collect(),
            labels: (0..n).map(|i| (i % 10) as u8).collect(),
        };
        encode_batch(&split)
    }

    #[test]
    fn round_trips_records() {
        let bytes = records(3);
        let split = parse_batch(&bytes, "x").unwrap();
        assert_eq!(split.labels, vec![0, 1, 2]);
        assert_eq!(split.image(1)[0], (IMAGE_BYTES % 251) as u8);
        assert_eq!(encode_batch(&split), bytes);
    }

    #[test]
    fn truncated_file_is_rejected_with_its_name() {
        let mut bytes = records(2);
        bytes.pop();
        let err = parse_batch(&bytes, "data_batch_3.bin")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("data_batch_3.bin") && err.contains("truncated"),
            "{err}"
        );
    }

    #[test]
    fn oversized_file_is_rejected() {
        let bytes = records(RECORDS_PER_FILE + 1);
        let err = parse_batch(&bytes, "test_batch.bin")
            .unwrap_err()
            .to_string();
        assert!(err.contains("more than"), "{err}");
    }

    #[test]
    fn bad_label_is_rejected() {
        let mut bytes = records(2);
        bytes[RECORD_BYTES] = 11;
        let err = parse_batch(&bytes, "data_batch_1.bin")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("label 11") && err.contains("record 1"),
            "{err}"
        );
    }

    #[test]
    fn empty_file_is_rejected() {
        assert!(parse_batch(&[], "x").is_err());
    }
}
