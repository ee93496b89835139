//! The LibTorch engine (built with `--features tch`), on LibTorch's CPU device so that CI
//! can run it: its models have the study's parameter counts, a noisy run matches the
//! Burn engine on flex until noise starts, an interruption (a stop mid-epoch, or a real
//! kill -9) resumes bit-identically, weight noise has the scale each reading gives, and
//! what LibTorch cannot do here is refused with a sentence.
#![cfg(feature = "tch")]

mod common;

use adanoise::data::placement::DataPlacement;
use adanoise::data::synthetic::write_binary_release;
use adanoise::data::{IMAGE_BYTES, Split};
use adanoise::device::DeviceKind;
use adanoise::engine::{self, EngineData, EngineSpec, NoiseDraw, WeightNoise};
use adanoise::models::ModelKind;
use adanoise::noise::{NoiseKind, WeightNoiseScale};
use adanoise::optim::OptimizerKind;
use adanoise::train::{Precision, RunOptions, RunStatus, train};
use common::{close, deterministic, firing_config, metrics_epochs, offline};
use std::process::Command;

fn spec(model: ModelKind, device: DeviceKind) -> EngineSpec {
    EngineSpec {
        model,
        optimizer: OptimizerKind::SgdMomentum,
        weight_decay: 1e-4,
        device,
        precision: Precision::F32,
        data_placement: DataPlacement::Auto,
        batch_size: 8,
        seed: 3,
        threads: None,
        label_smoothing: 0.0,
    }
}

fn tiny_data() -> EngineData {
    let split = Split {
        images: (0..16 * IMAGE_BYTES).map(|i| (i % 251) as u8).collect(),
        labels: (0..16).map(|i| (i % 10) as u8).collect(),
    };
    EngineData {
        train: split.clone(),
        val: split,
        test: None,
        classes: 10,
    }
}

#[test]
fn the_models_have_the_studys_parameter_counts() {
    let expected = [
        (ModelKind::BabyCnn, 20_714),
        (ModelKind::TinyCnn, 545_098),
        (ModelKind::SimpleCnn, 22_954_506),
        (ModelKind::Resnet18, 11_173_962),
    ];
    for (model, want) in expected {
        let engine = engine::build(&spec(model, DeviceKind::LibtorchCpu), tiny_data()).unwrap();
        assert_eq!(engine.trainable_params(), want, "{model}");
    }
}

#[test]
fn a_noisy_libtorch_run_matches_the_burn_engine_until_noise_starts_and_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_binary_release(&data, 64, 32, 3).unwrap();
    let torch = firing_config(&data, DeviceKind::LibtorchCpu);
    let whole = train(&torch, &tmp.path().join("torch"), &offline()).unwrap();
    let flex = train(
        &firing_config(&data, DeviceKind::Cpu),
        &tmp.path().join("flex"),
        &offline(),
    )
    .unwrap();
    assert_eq!(whole.summary.status, RunStatus::Finished);
    let (t, c) = (&whole.history[0], &flex.history[0]);
    assert!(close(t.train_loss, c.train_loss, 1e-3), "{t:?}\n{c:?}");
    assert!(close(t.val_loss, c.val_loss, 1e-3), "{t:?}\n{c:?}");
    assert!(close(t.grad_norm, c.grad_norm, 1e-3), "{t:?}\n{c:?}");
    assert!(
        close(t.weight_update, c.weight_update, 1e-3),
        "{t:?}\n{c:?}"
    );
    assert_eq!(
        t.decision, c.decision,
        "the same decision from the same metrics"
    );
    assert!(
        whole.history.iter().any(|m| m.noise_applied.any()),
        "no noise was injected: {:?}",
        whole.history
    );

    // Interrupted in the middle of epoch 2 (after step 6 of 4 + 4), then resumed: on the
    // CPU every metric is bit-identical to the uninterrupted run's.
    let out = tmp.path().join("resumed");
    let stopped = train(
        &torch,
        &out,
        &RunOptions {
            stop_at_step: Some(6),
            ..offline()
        },
    )
    .unwrap();
    assert!(stopped.interrupted);
    let resumed = train(
        &torch,
        &out,
        &RunOptions {
            resume: true,
            ..offline()
        },
    )
    .unwrap();
    assert_eq!(
        deterministic(&resumed.history),
        deterministic(&whole.history)
    );
}

