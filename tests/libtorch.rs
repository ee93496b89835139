//! The LibTorch backend (built with `--features tch`), on LibTorch's CPU device so that
//! CI can run it: a noisy run matches the `flex` CPU run until noise starts, resumes
//! across an interruption exactly as an uninterrupted run, and a GPU asked for where
//! LibTorch has none is refused with a sentence.
#![cfg(feature = "tch")]

mod common;

use adanoise::data::synthetic::write_binary_release;
use adanoise::device::DeviceKind;
use adanoise::train::{RunOptions, RunStatus, train};
use common::{close, firing_config, offline};

#[test]
fn a_noisy_libtorch_run_matches_the_cpu_until_noise_starts_and_resumes_exactly() {
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
        whole.history.iter().any(|m| m.noise_applied.any()),
        "no noise was injected: {:?}",
        whole.history
    );

    // Interrupted in the middle of epoch 2 (after step 6 of 4 + 4), then resumed.
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
    assert_eq!(resumed.history.len(), 3);
    for (a, b) in resumed.history.iter().zip(&whole.history) {
        assert_eq!(a.decision, b.decision, "epoch {}", a.epoch);
        for (x, y) in [
            (a.train_loss, b.train_loss),
            (a.val_loss, b.val_loss),
            (a.grad_norm, b.grad_norm),
            (a.weight_update, b.weight_update),
        ] {
            assert!(close(x, y, 1e-6), "epoch {}: {x} vs {y}", a.epoch);
        }
    }
}

#[test]
fn a_libtorch_gpu_where_there_is_none_is_refused_with_a_sentence() {
    if std::env::var("ADANOISE_EXPECT_LIBTORCH_GPU").as_deref() == Ok("1") {
        assert!(DeviceKind::Libtorch.device().is_ok());
        return;
    }
    let err = format!("{:#}", DeviceKind::Libtorch.device().unwrap_err());
    assert!(
        err.contains("LibTorch sees no CUDA GPU") && err.contains("--device libtorch-cpu"),
        "{err}"
    );
    assert!(DeviceKind::LibtorchCpu.device().is_ok());
}
