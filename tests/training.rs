//! End-to-end training on small synthetic data: the run directory, resume after
//! an interruption (equal metrics), refusals, divergence, and the CLI.

mod common;

use adanoise::data::synthetic::write_binary_release;
use adanoise::models::ModelKind;
use adanoise::optim::OptimizerKind;
use adanoise::train::run_dir::METRICS_FILE;
use adanoise::train::{RunOptions, RunStatus, TrainConfig, train};
use common::offline;
use std::path::Path;
use std::process::Command;

fn data_dir(root: &Path) -> std::path::PathBuf {
    let dir = root.join("data");
    write_binary_release(&dir, 200, 50, 1).unwrap();
    dir
}

fn config(data: &Path, extra: &str) -> TrainConfig {
    common::config_from(
        "model = 'baby-cnn'\noptimizer = 'sgd-momentum'\nlr = 0.01\nepochs = 3\nbatch_size = 32\nseed = 3",
        data,
        extra,
    )
}

#[test]
fn run_directory_holds_config_metrics_summary_and_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let data = data_dir(tmp.path());
    let out = tmp.path().join("run");
    let outcome = train(&config(&data, ""), &out, &offline()).unwrap();
    assert_eq!(outcome.summary.status, RunStatus::Finished);
    assert_eq!(outcome.history.len(), 3);
    for file in [
        "config.toml",
        "metrics.jsonl",
        "summary.json",
        "checkpoint.bin",
    ] {
        assert!(out.join(file).is_file(), "{file} missing");
    }
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(out.join(METRICS_FILE))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["epoch"], i as u64 + 1);
        for key in [
            "train_loss",
            "train_acc",
            "val_loss",
            "val_acc",
            "grad_norm",
            "weight_update",
            "lr",
            "seconds",
        ] {
            assert!(line[key].as_f64().unwrap().is_finite(), "{key}");
        }
    }
    // 200 images, batch 32: 7 steps per epoch.
    assert_eq!(lines[2]["steps"], 21);
    // The synthetic classes are easy: the model learns them.
    let last = outcome.history.last().unwrap();
    assert!(last.val_acc > 0.3, "val acc {}", last.val_acc);
    assert!(last.train_loss < outcome.history[0].train_loss);
    // A finished run is never overwritten, with or without --resume under another config.
    let err = train(&config(&data, ""), &out, &offline())
        .unwrap_err()
        .to_string();
    assert!(err.contains("finished"), "{err}");
    let resumed = train(
        &config(&data, ""),
        &out,
        &RunOptions {
            resume: true,
            ..offline()
        },
    )
    .unwrap();
    assert_eq!(resumed.history, outcome.history);
}

#[test]
fn resume_after_interruption_equals_an_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let data = data_dir(tmp.path());
    // resnet18 also covers BatchNorm running statistics and Adam's state in the checkpoint.
    for (model, optimizer) in [
        (ModelKind::BabyCnn, OptimizerKind::SgdMomentum),
        (ModelKind::Resnet18, OptimizerKind::Adam),
    ] {
        let cfg = |_: &str| {
            let mut c = config(&data, "");
            c.model = model;
            c.optimizer = optimizer;
            c.lr = 1e-3;
            c
        };
        let straight = train(&cfg(""), &tmp.path().join(format!("{model}-a")), &offline()).unwrap();

        let out = tmp.path().join(format!("{model}-b"));
        let first = train(
            &cfg(""),
            &out,
            &RunOptions {
                stop_after: Some(1),
                ..offline()
            },
        )
        .unwrap();
        assert_eq!(first.summary.status, RunStatus::Running);
        // Killed after writing epoch 2's metrics line but before its checkpoint, mid-way through
        // a third line: both must be dropped on resume.
        let metrics = out.join(METRICS_FILE);
        let mut text = std::fs::read_to_string(&metrics).unwrap();
        let fake = text
            .lines()
            .next()
            .unwrap()
            .replace("\"epoch\":1", "\"epoch\":2");
        text.push_str(&fake);
        text.push_str("\n{\"epoch\":3,\"train_lo");
        std::fs::write(&metrics, text).unwrap();

        let err = train(&cfg(""), &out, &offline()).unwrap_err().to_string();
        assert!(err.contains("--resume"), "{err}");
        let resumed = train(
            &cfg(""),
            &out,
            &RunOptions {
                resume: true,
                ..offline()
            },
        )
        .unwrap();
        assert_eq!(resumed.summary.status, RunStatus::Finished);
        assert_eq!(
            common::deterministic(&resumed.history),
            common::deterministic(&straight.history),
            "{model}"
        );
        let on_disk = adanoise::train::run_dir::read_metrics_file(&metrics).unwrap();
        assert_eq!(
            common::deterministic(&on_disk),
            common::deterministic(&straight.history),
            "{model}"
        );
    }
}

