//! What a controlled study needs: a held-out validation split (the scheduler
//! reads it, the test set is reported apart), the baseline noise policies with
//! their sigma at given steps, and the report's statistics over seeds (paired
//! differences and intervals against values worked out by hand, the shared
//! learning rate, diverged runs counted).

mod common;

use adanoise::data::synthetic::write_binary_release;
use adanoise::report::collect::RunRecord;
use adanoise::report::tables::{self, LrSelection};
use adanoise::train::{EpochMetrics, RunStatus, Summary, TrainConfig, train};
use common::{config_from, offline};
use std::path::{Path, PathBuf};

fn data_dir(root: &Path) -> PathBuf {
    let dir = root.join("data");
    write_binary_release(&dir, 240, 60, 2).unwrap();
    dir
}

/// A quick baby-cnn run; `extra` keys override the defaults here.
fn config(data: &Path, extra: &str) -> TrainConfig {
    config_from(
        "model = 'baby-cnn'\noptimizer = 'sgd-momentum'\nlr = 0.01\nepochs = 3\nbatch_size = 40\nseed = 3",
        data,
        extra,
    )
}

#[test]
fn a_validation_split_is_validated_on_and_the_test_set_reported_apart() {
    let tmp = tempfile::tempdir().unwrap();
    let data = data_dir(tmp.path());
    let split = train(
        &config(&data, "val_split = 40"),
        &tmp.path().join("split"),
        &offline(),
    )
    .unwrap();
    let plain = train(&config(&data, ""), &tmp.path().join("plain"), &offline()).unwrap();
    // 200 images trained on: 5 steps of 40 per epoch instead of 6.
    assert_eq!(split.history[0].steps, 5);
    assert_eq!(plain.history[0].steps, 6);
    for m in &split.history {
        let (loss, acc) = (m.test_loss.unwrap(), m.test_acc.unwrap());
        assert!(loss.is_finite() && (0.0..=1.0).contains(&acc), "{m:?}");
        assert_ne!(loss, m.val_loss, "validation and test are different images");
        // 40 held-out images: the accuracy is a multiple of 1/40.
        assert!(((m.val_acc * 40.0) - (m.val_acc * 40.0).round()).abs() < 1e-9);
        // 60 test images.
        assert!(((acc * 60.0) - (acc * 60.0).round()).abs() < 1e-9);
    }
    assert!(plain.history.iter().all(|m| m.test_loss.is_none()));
    // Other seeds hold out the same images: their first epoch starts from another
    // initialisation but validates on the same 40 (checked through the split itself).
    let a = adanoise::train::load_data(
        &config(&data, "val_split = 40\nseed = 1"),
        true,
        &mut adanoise::events::Silent,
    )
    .unwrap();
    let b = adanoise::train::load_data(
        &config(&data, "val_split = 40\nseed = 2"),
        true,
        &mut adanoise::events::Silent,
    )
    .unwrap();
    assert_eq!(a.val, b.val);
    assert_eq!(a.train, b.train);
    let c = adanoise::train::load_data(
        &config(&data, "val_split = 40\nsplit_seed = 99"),
        true,
        &mut adanoise::events::Silent,
    )
    .unwrap();
    assert_ne!(a.val, c.val);
}