#[test]
fn a_killed_libtorch_run_resumes_bit_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_binary_release(&data, 600, 50, 1).unwrap();
    let args = |out: &std::path::Path| -> Vec<String> {
        let mut a: Vec<String> = [
            "train",
            "--model",
            "baby-cnn",
            "--optimizer",
            "adam",
            "--lr",
            "0.001",
            "--epochs",
            "4",
            "--batch-size",
            "20",
            "--threads",
            "1",
            "--device",
            "libtorch-cpu",
            "--noise",
            "gaussian",
            "--noise-policy",
            "constant",
            "--offline",
            "--data-dir",
        ]
        .map(String::from)
        .to_vec();
        a.extend([
            data.display().to_string(),
            "--out".into(),
            out.display().to_string(),
        ]);
        a
    };
    let straight = tmp.path().join("straight");
    common::ok(&common::adanoise(&args(&straight)));

    let out = tmp.path().join("killed");
    let mut child = Command::new(env!("CARGO_BIN_EXE_adanoise"))
        .args(args(&out))
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while metrics_epochs(&out).len() < 2 {
        assert!(started.elapsed().as_secs() < 120, "no epoch was recorded");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // kill -9: no checkpoint of the epoch in progress; --resume redoes it from the last one.
    child.kill().unwrap();
    child.wait().unwrap();
    let mut resume = args(&out);
    resume.push("--resume".into());
    common::ok(&common::adanoise(&resume));
    let read = |dir: &std::path::Path| {
        adanoise::train::run_dir::read_metrics_file(&dir.join("metrics.jsonl")).unwrap()
    };
    assert_eq!(deterministic(&read(&out)), deterministic(&read(&straight)));
}

/// Right after weight noise, the weight update is the noise's size relative to the
/// weights: about `sigma` under the relative scale (each tensor's noise is sigma times its
/// own root mean square), `sigma sqrt(n) / ||w||` under the absolute one. Both engines.
#[test]
fn weight_noise_has_the_scale_of_its_reading_on_both_engines() {
    for device in [DeviceKind::Cpu, DeviceKind::LibtorchCpu] {
        let mut engine = engine::build(&spec(ModelKind::TinyCnn, device), tiny_data()).unwrap();
        let noise = |scale| WeightNoise {
            draw: NoiseDraw {
                kind: NoiseKind::Gaussian,
                sigma: 0.02,
                seed: 5,
            },
            scale,
            shrink: 1.0,
        };
        engine
            .start_epoch(Some(noise(WeightNoiseScale::Relative)))
            .unwrap();
        let relative = engine.weight_update().unwrap();
        assert!((relative / 0.02 - 1.0).abs() < 0.03, "{device}: {relative}");
        engine
            .start_epoch(Some(noise(WeightNoiseScale::None)))
            .unwrap();
        assert_eq!(engine.weight_update().unwrap(), 0.0, "{device}");
        engine
            .start_epoch(Some(noise(WeightNoiseScale::Absolute)))
            .unwrap();
        let absolute = engine.weight_update().unwrap();
        // tiny-cnn's weights: 545,098 of them, initialised within +-1/sqrt(fan_in), so an
        // absolute sigma of 0.02 is far larger than the weights' own scale.
        assert!(
            absolute > 3.0 * relative,
            "{device}: {absolute} vs {relative}"
        );
    }
}

#[test]
fn what_libtorch_cannot_do_here_is_refused_with_a_sentence() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_binary_release(&data, 64, 32, 3).unwrap();
    let run = |device: &str, precision: &str| {
        common::adanoise(&[
            "train",
            "--model",
            "baby-cnn",
            "--optimizer",
            "sgd",
            "--lr",
            "0.1",
            "--epochs",
            "1",
            "--offline",
            "--device",
            device,
            "--precision",
            precision,
            "--data-dir",
            data.to_str().unwrap(),
            "--out",
            tmp.path()
                .join(format!("{device}-{precision}"))
                .to_str()
                .unwrap(),
        ])
    };
    if std::env::var("ADANOISE_EXPECT_LIBTORCH_GPU").as_deref() != Ok("1") {
        let o = run("libtorch", "f32");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains("LibTorch sees no CUDA GPU"),
            "{err}"
        );
        assert!(err.contains("--device libtorch-cpu"), "{err}");
    }
    let o = run("libtorch-cpu", "bf16");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("autocast is CUDA-only"),
        "{err}"
    );
    assert!(
        !tmp.path().join("libtorch-cpu-bf16").exists(),
        "nothing written"
    );
}

