//! Helpers shared by the integration tests.
#![allow(dead_code)] // each test binary uses a different subset

use adanoise::noise::Decision;
use adanoise::train::{EpochMetrics, RunOptions, TrainConfig};
use std::path::Path;
use std::process::{Command, Output};

/// Options for a run that never touches the network.
pub fn offline() -> RunOptions {
    RunOptions {
        offline: true,
        ..Default::default()
    }
}

/// A config of the `base` TOML keys and the data folder, with the keys of `extra` (which
/// may hold tables such as `[noise_scheduler]`) set over them.
pub fn config_from(base: &str, data: &Path, extra: &str) -> TrainConfig {
    let mut table: toml::Table = format!("{base}\ndata_dir = '{}'", data.display())
        .parse()
        .unwrap();
    TrainConfig::merge_tables(&mut table, extra.parse().unwrap());
    TrainConfig::for_new_run(table).unwrap()
}

/// Runs the `adanoise` binary.
pub fn adanoise<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_adanoise"))
        .args(args)
        .output()
        .unwrap()
}

/// The standard output of a command that must succeed.
pub fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The epoch numbers recorded in a run directory's metrics.jsonl.
pub fn metrics_epochs(dir: &Path) -> Vec<u64> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["epoch"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

pub type Deterministic = (
    u64,
    f64,
    f64,
    f64,
    f64,
    f64,
    f64,
    f64,
    u64,
    Option<Decision>,
);

/// Everything about a history that does not depend on timing.
pub fn deterministic(history: &[EpochMetrics]) -> Vec<Deterministic> {
    history
        .iter()
        .map(|m| {
            (
                m.epoch,
                m.train_loss,
                m.train_acc,
                m.val_loss,
                m.val_acc,
                m.grad_norm,
                m.weight_update,
                m.lr,
                m.steps,
                m.decision.clone(),
            )
        })
        .collect()
}

/// A small noisy run on `device` whose thresholds make the scheduler fire by epoch 2 (for
/// the backend tests: small enough for a software GPU or LibTorch on the CPU).
pub fn firing_config(
    data: &Path,
    device: adanoise::device::DeviceKind,
) -> adanoise::train::TrainConfig {
    let text = format!(
        "model = 'baby-cnn'\noptimizer = 'sgd-momentum'\nlr = 0.01\nepochs = 3\nbatch_size = 16\nseed = 7\n\
         data_dir = '{}'\ndevice = '{}'\nnoise = 'gaussian'\n\
         [noise_scheduler]\nmin_epochs_before_flag = 1\nflag_window = 1\noverfit_epochs = 1\ngrad_plateau = 0.9\n\
         low_weight_update = 0.5\nval_plateau_delta = 0.9\nconsecutive_trigger = 1\ncooldown_min = 1\ncooldown_max = 1\n",
        data.display(),
        device
    );
    adanoise::train::TrainConfig::for_new_run(text.parse().unwrap()).unwrap()
}

/// Whether `a` and `b` agree to `rel` relative to the larger (or to 1e-3 absolute).
pub fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * a.abs().max(b.abs()).max(1e-3)
}