#[test]
fn the_baseline_policies_inject_their_sigma_at_every_step() {
    let tmp = tempfile::tempdir().unwrap();
    let data = data_dir(tmp.path());
    let constant = train(
        &config(
            &data,
            "noise = 'gaussian'\nnoise_policy = 'constant'\nnoise_sigma = 0.004",
        ),
        &tmp.path().join("constant"),
        &offline(),
    )
    .unwrap();
    for m in &constant.history {
        assert_eq!(m.noise_applied.grad_sigma, 0.004, "{m:?}");
        assert_eq!(m.noise_applied.grad_sigma_end, None);
        assert_eq!(m.noise_applied.weight_sigma, 0.0);
    }
    let annealed = train(
        &config(
            &data,
            "noise = 'uniform'\nnoise_policy = 'annealed'\nanneal_eta = 0.02\nanneal_gamma = 0.5",
        ),
        &tmp.path().join("annealed"),
        &offline(),
    )
    .unwrap();
    // 6 steps per epoch: epoch e runs steps 6(e-1) .. 6e-1, sigma_t = sqrt(0.02 / (1+t)^0.5).
    let sigma = |t: f64| (0.02 / (1.0 + t).powf(0.5)).sqrt();
    for m in &annealed.history {
        let first = 6.0 * (m.epoch - 1) as f64;
        let applied = m.noise_applied.clone();
        assert!((applied.grad_sigma - sigma(first)).abs() < 1e-15, "{m:?}");
        assert!((applied.grad_sigma_end.unwrap() - sigma(first + 5.0)).abs() < 1e-15);
        assert_eq!(applied.weight_sigma, 0.0);
    }
    // The adaptive scheduler still decides and records under a baseline policy.
    assert!(annealed.history.iter().all(|m| m.decision.is_some()));
    // And the noise reaches the training: the losses differ from a run without it.
    let none = train(&config(&data, ""), &tmp.path().join("none"), &offline()).unwrap();
    assert_ne!(none.history[0].train_loss, constant.history[0].train_loss);
    assert_ne!(none.history[0].train_loss, annealed.history[0].train_loss);
}

/// A run record as a report reads it, with a chosen final epoch.
fn record(noise: &str, lr: f64, seed: u64, val_acc: f64, gap: f64, status: RunStatus) -> RunRecord {
    record_with(noise, lr, seed, val_acc, gap, status, "")
}

/// [`record`] with more config keys (`extra`, TOML lines), in its own directory.
fn record_with(
    noise: &str,
    lr: f64,
    seed: u64,
    val_acc: f64,
    gap: f64,
    status: RunStatus,
    extra: &str,
) -> RunRecord {
    let config = TrainConfig::from_table(
        format!(
            "model = 'tiny-cnn'\noptimizer = 'sgd'\nlr = {lr}\nseed = {seed}\nnoise = '{noise}'\nepochs = 2\n{extra}"
        )
        .parse()
        .unwrap(),
    )
    .unwrap();
    let line = format!(
        r#"{{"epoch": 2, "train_loss": 1.0, "train_acc": 0.5, "val_loss": {}, "val_acc": {val_acc}, "grad_norm": 1.0, "weight_update": 0.01, "lr": {lr}, "steps": 10, "seconds": 1.0, "images_per_s": 1.0}}"#,
        1.0 + gap
    );
    let last: EpochMetrics = serde_json::from_str(&line).unwrap();
    let mut first = last.clone();
    first.epoch = 1;
    let history = match status {
        RunStatus::Finished => vec![first, last],
        _ => vec![first],
    };
    let tag: String = extra
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    RunRecord {
        dir: PathBuf::from(format!("runs/{noise}{tag}-lr{lr}-s{seed}")),
        summary: Some(Summary::from_history(&history, 2, status, None)),
        config,
        history,
    }
}