/// Mixed precision in f16: its loss scale is recorded per epoch and saved in the checkpoint,
/// so an interrupted run resumes to the same metrics as an uninterrupted one.
#[test]
fn f16_run_records_and_resumes_its_loss_scale() {
    let tmp = tempfile::tempdir().unwrap();
    let data = data_dir(tmp.path());
    let cfg = config(&data, "precision = 'f16'");
    let straight = train(&cfg, &tmp.path().join("a"), &offline()).unwrap();
    assert_eq!(straight.summary.status, RunStatus::Finished);
    for m in &straight.history {
        assert!(m.loss_scale.is_some_and(|s| s > 0.0), "{m:?}");
        assert!(m.skipped_steps.is_some_and(|n| n < 7), "{m:?}");
        assert!(m.train_loss.is_finite() && m.val_loss.is_finite(), "{m:?}");
    }
    let out = tmp.path().join("b");
    let stopped = RunOptions {
        stop_after: Some(1),
        ..offline()
    };
    train(&cfg, &out, &stopped).unwrap();
    let resume = RunOptions {
        resume: true,
        ..offline()
    };
    let resumed = train(&cfg, &out, &resume).unwrap();
    assert_eq!(
        common::deterministic(&resumed.history),
        common::deterministic(&straight.history)
    );
    let scales = |h: &[adanoise::train::EpochMetrics]| {
        h.iter()
            .map(|m| (m.loss_scale, m.skipped_steps))
            .collect::<Vec<_>>()
    };
    assert_eq!(scales(&resumed.history), scales(&straight.history));
    // f32 runs record neither.
    let plain = train(&config(&data, ""), &tmp.path().join("c"), &offline()).unwrap();
    assert!(
        plain
            .history
            .iter()
            .all(|m| m.loss_scale.is_none() && m.skipped_steps.is_none())
    );
}

