//! The scheduler against the reference streams of method-examples (flags and
//! cooldowns exactly, sigmas to 1e-12 relative), through the library and the
//! `noise-replay` command, and a run's own decisions replayed from its metrics.

use adanoise::noise::replay::{parse_observations, replay};
use adanoise::noise::{Decision, NoiseSchedulerConfig};
use std::process::Command;

const EXAMPLES: [(&str, &str, &str); 3] = [
    (
        "plateau",
        include_str!("fixtures/example-plateau.jsonl"),
        include_str!("fixtures/example-plateau.decisions.jsonl"),
    ),
    (
        "overfit",
        include_str!("fixtures/example-overfit.jsonl"),
        include_str!("fixtures/example-overfit.decisions.jsonl"),
    ),
    (
        "mixed",
        include_str!("fixtures/example-mixed.jsonl"),
        include_str!("fixtures/example-mixed.decisions.jsonl"),
    ),
];

fn rel_close(a: f64, b: f64) -> bool {
    if b == 0.0 {
        a == 0.0
    } else {
        ((a - b) / b).abs() <= 1e-12
    }
}

fn assert_same(got: &[Decision], want_text: &str, name: &str) {
    let want: Vec<Decision> = want_text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(got.len(), want.len(), "{name}");
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g.epoch, w.epoch, "{name}");
        assert_eq!(g.flags, w.flags, "{name} epoch {}", w.epoch);
        assert_eq!(g.cooldown, w.cooldown, "{name} epoch {}", w.epoch);
        assert!(
            rel_close(g.grad_sigma, w.grad_sigma),
            "{name} epoch {}: grad sigma {} vs {}",
            w.epoch,
            g.grad_sigma,
            w.grad_sigma
        );
        assert!(
            rel_close(g.weight_sigma, w.weight_sigma),
            "{name} epoch {}: weight sigma {} vs {}",
            w.epoch,
            g.weight_sigma,
            w.weight_sigma
        );
    }
}

#[test]
fn library_replay_reproduces_the_reference_decisions() {
    for (name, stream, decisions) in EXAMPLES {
        let observations = parse_observations(stream, name).unwrap();
        let got = replay(&observations, NoiseSchedulerConfig::default(), 300).unwrap();
        assert_same(&got, decisions, name);
    }
}

#[test]
fn command_replay_reproduces_the_reference_decisions() {
    let dir = tempfile::tempdir().unwrap();
    for (name, stream, decisions) in EXAMPLES {
        let path = dir.path().join(format!("{name}.jsonl"));
        std::fs::write(&path, stream).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_adanoise"))
            .args(["noise-replay", path.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got: Vec<Decision> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_same(&got, decisions, name);
    }
}

#[test]
fn changed_thresholds_change_the_decisions() {
    let (_, stream, _) = EXAMPLES[0];
    let observations = parse_observations(stream, "plateau").unwrap();
    let paper = replay(&observations, NoiseSchedulerConfig::default(), 300).unwrap();
    let later = NoiseSchedulerConfig {
        min_epochs_before_flag: 150,
        ..Default::default()
    };
    let shifted = replay(&observations, later, 300).unwrap();
    assert!(paper.iter().take(150).any(|d| !d.flags.is_empty()));
    assert!(shifted.iter().take(150).all(|d| d.flags.is_empty()));
}

#[test]
fn command_rejects_malformed_metrics_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.jsonl");
    std::fs::write(&path, "{\"epoch\": 1, \"train_loss\": 1, \"val_loss\": 1, \"grad_norm\": 1, \"weight_update\": 1}\n{\"epoch\": 2}\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_adanoise"))
        .args(["noise-replay", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2") && !err.contains("panicked"), "{err}");
}
