//! The `wgpu` GPU backend (built with `--features wgpu`): a training run with the noise
//! hooks and device-resident data, checked against the CPU. CI runs these on Mesa's
//! software Vulkan device (lavapipe), asked for with ADANOISE_WGPU_SOFTWARE=1; where no
//! GPU adapter exists (none at all, or only a CPU renderer such as Mesa's OpenGL llvmpipe)
//! they skip with the reason, unless ADANOISE_REQUIRE_GPU=1 makes that a failure.
#![cfg(feature = "wgpu")]

mod common;

use adanoise::data::device_data::{DeviceSplit, byte_storage};
use adanoise::data::plan::{epoch_plan, eval_plan};
use adanoise::data::synthetic::write_binary_release;
use adanoise::data::{IMAGE_BYTES, Normalization, Split, augment::materialize};
use adanoise::device::{DeviceKind, wgpu_adapter};
use adanoise::models::ModelKind;
use adanoise::noise::{NoiseKind, add_weight_noise};
use adanoise::train::{Precision, RunStatus, train};
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor};
use common::{close, firing_config, offline};

/// The wgpu device, or `None` (with the reason printed) where there is none.
fn gpu() -> Option<Device> {
    match DeviceKind::Wgpu.device() {
        Ok(device) => Some(device),
        Err(e) if std::env::var("ADANOISE_REQUIRE_GPU").as_deref() == Ok("1") => {
            panic!("ADANOISE_REQUIRE_GPU=1 but {e:#}")
        }
        Err(e) => {
            eprintln!("skipped: {e:#}");
            None
        }
    }
}

/// A whole noisy run on the GPU with the dataset on the device: it finishes, noise fires,
/// and its first (noise-free) epoch matches the CPU's, since weights are initialised on the
/// host and batches follow the same plan.
#[test]
fn a_noisy_run_on_the_gpu_matches_the_cpu_until_noise_starts() {
    if gpu().is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_binary_release(&data, 64, 32, 3).unwrap();
    let on_gpu = train(
        &firing_config(&data, DeviceKind::Wgpu),
        &tmp.path().join("gpu"),
        &offline(),
    )
    .unwrap();
    let on_cpu = train(
        &firing_config(&data, DeviceKind::Cpu),
        &tmp.path().join("cpu"),
        &offline(),
    )
    .unwrap();
    assert_eq!(on_gpu.summary.status, RunStatus::Finished);
    let (g, c) = (&on_gpu.history[0], &on_cpu.history[0]);
    assert!(close(g.train_loss, c.train_loss, 1e-3), "{g:?}\n{c:?}");
    assert!(close(g.val_loss, c.val_loss, 1e-3), "{g:?}\n{c:?}");
    assert!(close(g.grad_norm, c.grad_norm, 1e-3), "{g:?}\n{c:?}");
    assert!(
        on_gpu
            .history
            .iter()
            .any(|m| m.noise_applied.grad_sigma > 0.0 || m.noise_applied.weight_sigma > 0.0),
        "no noise was injected on the GPU: {:?}",
        on_gpu.history
    );
    assert!(
        on_gpu
            .history
            .iter()
            .all(|m| m.train_loss.is_finite() && m.val_loss.is_finite())
    );
}

