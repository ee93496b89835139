//! The weight-noise reading of new runs is `relative`, written into every new run's
//! config; a run directory whose config names no reading (written when `absolute` was the
//! only one) keeps meaning `absolute`: it resumes, and reports, as `absolute`.

mod common;

use adanoise::data::synthetic::write_binary_release;
use common::{adanoise, ok};
use std::path::Path;

/// A noisy baby-cnn run whose scheduler fires weight noise from epoch 2 on.
const FIRING: &[&str] = &[
    "--model",
    "baby-cnn",
    "--optimizer",
    "sgd-momentum",
    "--lr",
    "0.01",
    "--batch-size",
    "20",
    "--noise",
    "gaussian",
    "--min-epochs-before-flag",
    "1",
    "--flag-window",
    "1",
    "--overfit-epochs",
    "1",
    "--val-plateau-delta",
    "0.9",
    "--grad-plateau",
    "0.9",
    "--consecutive-trigger",
    "5",
    "--offline",
];

fn train(data: &Path, out: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        "train",
        "--data-dir",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(FIRING);
    args.extend_from_slice(extra);
    ok(&adanoise(&args))
}

fn config_of(run: &Path) -> toml::Table {
    std::fs::read_to_string(run.join("config.toml"))
        .unwrap()
        .parse()
        .unwrap()
}

/// The weight-noise readings recorded in each epoch's `noise_applied`, where weight noise
/// was applied.
fn applied_readings(run: &Path) -> Vec<String> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            let m: serde_json::Value = serde_json::from_str(l).unwrap();
            m["noise_applied"]["weight_scale"]
                .as_str()
                .map(str::to_string)
        })
        .collect()
}

#[test]
fn a_new_run_records_the_relative_reading_and_the_weight_decay_as_written() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_binary_release(&data, 60, 20, 1).unwrap();
    let run = tmp.path().join("run");
    train(&data, &run, &["--epochs", "3"]);
    let config = config_of(&run);
    assert_eq!(config["weight_noise_scale"].as_str(), Some("relative"));
    assert_eq!(config["weight_decay"].as_float(), Some(1e-4));
    let text = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(text.contains("weight_decay = 0.0001\n"), "{text}");
    let readings = applied_readings(&run);
    assert!(!readings.is_empty(), "the scheduler must fire weight noise");
    assert!(readings.iter().all(|r| r == "relative"), "{readings:?}");
}

/// Rewrites a run's config.toml as a version without the option wrote it: no reading, and
/// the weight decay through f32.
fn make_unrecorded(run: &Path) {
    let path = run.join("config.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.contains("weight_noise_scale = \"absolute\"\n"),
        "{text}"
    );
    let old = text
        .replace("weight_noise_scale = \"absolute\"\n", "")
        .replace(
            "weight_decay = 0.0001\n",
            "weight_decay = 0.00009999999747378752\n",
        );
    assert_ne!(old, text);
    std::fs::write(&path, old).unwrap();
}

/// An interrupted absolute run (1 of 3 epochs) in `run`, made with the same options as
/// [`FIRING`].
fn interrupted_absolute_run(data: &Path, run: &Path) {
    let table = format!(
        "model = 'baby-cnn'\noptimizer = 'sgd-momentum'\nlr = 0.01\nepochs = 3\nbatch_size = 20\n\
         noise = 'gaussian'\nweight_noise_scale = 'absolute'\ndata_dir = '{}'\n\
         [noise_scheduler]\nmin_epochs_before_flag = 1\nflag_window = 1\noverfit_epochs = 1\n\
         val_plateau_delta = 0.9\ngrad_plateau = 0.9\nconsecutive_trigger = 5\n",
        data.display()
    );
    let config = adanoise::train::TrainConfig::from_table(table.parse().unwrap()).unwrap();
    let options = adanoise::train::RunOptions {
        stop_after: Some(1),
        ..common::offline()
    };
    let outcome = adanoise::train::train(&config, run, &options).unwrap();
    assert_eq!(outcome.summary.epochs_done, 1);
}

#[test]
fn a_run_recorded_without_a_reading_resumes_and_reports_as_absolute() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_binary_release(&data, 60, 20, 1).unwrap();
    // Copies of an interrupted absolute run as an older version left them: one resumes
    // with its own config alone, one with its original command line, one is asked for the
    // new default.
    let runs: Vec<_> = ["own-config", "command-line", "asks-relative"]
        .iter()
        .map(|name| {
            let run = tmp.path().join(name);
            interrupted_absolute_run(&data, &run);
            make_unrecorded(&run);
            run
        })
        .collect();
    ok(&adanoise(&[
        "train",
        "--resume",
        "--out",
        runs[0].to_str().unwrap(),
        "--offline",
    ]));
    train(&data, &runs[1], &["--epochs", "3", "--resume"]);
    for run in &runs[..2] {
        assert_eq!(
            config_of(run)["weight_noise_scale"].as_str(),
            Some("absolute"),
            "{}",
            run.display()
        );
        let readings = applied_readings(run);
        assert!(!readings.is_empty(), "weight noise must have fired");
        assert!(readings.iter().all(|r| r == "absolute"), "{readings:?}");
    }
    // A finished run of that age reads as absolute in reports.
    let finished = &runs[0];
    make_unrecorded(finished);
    let report = ok(&adanoise(&["report", finished.to_str().unwrap()]));
    assert!(
        report.contains("gaussian, adaptive, absolute weight noise"),
        "{report}"
    );
    // Asking for the new default on such a run is refused, naming the reading and the way
    // to go on.
    let refused = adanoise(&[
        "train",
        "--resume",
        "--out",
        runs[2].to_str().unwrap(),
        "--weight-noise-scale",
        "relative",
        "--offline",
    ]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(err.contains("weight_noise_scale"), "{err}");
    assert!(err.contains("--weight-noise-scale absolute"), "{err}");
}
