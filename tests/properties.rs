//! Generated input against every parser of user files: CIFAR binary batches,
//! image-folder trees, metrics files, training and sweep TOML. Each must give a
//! result or an error that says what is wrong, never panic. (The LR schedule and
//! the scheduler have their own properties in `core/tests/properties.rs`.)

use adanoise::data::cifar_binary::{RECORD_BYTES, parse_batch};
use adanoise::data::image_folder;
use adanoise::events::Silent;
use adanoise::experiments::{Sweep, SweepOverrides};
use adanoise::train::TrainConfig;
use adanoise::train::run_dir::read_metrics_file;
use proptest::prelude::*;
use std::path::Path;

/// What one generated image file holds.
#[derive(Debug, Clone)]
enum File {
    Png(u32),
    CutPng,
    Jpeg,
    CutJpeg,
    Bytes(Vec<u8>),
}

fn file() -> impl Strategy<Value = File> {
    prop_oneof![
        4 => Just(File::Png(32)),
        1 => prop_oneof![Just(1u32), Just(31), Just(33)].prop_map(File::Png),
        1 => Just(File::CutPng),
        2 => Just(File::Jpeg),
        1 => Just(File::CutJpeg),
        1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(File::Bytes),
    ]
}

fn write(path: &Path, file: &File) {
    let encoded = |size: u32, format: image::ImageFormat| {
        let img = image::RgbImage::from_fn(size, size, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let mut bytes = std::io::Cursor::new(Vec::new());
        img.write_to(&mut bytes, format).unwrap();
        bytes.into_inner()
    };
    let bytes = match file {
        File::Png(size) => encoded(*size, image::ImageFormat::Png),
        File::Jpeg => encoded(32, image::ImageFormat::Jpeg),
        File::CutPng => {
            let b = encoded(32, image::ImageFormat::Png);
            b[..b.len() / 2].to_vec()
        }
        File::CutJpeg => {
            let b = encoded(32, image::ImageFormat::Jpeg);
            b[..b.len() / 2].to_vec()
        }
        File::Bytes(b) => b.clone(),
    };
    std::fs::write(path, bytes).unwrap();
}

/// A tree: for each split present, class folders with their files.
type Tree = Vec<(bool, Vec<(String, Vec<File>)>)>;

fn tree() -> impl Strategy<Value = Tree> {
    let class = (
        prop_oneof![Just("cat"), Just("dog"), Just("ship"), Just(".hidden")],
        prop::collection::vec(file(), 0..3),
    )
        .prop_map(|(name, files)| (name.to_string(), files));
    prop::collection::vec((any::<bool>(), prop::collection::vec(class, 0..4)), 2..=2)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn image_folders_load_or_explain(tree in tree()) {
        let dir = tempfile::tempdir().unwrap();
        for ((present, classes), split) in tree.iter().zip(["train", "test"]) {
            if !present {
                continue;
            }
            for (class, files) in classes {
                let folder = dir.path().join(split).join(class);
                std::fs::create_dir_all(&folder).unwrap();
                for (i, f) in files.iter().enumerate() {
                    let ext = if matches!(f, File::Jpeg | File::CutJpeg) { "jpg" } else { "png" };
                    write(&folder.join(format!("{i}.{ext}")), f);
                }
            }
        }
        match image_folder::load(dir.path(), &mut Silent) {
            Ok(data) => {
                prop_assert!(data.classes.len() >= 2);
                prop_assert!(!data.train.is_empty() && !data.test.is_empty());
            }
            Err(e) => {
                let message = format!("{e:#}");
                prop_assert!(!message.is_empty());
            }
        }
    }
}

proptest! {
    #[test]
    fn binary_batches_parse_or_explain(bytes in prop::collection::vec(any::<u8>(), 0..4 * RECORD_BYTES)) {
        match parse_batch(&bytes, "batch.bin") {
            Ok(split) => {
                prop_assert_eq!(split.len() * RECORD_BYTES, bytes.len());
                prop_assert!(split.labels.iter().all(|l| *l < 10));
            }
            Err(e) => prop_assert!(e.to_string().contains("batch.bin")),
        }
    }

    #[test]
    fn metrics_files_parse_or_name_their_line(lines in prop::collection::vec(
        prop_oneof![
            Just(r#"{"epoch": 1, "train_loss": 1.0, "train_acc": 0.5, "val_loss": 1.0, "val_acc": 0.5, "grad_norm": 1.0, "weight_update": 0.1, "lr": 0.1, "steps": 1, "seconds": 1.0, "images_per_s": 1.0}"#.to_string()),
            ".{0,60}".prop_map(|s| s),
            Just(String::new()),
        ],
        0..6,
    )) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        std::fs::write(&path, lines.join("\n")).unwrap();
        if let Err(e) = read_metrics_file(&path) {
            let message = format!("{e:#}");
            prop_assert!(message.contains("line"), "{}", message);
        }
    }

    #[test]
    fn training_configs_load_or_explain(entries in prop::collection::vec(
        (
            prop_oneof![
                Just("model"), Just("optimizer"), Just("lr"), Just("epochs"), Just("seed"),
                Just("noise"), Just("batch_size"), Just("val_split"), Just("t_mult"),
                Just("noise_policy"), Just("bogus"), Just("noise_scheduler"),
            ],
            prop_oneof![
                Just("'baby-cnn'".to_string()), Just("'sgd'".to_string()),
                Just("'gaussian'".to_string()), Just("'annealed'".to_string()),
                any::<i64>().prop_map(|v| v.to_string()),
                any::<f64>().prop_filter("finite", |v| v.is_finite()).prop_map(|v| format!("{v:e}")),
                Just("true".to_string()), Just("{ flag_window = 0 }".to_string()),
                Just("[1, 2]".to_string()), Just("nan".to_string()), Just("-inf".to_string()),
            ],
        ),
        0..8,
    )) {
        let mut text = String::new();
        let mut seen = std::collections::HashSet::new();
        for (key, value) in &entries {
            if seen.insert(*key) {
                text.push_str(&format!("{key} = {value}\n"));
            }
        }
        let table: toml::Table = text.parse().unwrap();
        if let Err(e) = TrainConfig::from_table(table) {
            let message = format!("{e:#}");
            prop_assert!(!message.is_empty());
        }
    }

    #[test]
    fn sweep_files_load_or_explain(text in prop_oneof![
        ".{0,120}".prop_map(|s| s),
        (
            prop_oneof![Just("model"), Just("lr"), Just("seed"), Just("noise"), Just("setting")],
            prop_oneof![
                Just("[]".to_string()), Just("['baby-cnn', 'vgg']".to_string()),
                Just("[0.1, 'x']".to_string()), Just("7".to_string()),
                Just("[{ optimizer = 'adam', lr = 0.001 }, 3]".to_string()),
            ],
        ).prop_map(|(k, v)| format!("[base]\nmodel = 'baby-cnn'\noptimizer = 'sgd'\nlr = 0.1\n[grid]\n{k} = {v}\n")),
    ]) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        std::fs::write(&path, text).unwrap();
        if let Err(e) = Sweep::load(&path, &SweepOverrides::default()) {
            let message = format!("{e:#}");
            prop_assert!(!message.is_empty());
        }
    }
}