#[test]
fn the_report_pairs_seeds_and_counts_what_did_not_finish() {
    use RunStatus::*;
    let runs = vec![
        // The baseline: lr 0.1 is best (0.60, 0.60, 0.61); lr 0.01 worse.
        record("none", 0.1, 0, 0.60, 0.10, Finished),
        record("none", 0.1, 1, 0.60, 0.12, Finished),
        record("none", 0.1, 2, 0.61, 0.11, Finished),
        record("none", 0.01, 0, 0.50, 0.10, Finished),
        // Gaussian at 0.1: diffs 0.02, 0.01, 0.03 (mean 0.02, sd 0.01).
        record("gaussian", 0.1, 0, 0.62, 0.05, Finished),
        record("gaussian", 0.1, 1, 0.61, 0.06, Finished),
        record("gaussian", 0.1, 2, 0.64, 0.07, Finished),
        // Gaussian at 0.01 is better on average but one seed diverged there.
        record("gaussian", 0.01, 0, 0.70, 0.05, Finished),
        record("gaussian", 0.01, 1, 0.0, 0.0, Diverged),
        record("gaussian", 0.01, 2, 0.0, 0.0, Running),
    ];
    let per_noise = tables::build(&runs, LrSelection::PerNoise);
    let rows = &per_noise.by_optimizer[0].1;
    let (base, noisy) = (&rows[0], &rows[1]);
    assert_eq!(base.lr, 0.1);
    // At 0.01 the finished seed has 0.70 but the diverged one counts as 0: (0.70 + 0) / 2
    // = 0.35 loses to 0.1's 0.6233.
    assert_eq!(noisy.lr, 0.1, "a diverged seed counts against its rate");
    let tried = noisy.lrs_tried.iter().find(|t| t.lr == 0.01).unwrap();
    assert_eq!(tried.mean_val_acc, Some(0.70));
    assert!((tried.score.unwrap() - 0.35).abs() < 1e-12, "{tried:?}");
    assert_eq!(
        (
            tried.counts.finished,
            tried.counts.diverged,
            tried.counts.unfinished
        ),
        (1, 1, 1)
    );
    assert_eq!(per_noise.unfinished.len(), 2);
    assert_eq!(
        noisy.not_finished.len(),
        2,
        "the row names its group's unfinished runs"
    );
    let md = adanoise::report::render::markdown(&per_noise);
    assert!(md.contains("(3 pairs)"), "{md}");

    let shared = tables::build(&runs, LrSelection::Shared);
    let noisy = &shared.by_optimizer[0].1[1];
    assert_eq!(noisy.lr, 0.1, "the baseline's rate");
    // By hand: differences 0.02, 0.01, 0.03: mean 0.02, sd 0.01, t(0.975, 2) = 4.3027,
    // half-width 4.3027 * 0.01 / sqrt(3) = 0.024841.
    let d = noisy.delta_val_acc.unwrap();
    assert_eq!(d.n, 3);
    assert!((d.mean - 0.02).abs() < 1e-12, "{d:?}");
    assert!((d.std - 0.01).abs() < 1e-12, "{d:?}");
    assert!((d.ci95.unwrap() - 0.024841).abs() < 1e-5, "{d:?}");
    // Gap differences: -0.05, -0.06, -0.04: mean -0.05.
    assert!((noisy.delta_gap.unwrap().mean + 0.05).abs() < 1e-12);
    // The validation accuracy's own interval: 0.6233 +- 4.3027 * 0.01528 / sqrt(3).
    let (lo, hi) = noisy.val_acc.interval().unwrap();
    let half = 4.302653 * (0.000233333f64).sqrt() / 3f64.sqrt();
    assert!((hi - lo - 2.0 * half).abs() < 1e-4, "{lo} {hi} {half}");
    let csv = adanoise::report::render::csv(&shared).unwrap();
    assert_eq!(csv.lines().count(), 3);
    assert!(csv.lines().next().unwrap().contains("delta_val_acc_ci95"));
    // The CSV names the runs that did not finish, as the Markdown does.
    assert!(csv.contains("diverged after 1/2 epochs"), "{csv}");
}

#[test]
fn a_rate_where_most_seeds_diverged_does_not_win_on_its_survivor() {
    use RunStatus::*;
    let mut runs = vec![record("none", 0.1, 0, 0.90, 0.1, Finished)];
    for seed in 1..5 {
        runs.push(record("none", 0.1, seed, 0.0, 0.0, Diverged));
    }
    for seed in 0..5 {
        runs.push(record("none", 0.01, seed, 0.60, 0.1, Finished));
    }
    let t = tables::build(&runs, LrSelection::PerNoise);
    let row = &t.by_optimizer[0].1[0];
    assert_eq!(row.lr, 0.01, "{:?}", row.lrs_tried);
    assert_eq!(row.val_acc.n, 5);
}