#[test]
fn resume_refuses_a_different_config() {
    let tmp = tempfile::tempdir().unwrap();
    let data = data_dir(tmp.path());
    let out = tmp.path().join("run");
    train(
        &config(&data, ""),
        &out,
        &RunOptions {
            stop_after: Some(1),
            ..offline()
        },
    )
    .unwrap();
    let mut other = config(&data, "");
    other.lr = 0.002;
    let err = train(
        &other,
        &out,
        &RunOptions {
            resume: true,
            ..offline()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("lr: 0.01 -> 0.002"), "{err}");
}

#[test]
fn divergence_stops_with_a_message_and_keeps_what_was_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let data = data_dir(tmp.path());
    let out = tmp.path().join("run");
    let mut cfg = config(&data, "");
    cfg.optimizer = adanoise::optim::OptimizerKind::Sgd;
    cfg.lr = 1e12;
    cfg.lr_final_max = 1e-5;
    let err = train(&cfg, &out, &offline()).unwrap_err().to_string();
    assert!(err.contains("diverged"), "{err}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["status"], "diverged");
    assert!(out.join("config.toml").is_file());
}

use common::adanoise;

#[test]
fn cli_trains_from_a_config_file_with_flag_overrides() {
    let tmp = tempfile::tempdir().unwrap();
    let data = data_dir(tmp.path());
    let cfg = tmp.path().join("run.toml");
    std::fs::write(&cfg, format!("model = 'baby-cnn'\noptimizer = 'adam'\nlr = 0.5\nepochs = 1\nbatch_size = 64\ndata_dir = '{}'\n", data.display())).unwrap();
    let out = tmp.path().join("run");
    let o = adanoise(&[
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--lr",
        "0.001",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let written = std::fs::read_to_string(out.join("config.toml")).unwrap();
    assert!(
        written.contains("lr = 0.001") && written.contains("optimizer = \"adam\""),
        "{written}"
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("epoch 1/1"), "{stdout}");
}

#[test]
fn cli_errors_are_sentences_not_panics() {
    let tmp = tempfile::tempdir().unwrap();
    let data = data_dir(tmp.path());
    let d = data.to_str().unwrap();
    let out = tmp.path().join("never");
    // Each command line is written as one string, `{d}` standing for the synthetic data folder.
    let cases = [
        ("train --model vgg16 --optimizer sgd --lr 0.1", "vgg16"),
        (
            "train --model baby-cnn --optimizer sgd --lr 0.001 --lr-min 0.01 --data-dir {d}",
            "lr_min",
        ),
        ("train --optimizer sgd --lr 0.1 --data-dir {d}", "model"),
        (
            "train --model baby-cnn --optimizer sgd --lr 0.1 --offline --data-dir /nonexistent/x",
            "image folder",
        ),
        (
            "train --model baby-cnn --optimizer sgd --lr 0.1 --data-dir {d} --train-subset 100000",
            "train-subset",
        ),
    ];
    for (line, needle) in cases {
        let mut args: Vec<&str> = line
            .split_whitespace()
            .map(|a| if a == "{d}" { d } else { a })
            .collect();
        args.extend(["--out", out.to_str().unwrap()]);
        let o = adanoise(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} should fail");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(
            !out.exists(),
            "{args:?}: bad input must not leave a run directory"
        );
    }
}

#[test]
fn corrupt_batch_file_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let data = data_dir(tmp.path());
    let file = data.join("cifar-10-batches-bin/data_batch_2.bin");
    let mut bytes = std::fs::read(&file).unwrap();
    bytes.truncate(bytes.len() - 100);
    std::fs::write(&file, bytes).unwrap();
    let o = adanoise(&[
        "train",
        "--model",
        "baby-cnn",
        "--optimizer",
        "sgd",
        "--lr",
        "0.1",
        "--data-dir",
        data.to_str().unwrap(),
        "--out",
        tmp.path().join("r").to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("data_batch_2.bin"),
        "{err}"
    );
}

#[test]
fn models_json_lists_exact_counts() {
    let o = adanoise(&["models", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let pairs: Vec<(String, u64)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap().to_string(),
                m["params"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        pairs,
        vec![
            ("baby-cnn".into(), 20_714),
            ("tiny-cnn".into(), 545_098),
            ("simple-cnn".into(), 22_954_506),
            ("resnet18".into(), 11_173_962)
        ]
    );
}

#[test]
fn stopping_in_the_middle_of_an_epoch_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let data = data_dir(tmp.path());
    // Noise fires from epoch 3 on (aggressive thresholds), so the stopped epoch is a noisy one.
    let extra = "noise = 'gaussian'\n[noise_scheduler]\nmin_epochs_before_flag = 0\nflag_window = 1\ngrad_plateau = 0.9\nval_plateau_delta = 0.9\n";
    for (model, optimizer) in [
        (ModelKind::BabyCnn, OptimizerKind::SgdMomentum),
        (ModelKind::Resnet18, OptimizerKind::Adam),
    ] {
        let mut cfg = config(&data, extra);
        cfg.model = model;
        cfg.optimizer = optimizer;
        cfg.lr = 1e-3;
        let straight = train(&cfg, &tmp.path().join(format!("{model}-a")), &offline()).unwrap();
        assert!(
            straight.history[2].noise_applied.grad_sigma > 0.0,
            "epoch 3 should be noisy"
        );
        let out = tmp.path().join(format!("{model}-b"));
        // 7 steps per epoch: step 17 is in the middle of epoch 3.
        let first = train(
            &cfg,
            &out,
            &RunOptions {
                stop_at_step: Some(17),
                ..offline()
            },
        )
        .unwrap();
        assert!(first.interrupted);
        assert_eq!(first.history.len(), 2);
        let resumed = train(
            &cfg,
            &out,
            &RunOptions {
                resume: true,
                ..offline()
            },
        )
        .unwrap();
        assert!(!resumed.interrupted);
        assert!(
            common::deterministic(&resumed.history) == common::deterministic(&straight.history),
            "{model}: {:#?}\nvs\n{:#?}",
            resumed.history,
            straight.history
        );
    }
}

#[test]
fn sigterm_checkpoints_and_resume_continues() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_binary_release(&data, 2000, 50, 1).unwrap();
    let args = |out: &Path| -> Vec<String> {
        [
            "train",
            "--model",
            "tiny-cnn",
            "--optimizer",
            "sgd-momentum",
            "--lr",
            "0.01",
            "--epochs",
            "3",
            "--batch-size",
            "16",
            "--threads",
            "1",
            "--offline",
            "--data-dir",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([
            data.display().to_string(),
            "--out".into(),
            out.display().to_string(),
        ])
        .collect()
    };
    let straight = tmp.path().join("a");
    let o = Command::new(env!("CARGO_BIN_EXE_adanoise"))
        .args(args(&straight))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let out = tmp.path().join("b");
    let mut child = Command::new(env!("CARGO_BIN_EXE_adanoise"))
        .args(args(&out))
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait for the first epoch, then signal in the middle of the second.
    let metrics = out.join(METRICS_FILE);
    let started = std::time::Instant::now();
    while std::fs::read_to_string(&metrics).map_or(0, |t| t.lines().count()) < 1 {
        assert!(
            started.elapsed().as_secs() < 120,
            "the run did not record an epoch"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(75),
        "a signalled run exits with 75 after its checkpoint"
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["status"], "running");
    let mut resume = args(&out);
    resume.push("--resume".into());
    let o = Command::new(env!("CARGO_BIN_EXE_adanoise"))
        .args(&resume)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let a = adanoise::train::run_dir::read_metrics_file(&straight.join(METRICS_FILE)).unwrap();
    let b = adanoise::train::run_dir::read_metrics_file(&metrics).unwrap();
    assert!(
        common::deterministic(&a) == common::deterministic(&b),
        "{a:#?}\nvs\n{b:#?}"
    );
}

/// Batches cut out on the device follow the same plan as the host pipeline's, so a run
/// trains the same either way, and a run may be resumed with the other placement.
#[test]
fn device_resident_data_trains_the_same_run_as_host_batches() {
    let tmp = tempfile::tempdir().unwrap();
    let data = data_dir(tmp.path());
    let host = train(
        &config(&data, "data_placement = 'host'"),
        &tmp.path().join("host"),
        &offline(),
    )
    .unwrap();
    let device = train(
        &config(&data, "data_placement = 'device'"),
        &tmp.path().join("device"),
        &offline(),
    )
    .unwrap();
    assert_eq!(host.history.len(), 3);
    for (h, d) in host.history.iter().zip(&device.history) {
        for (a, b) in [
            (h.train_loss, d.train_loss),
            (h.val_loss, d.val_loss),
            (h.grad_norm, d.grad_norm),
        ] {
            assert!((a - b).abs() <= 1e-5 * a.abs().max(1.0), "{a} vs {b}");
        }
        assert!((h.val_acc - d.val_acc).abs() <= 0.02);
    }
    // Resuming a host-placed run with device data is allowed (a location option).
    let out = tmp.path().join("mixed");
    let stop = RunOptions {
        stop_after: Some(1),
        ..offline()
    };
    train(&config(&data, "data_placement = 'host'"), &out, &stop).unwrap();
    let resume = RunOptions {
        resume: true,
        ..offline()
    };
    let mixed = train(&config(&data, "data_placement = 'device'"), &out, &resume).unwrap();
    assert_eq!(mixed.summary.status, RunStatus::Finished);
    let last = |h: &[adanoise::train::EpochMetrics]| h.last().unwrap().train_loss;
    assert!((last(&mixed.history) - last(&host.history)).abs() <= 1e-5);
}