/// A checkpoint copied from a run of the other engine (whose tensors it cannot read) is
/// refused by name, whichever engine resumes.
#[test]
fn a_checkpoint_of_the_other_engine_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_binary_release(&data, 60, 20, 1).unwrap();
    let run = |device: DeviceKind, name: &str| {
        let config = common::config_from(
            &format!(
                "model = 'baby-cnn'\noptimizer = 'sgd'\nlr = 0.01\nepochs = 2\nbatch_size = 20\ndevice = '{device}'"
            ),
            &data,
            "",
        );
        let out = tmp.path().join(name);
        let options = RunOptions {
            stop_after: Some(1),
            ..offline()
        };
        train(&config, &out, &options).unwrap();
        (config, out)
    };
    let (burn_config, burn) = run(DeviceKind::Cpu, "burn");
    let (torch_config, torch) = run(DeviceKind::LibtorchCpu, "torch");
    let checkpoint = |dir: &std::path::Path| std::fs::read(dir.join("checkpoint.bin")).unwrap();
    let (burn_checkpoint, torch_checkpoint) = (checkpoint(&burn), checkpoint(&torch));
    for (config, dir, other, writer) in [
        (&burn_config, &burn, &torch_checkpoint, "LibTorch"),
        (&torch_config, &torch, &burn_checkpoint, "Burn"),
    ] {
        std::fs::write(dir.join("checkpoint.bin"), other).unwrap();
        let resume = RunOptions {
            resume: true,
            ..offline()
        };
        let err = format!("{:#}", train(config, dir, &resume).unwrap_err());
        assert!(
            err.contains(&format!("written by the {writer} engine")),
            "{err}"
        );
    }
}

/// Under each of the field's policies and label smoothing, the two engines agree on the
/// first epochs: label noise and smoothing to float rounding (the run draws the labels
/// for both), the weight policies to their noise's small effect (each engine draws with
/// its own generator); the perturbations fire at the same steps, and each run resumes
/// bit-identically on LibTorch too.
#[test]
fn both_engines_agree_under_every_policy() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_binary_release(&data, 80, 40, 2).unwrap();
    let cases = [
        ("noise = 'none'\nlabel_smoothing = 0.1", 1e-3),
        (
            "noise = 'uniform'\nnoise_policy = 'label-noise'\nlabel_noise = 0.3",
            1e-3,
        ),
        (
            "noise = 'gaussian'\nnoise_policy = 'anti-pgd'\nanti_pgd_sigma = 0.001",
            1e-2,
        ),
        (
            "noise = 'gaussian'\nnoise_policy = 'langevin'\nlangevin_temperature = 2e-5",
            1e-2,
        ),
        (
            "noise = 'uniform'\nnoise_policy = 'perturbed'\nperturb_threshold = 1e9\nperturb_interval = 3\nperturb_radius = 0.05",
            1e-2,
        ),
        (
            "noise = 'gaussian'\nnoise_policy = 'shrink-perturb'\nshrink_every = 1\nshrink_factor = 0.9\nshrink_sigma = 0.001",
            1e-2,
        ),
    ];
    for (i, (policy, tolerance)) in cases.iter().enumerate() {
        let run = |device: DeviceKind, options: RunOptions, name: &str| {
            let config = common::config_from(
                &format!(
                    "model = 'baby-cnn'\noptimizer = 'sgd-momentum'\nlr = 0.01\nepochs = 2\nbatch_size = 20\nseed = 3\nthreads = 1\ndevice = '{device}'"
                ),
                &data,
                policy,
            );
            train(&config, &tmp.path().join(format!("{name}{i}")), &options).unwrap()
        };
        let burn = run(DeviceKind::Cpu, offline(), "burn").history;
        let torch = run(DeviceKind::LibtorchCpu, offline(), "torch").history;
        for (b, t) in burn.iter().zip(&torch) {
            for (what, x, y) in [
                ("train loss", b.train_loss, t.train_loss),
                ("val loss", b.val_loss, t.val_loss),
                ("grad norm", b.grad_norm, t.grad_norm),
            ] {
                assert!(
                    close(x, y, *tolerance),
                    "{policy}, epoch {}: {what} {x} (Burn) against {y} (LibTorch)",
                    b.epoch
                );
            }
            assert_eq!(b.noise_applied, t.noise_applied, "{policy}");
        }
        let stopped = run(
            DeviceKind::LibtorchCpu,
            RunOptions {
                stop_at_step: Some(6),
                ..offline()
            },
            "stopped",
        );
        assert!(stopped.interrupted);
        let resumed = run(
            DeviceKind::LibtorchCpu,
            RunOptions {
                resume: true,
                ..offline()
            },
            "stopped",
        );
        assert_eq!(
            deterministic(&resumed.history),
            deterministic(&torch),
            "{policy}"
        );
    }
}