#[test]
fn one_seed_has_no_std_no_interval_and_no_significance_mark() {
    use RunStatus::*;
    let runs = vec![
        record("none", 0.1, 0, 0.60, 0.1, Finished),
        record("gaussian", 0.1, 0, 0.40, 0.1, Finished),
    ];
    let t = tables::build(&runs, LrSelection::PerNoise);
    let html = adanoise::report::render::html(&t, &runs).unwrap();
    assert!(html.contains("-0.2000 (1 pair)"), "the Δ is shown");
    assert!(
        !html.contains("class=\"neg\"") && !html.contains("class=\"pos\""),
        "a single pair has no interval: no colour"
    );
    let csv = adanoise::report::render::csv(&t).unwrap();
    let mut reader = csv::Reader::from_reader(csv.as_bytes());
    let headers = reader.headers().unwrap().clone();
    let column = headers.iter().position(|h| h == "val_acc_std").unwrap();
    for record in reader.records() {
        assert_eq!(&record.unwrap()[column], "", "no std for one seed");
    }
}

#[test]
fn a_baseline_made_twice_by_the_grid_counts_each_seed_once() {
    use RunStatus::*;
    // `noise = none` crossed with two policies: the same run twice per seed.
    let runs = vec![
        record_with("none", 0.1, 0, 0.60, 0.1, Finished, ""),
        record_with("none", 0.1, 1, 0.62, 0.1, Finished, ""),
        record_with("none", 0.1, 0, 0.60, 0.1, Finished, "noise_sigma = 0.05"),
        record_with("none", 0.1, 1, 0.62, 0.1, Finished, "noise_sigma = 0.05"),
        record("gaussian", 0.1, 0, 0.61, 0.1, Finished),
        record("gaussian", 0.1, 1, 0.64, 0.1, Finished),
    ];
    let t = tables::build(&runs, LrSelection::PerNoise);
    let rows = &t.by_optimizer[0].1;
    assert_eq!(rows.len(), 2, "one baseline row");
    assert_eq!(rows[0].val_acc.n, 2, "each seed once");
    assert_eq!(rows[0].duplicates.len(), 2);
    assert_eq!(rows[1].delta_val_acc.unwrap().n, 2);
    let md = adanoise::report::render::markdown(&t);
    assert!(md.contains("2 duplicate run(s)"), "{md}");
}

/// A copy of a run left beside it (the same config and seed), finished or not: the row
/// counts the finished one, whichever directory sorts first, and names the other.
#[test]
fn a_finished_run_is_never_set_aside_for_an_unfinished_copy() {
    use RunStatus::*;
    for copy_first in [true, false] {
        let finished = record("gaussian", 0.1, 0, 0.61, 0.1, Finished);
        let mut copy = record("gaussian", 0.1, 0, 0.30, 0.1, Running);
        copy.dir = PathBuf::from(if copy_first {
            "runs/a-copy"
        } else {
            "runs/z-copy"
        });
        let runs = vec![record("none", 0.1, 0, 0.60, 0.1, Finished), copy, finished];
        let t = tables::build(&runs, LrSelection::PerNoise);
        let rows = &t.by_optimizer[0].1;
        let noisy = rows.iter().find(|r| r.noise.name() == "gaussian").unwrap();
        assert_eq!(noisy.val_acc.n, 1, "copy first: {copy_first}");
        assert_eq!(noisy.val_acc.mean, 0.61);
        assert_eq!(noisy.at_lr.finished, 1);
        assert_eq!(noisy.at_lr.unfinished, 0, "the copy is not this row's seed");
        assert_eq!(noisy.duplicates.len(), 1);
        assert!(
            noisy.duplicates[0].ends_with("copy"),
            "{:?}",
            noisy.duplicates
        );
        assert!((noisy.delta_val_acc.unwrap().mean - 0.01).abs() < 1e-12);
        assert!(t.unfinished.is_empty(), "{:?}", t.unfinished);
        let md = adanoise::report::render::markdown(&t);
        assert!(
            md.contains("1 duplicate run(s) of a seed already counted left out (runs/"),
            "{md}"
        );
    }
}

