//! Training with noise: decisions recorded every epoch, exactly what they say is
//! injected in the next epoch, unchanged by an interruption, and reproduced by
//! replaying the run's own metrics with its settings.

mod common;

use adanoise::data::synthetic::write_binary_release;
use adanoise::noise::replay::{read_observations, replay};
use adanoise::noise::{Decision, NoiseKind};
use adanoise::train::{EpochMetrics, RunOptions, TrainConfig, train};
use common::offline;
use std::path::Path;

/// Aggressive thresholds so that every rule fires within a few epochs.
fn config(data: &Path, noise: NoiseKind) -> TrainConfig {
    let text = format!(
        "model = 'baby-cnn'\noptimizer = 'sgd-momentum'\nlr = 0.01\nepochs = 6\nbatch_size = 32\nseed = 5\ndata_dir = '{}'\nnoise = '{}'\n\
         [noise_scheduler]\nmin_epochs_before_flag = 1\nflag_window = 1\noverfit_epochs = 1\ngrad_plateau = 0.9\nlow_weight_update = 0.5\n\
         val_plateau_delta = 0.9\nconsecutive_trigger = 2\ncooldown_min = 1\ncooldown_max = 2\nsigma_min = 0.01\nsigma_max = 0.02\n",
        data.display(),
        noise.name()
    );
    TrainConfig::from_table(text.parse().unwrap()).unwrap()
}

fn decisions(history: &[EpochMetrics]) -> Vec<Decision> {
    history
        .iter()
        .map(|m| m.decision.clone().expect("every epoch records a decision"))
        .collect()
}