/// Mixed precision on the GPU: f16 (WGSL has no bf16, which is refused with a sentence)
/// trains with f32 weights and ends its first epoch close to the f32 CPU run.
#[test]
fn an_f16_run_on_the_gpu_tracks_the_f32_run() {
    if gpu().is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_binary_release(&data, 64, 32, 3).unwrap();
    let mut half = firing_config(&data, DeviceKind::Wgpu);
    half.precision = Precision::F16;
    half.noise = NoiseKind::None;
    let adapter = wgpu_adapter::default_adapter().expect("gpu() found one");
    if !adapter.shader_f16 {
        // An adapter without 16-bit floats in its shaders: the run is refused, saying why.
        let err = train(&half, &tmp.path().join("f16"), &offline()).unwrap_err();
        let err = format!("{err:#}");
        assert!(err.contains("cannot compute in f16"), "{err}");
        assert!(
            !tmp.path().join("f16").exists(),
            "a refused run left a directory"
        );
        eprintln!("f16 not run: {err}");
        return;
    }
    let on_gpu = train(&half, &tmp.path().join("f16"), &offline()).unwrap();
    let mut full = firing_config(&data, DeviceKind::Cpu);
    full.noise = NoiseKind::None;
    let on_cpu = train(&full, &tmp.path().join("f32"), &offline()).unwrap();
    assert_eq!(on_gpu.summary.status, RunStatus::Finished);
    let (g, c) = (&on_gpu.history[0], &on_cpu.history[0]);
    assert!(g.loss_scale.is_some(), "{g:?}");
    assert!(close(g.train_loss, c.train_loss, 2e-2), "{g:?}\n{c:?}");
    assert!(close(g.val_loss, c.val_loss, 2e-2), "{g:?}\n{c:?}");
    let mut bf16 = half.clone();
    bf16.precision = Precision::Bf16;
    let err = train(&bf16, &tmp.path().join("bf16"), &offline())
        .err()
        .map(|e| format!("{e:#}"));
    // Some Vulkan devices may gain bf16; where WGSL lacks it the refusal names the fix.
    if let Some(err) = err {
        assert!(err.contains("--precision f16"), "{err}");
        assert!(
            !tmp.path().join("bf16").exists(),
            "a refused run left a directory"
        );
    }
}

/// Batches cut out on the GPU equal the host pipeline's.
#[test]
fn device_resident_batches_on_the_gpu_equal_host_batches() {
    let Some(device) = gpu() else { return };
    let split = Split {
        images: (0..6 * IMAGE_BYTES).map(|i| (i * 13 % 253) as u8).collect(),
        labels: (0..6).map(|i| i as u8).collect(),
    };
    let norm = Normalization::CIFAR10;
    let storage = byte_storage(&device);
    eprintln!("pixels are stored on the wgpu device as {storage:?}");
    let on_device = DeviceSplit::upload(&split, norm, &device, storage);
    let table = norm.table();
    for samples in epoch_plan(6, 4, 1, 1).chain(eval_plan(6, 4)) {
        let host = materialize(&split, &samples, &table);
        let (images, labels) = on_device.batch(&samples);
        let images: Vec<f32> = images.into_data().iter::<f32>().collect();
        for (a, b) in images.iter().zip(&host.images) {
            assert!((a - b).abs() <= 1e-5, "{a} vs {b}");
        }
        let labels: Vec<i64> = labels.into_data().iter::<i64>().collect();
        assert_eq!(labels, host.labels);
    }
}

/// Collects every trainable parameter's values.
struct Values(Vec<Vec<f32>>);

impl ModuleVisitor for Values {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0.push(param.val().into_data().iter::<f32>().collect());
    }
}

/// Weight noise drawn by the GPU's RNG moves the weights by about sigma.
#[test]
fn weight_noise_on_the_gpu_has_the_asked_spread() {
    let Some(device) = gpu() else { return };
    let model = ModelKind::BabyCnn.build(10, &device.autodiff());
    let before = {
        let mut v = Values(Vec::new());
        model.visit(&mut v);
        v.0
    };
    let noisy = add_weight_noise(
        model,
        NoiseKind::Gaussian,
        0.05,
        adanoise::noise::WeightNoiseScale::Absolute,
        9,
    );
    let mut after = Values(Vec::new());
    noisy.visit(&mut after);
    let diffs: Vec<f64> = before
        .iter()
        .flatten()
        .zip(after.0.iter().flatten())
        .map(|(a, b)| (b - a) as f64)
        .collect();
    let n = diffs.len() as f64;
    let mean = diffs.iter().sum::<f64>() / n;
    let std = (diffs.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / n).sqrt();
    assert!(mean.abs() < 0.005, "mean {mean}");
    assert!((std - 0.05).abs() < 0.005, "std {std}");
}