#[test]
fn every_format_names_what_did_not_finish_and_mixed_validation_is_said() {
    use RunStatus::*;
    let runs = vec![
        record("none", 0.1, 0, 0.60, 0.1, Finished),
        record_with("none", 0.1, 0, 0.60, 0.1, Finished, "val_split = 10"),
        record("uniform", 0.1, 0, 0.0, 0.0, Diverged),
        record_with(
            "gaussian",
            0.1,
            0,
            0.5,
            0.1,
            Finished,
            "noise_policy = 'constant'",
        ),
    ];
    let t = tables::build(&runs, LrSelection::PerNoise);
    let md = adanoise::report::render::markdown(&t);
    assert!(
        md.contains("No finished run for sgd / tiny-cnn / uniform"),
        "{md}"
    );
    assert!(
        md.contains("val_split=0 are validated on the test set"),
        "{md}"
    );
    let csv = adanoise::report::render::csv(&t).unwrap();
    assert!(csv.contains("no finished run at any rate"), "{csv}");
    assert!(csv.contains("diverged after 1/2 epochs"), "{csv}");
    let latex = adanoise::report::render::latex(&t);
    assert!(
        latex.contains("no finished run for sgd / tiny-cnn / uniform"),
        "{latex}"
    );
    assert!(latex.contains("diverged after 1/2 epochs"), "{latex}");
    // The constant policy follows no decision: no cooldown count for it.
    let constant = t.by_optimizer[0]
        .1
        .iter()
        .find(|r| r.policy.starts_with("constant"))
        .unwrap();
    assert_eq!(constant.cooldown_epochs, None);
}

/// `--against adaptive`: every row's Δ is taken against the adaptive row of its model and
/// optimiser, paired by seed; the adaptive row has none; an unknown policy is refused with
/// the policies there are.
#[test]
fn deltas_can_be_taken_against_the_adaptive_row() {
    use RunStatus::*;
    let anti = "noise_policy = 'anti-pgd'";
    let runs = vec![
        record("none", 0.1, 0, 0.60, 0.1, Finished),
        record("none", 0.1, 1, 0.62, 0.1, Finished),
        record("gaussian", 0.1, 0, 0.55, 0.1, Finished),
        record("gaussian", 0.1, 1, 0.58, 0.1, Finished),
        record_with("gaussian", 0.1, 0, 0.65, 0.1, Finished, anti),
        record_with("gaussian", 0.1, 1, 0.66, 0.1, Finished, anti),
    ];
    let mut t = tables::build(&runs, LrSelection::PerNoise);
    let unknown = tables::deltas_against(&mut t, "langevin").unwrap_err();
    assert!(format!("{unknown}").contains("adaptive"), "{unknown}");
    tables::deltas_against(&mut t, "adaptive").unwrap();
    let rows = &t.by_optimizer[0].1;
    let find = |p: &str| rows.iter().find(|r| r.policy.starts_with(p)).unwrap();
    let by_hand = |a: [f64; 2], b: [f64; 2]| ((a[0] - b[0]) + (a[1] - b[1])) / 2.0;
    let base = rows.iter().find(|r| r.policy.is_empty()).unwrap();
    let d = base.delta_val_acc.unwrap();
    assert!(
        (d.mean - by_hand([0.60, 0.62], [0.55, 0.58])).abs() < 1e-12,
        "{d:?}"
    );
    let d = find("anti-pgd").delta_val_acc.unwrap();
    assert!(
        (d.mean - by_hand([0.65, 0.66], [0.55, 0.58])).abs() < 1e-12,
        "{d:?}"
    );
    assert_eq!(d.n, 2);
    assert!(find("adaptive").delta_val_acc.is_none());
    let md = adanoise::report::render::markdown(&t);
    assert!(md.contains("--against adaptive"), "{md}");
}