#[test]
fn noisy_runs_inject_what_was_decided_and_resume_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_binary_release(&data, 160, 40, 2).unwrap();
    for kind in [NoiseKind::Gaussian, NoiseKind::Uniform, NoiseKind::None] {
        let cfg = config(&data, kind);
        let out = tmp.path().join(format!("{kind}-a"));
        let straight = train(&cfg, &out, &offline()).unwrap();
        let ds = decisions(&straight.history);
        assert!(
            ds.iter().any(Decision::injects),
            "{kind}: nothing fired: {ds:?}"
        );
        assert!(
            ds.iter().any(|d| d.cooldown > 0),
            "{kind}: no cooldown: {ds:?}"
        );
        // Epoch e+1 carries exactly the noise decided after epoch e (none for a `none` run).
        assert_eq!(straight.history[0].noise_applied.grad_sigma, 0.0);
        for (prev, next) in straight.history.iter().zip(&straight.history[1..]) {
            let d = prev.decision.as_ref().unwrap();
            let (g, w) = if kind == NoiseKind::None {
                (0.0, 0.0)
            } else {
                (d.grad_sigma, d.weight_sigma)
            };
            assert_eq!(
                (
                    next.noise_applied.grad_sigma,
                    next.noise_applied.weight_sigma
                ),
                (g, w),
                "{kind}"
            );
        }
        // Replaying the run's metrics with its settings gives its decisions.
        let observed = read_observations(&out.join("metrics.jsonl")).unwrap();
        assert_eq!(
            replay(&observed, cfg.noise_scheduler, cfg.schedule_length()).unwrap(),
            ds,
            "{kind}"
        );
        // The same through the command, reading the run's config.toml.
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_adanoise"))
            .args([
                "noise-replay",
                out.join("metrics.jsonl").to_str().unwrap(),
                "--config",
                out.join("config.toml").to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let replayed: Vec<Decision> = String::from_utf8(o.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(replayed, ds, "{kind}");

        // Interrupted after epoch 3 and resumed: same decisions, same numbers.
        let out_b = tmp.path().join(format!("{kind}-b"));
        train(
            &cfg,
            &out_b,
            &RunOptions {
                stop_after: Some(3),
                ..offline()
            },
        )
        .unwrap();
        let resumed = train(
            &cfg,
            &out_b,
            &RunOptions {
                resume: true,
                ..offline()
            },
        )
        .unwrap();
        assert_eq!(decisions(&resumed.history), ds, "{kind}");
        let losses = |h: &[EpochMetrics]| {
            h.iter()
                .map(|m| (m.train_loss, m.val_loss, m.grad_norm, m.weight_update))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            losses(&resumed.history),
            losses(&straight.history),
            "{kind}"
        );
    }
}

#[test]
fn noise_changes_training_and_none_does_not() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_binary_release(&data, 160, 40, 2).unwrap();
    let run = |kind: NoiseKind, name: &str| {
        train(&config(&data, kind), &tmp.path().join(name), &offline())
            .unwrap()
            .history
    };
    let none = run(NoiseKind::None, "none");
    let gaussian = run(NoiseKind::Gaussian, "gaussian");
    let first_noisy = gaussian
        .iter()
        .position(|m| m.noise_applied.grad_sigma > 0.0 || m.noise_applied.weight_sigma > 0.0)
        .unwrap();
    // Identical until noise is first injected, different from then on.
    assert_eq!(
        none[..first_noisy]
            .iter()
            .map(|m| m.train_loss)
            .collect::<Vec<_>>(),
        gaussian[..first_noisy]
            .iter()
            .map(|m| m.train_loss)
            .collect::<Vec<_>>()
    );
    assert_ne!(
        none[first_noisy].train_loss,
        gaussian[first_noisy].train_loss
    );
}

/// The weight-noise scale: `none` applies no weight noise while deciding exactly as
/// `absolute` does until weight noise would first land; `relative` records its scale; the
/// scale is part of the run, so a resume cannot change it.
#[test]
fn the_weight_noise_scale_is_applied_recorded_and_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_binary_release(&data, 160, 40, 2).unwrap();
    let with_scale = |scale: &str| {
        let mut cfg = config(&data, NoiseKind::Gaussian);
        cfg.weight_noise_scale = scale.parse().unwrap();
        cfg
    };
    let absolute = train(&with_scale("absolute"), &tmp.path().join("abs"), &offline()).unwrap();
    let none = train(&with_scale("none"), &tmp.path().join("none"), &offline()).unwrap();
    let relative = train(&with_scale("relative"), &tmp.path().join("rel"), &offline()).unwrap();
    // The first epoch that starts with weight noise under `absolute`.
    let first = absolute
        .history
        .iter()
        .position(|m| m.noise_applied.weight_sigma > 0.0)
        .expect("weight noise fired");
    // Identical up to it: the same metrics, the same decisions.
    assert_eq!(
        common::deterministic(&absolute.history[..first]),
        common::deterministic(&none.history[..first])
    );
    assert_eq!(
        absolute.history[first].noise_applied.weight_scale,
        Some(adanoise::noise::WeightNoiseScale::Absolute)
    );
    // `none`: the decision asked for weight noise, none was applied; gradient noise was.
    assert!(
        none.history[first - 1]
            .decision
            .as_ref()
            .unwrap()
            .weight_sigma
            > 0.0
    );
    assert!(
        none.history
            .iter()
            .all(|m| m.noise_applied.weight_sigma == 0.0)
    );
    assert!(
        none.history
            .iter()
            .any(|m| m.noise_applied.grad_sigma > 0.0)
    );
    assert_eq!(
        relative.history[first].noise_applied.weight_scale,
        Some(adanoise::noise::WeightNoiseScale::Relative)
    );
    assert_ne!(
        relative.history[first].train_loss,
        absolute.history[first].train_loss
    );
    let stored = std::fs::read_to_string(tmp.path().join("rel/config.toml")).unwrap();
    assert!(
        stored.contains("weight_noise_scale = \"relative\""),
        "{stored}"
    );

    // Stopped after one epoch, the run cannot be resumed with another scale.
    let out = tmp.path().join("stopped");
    let stop = RunOptions {
        stop_after: Some(1),
        offline: true,
        ..Default::default()
    };
    train(&with_scale("relative"), &out, &stop).unwrap();
    let resume = RunOptions {
        resume: true,
        offline: true,
        ..Default::default()
    };
    let err = format!(
        "{:#}",
        train(&with_scale("absolute"), &out, &resume).unwrap_err()
    );
    assert!(
        err.contains("weight_noise_scale: \"relative\" -> \"absolute\""),
        "{err}"
    );
}
