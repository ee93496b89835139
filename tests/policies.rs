//! The field's noise policies beside the adaptive one (anti-PGD, perturbed gradient
//! descent, Langevin dynamics, label noise, shrink and perturb) and label smoothing, in
//! real training on the Burn engine: each acts where its rule says, is recorded in every
//! epoch's record, resumes bit-identically after an interruption in the middle of an
//! epoch, is refused with a sentence where it would inject nothing, and gets its own row
//! in the report.

mod common;

use adanoise::data::synthetic::write_binary_release;
use adanoise::train::{RunOptions, TrainConfig, train};
use common::{adanoise, config_from, deterministic, offline, ok};
use std::path::Path;

/// A short noisy run of `policy` lines (TOML) on synthetic data: 3 epochs of 4 steps.
fn config(data: &Path, policy: &str) -> TrainConfig {
    config_from(
        "model = 'baby-cnn'\noptimizer = 'sgd-momentum'\nlr = 0.02\nepochs = 3\nbatch_size = 20\nseed = 5\nthreads = 1",
        data,
        policy,
    )
}

fn data(root: &Path) -> std::path::PathBuf {
    let data = root.join("data");
    write_binary_release(&data, 80, 20, 4).unwrap();
    data
}

const POLICIES: [&str; 6] = [
    "noise = 'gaussian'\nnoise_policy = 'anti-pgd'\nanti_pgd_sigma = 0.01",
    "noise = 'uniform'\nnoise_policy = 'perturbed'\nperturb_threshold = 1e9\nperturb_interval = 5\nperturb_radius = 0.5",
    "noise = 'gaussian'\nnoise_policy = 'langevin'\nlangevin_temperature = 1e-4",
    "noise = 'uniform'\nnoise_policy = 'label-noise'\nlabel_noise = 0.3",
    "noise = 'gaussian'\nnoise_policy = 'shrink-perturb'\nshrink_every = 1\nshrink_factor = 0.8\nshrink_sigma = 0.01",
    "noise = 'none'\nlabel_smoothing = 0.1",
];

/// Every policy, stopped in the middle of an epoch and resumed, records exactly what an
/// uninterrupted run records: the draws come from seeds of the run and the step, and the
/// perturbed policy's last perturbation is checkpointed with the epoch's sums.
#[test]
fn every_policy_resumes_bit_identically_from_the_middle_of_an_epoch() {
    let tmp = tempfile::tempdir().unwrap();
    let data = data(tmp.path());
    for (i, policy) in POLICIES.iter().enumerate() {
        let config = config(&data, policy);
        let straight = train(
            &config,
            &tmp.path().join(format!("straight{i}")),
            &offline(),
        )
        .unwrap()
        .history;
        let out = tmp.path().join(format!("stopped{i}"));
        let stopped = train(
            &config,
            &out,
            &RunOptions {
                stop_at_step: Some(6),
                ..offline()
            },
        )
        .unwrap();
        assert!(stopped.interrupted, "{policy}");
        let resumed = train(
            &config,
            &out,
            &RunOptions {
                resume: true,
                ..offline()
            },
        )
        .unwrap()
        .history;
        assert_eq!(
            deterministic(&resumed),
            deterministic(&straight),
            "{policy}"
        );
        let applied = |h: &[adanoise::train::EpochMetrics]| {
            h.iter()
                .map(|m| m.noise_applied.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(applied(&resumed), applied(&straight), "{policy}");
        // The noise moved the run away from the same run without it.
        let quiet = config_from(
            "model = 'baby-cnn'\noptimizer = 'sgd-momentum'\nlr = 0.02\nepochs = 3\nbatch_size = 20\nseed = 5\nthreads = 1",
            &data,
            "",
        );
        let plain = train(&quiet, &tmp.path().join(format!("plain{i}")), &offline())
            .unwrap()
            .history;
        assert_ne!(
            straight[2].train_loss, plain[2].train_loss,
            "{policy} changed nothing"
        );
    }
}

#[test]
fn each_policy_records_what_it_applied() {
    let tmp = tempfile::tempdir().unwrap();
    let data = data(tmp.path());
    let run = |i: usize| {
        train(
            &config(&data, POLICIES[i]),
            &tmp.path().join(format!("r{i}")),
            &offline(),
        )
        .unwrap()
        .history
    };
    // Perturbed, with a threshold above every norm: steps 0, 5, 10 of the 12.
    let h = run(1);
    let fired: Vec<u64> = h
        .iter()
        .flat_map(|m| m.noise_applied.perturbed_steps.clone().unwrap())
        .collect();
    assert_eq!(fired, vec![0, 5, 10]);
    assert_eq!(h[0].noise_applied.perturbed_steps, Some(vec![0]));
    assert_eq!(h[1].noise_applied.perturbed_steps, Some(vec![5]));
    assert_eq!(h[2].noise_applied.perturbed_steps, Some(vec![10]));
    // Anti-PGD and Langevin: weight noise after every step, Langevin's following the LR.
    let h = run(0);
    assert!(
        h.iter()
            .all(|m| m.noise_applied.step_weight_sigma == Some(0.01))
    );
    let h = run(2);
    let first = h[0].noise_applied.step_weight_sigma.unwrap();
    let schedule = config(&data, POLICIES[2]).lr_schedule(4);
    assert!((first - (2.0 * schedule.lr_at(0) * 1e-4).sqrt()).abs() < 1e-15);
    assert_eq!(h[0].noise_applied.grad_sigma, 0.0, "no gradient noise");
    // Label noise: its probability, every epoch.
    let h = run(3);
    assert!(h.iter().all(|m| m.noise_applied.label_noise == Some(0.3)));
    // Shrink and perturb every epoch after the first.
    let h = run(4);
    let shrunk: Vec<Option<f64>> = h.iter().map(|m| m.noise_applied.shrink).collect();
    assert_eq!(shrunk, vec![None, Some(0.8), Some(0.8)]);
    assert_eq!(h[1].noise_applied.weight_sigma, 0.01);
    // The weight update of a shrunk epoch includes the shrink (measured from its start).
    assert!(h[1].weight_update > 0.1, "{}", h[1].weight_update);
}

/// The recorded training loss is plain cross-entropy on the true labels whatever the run
/// trained on, so rows stay comparable: under label smoothing the first step's recorded
/// loss is the plain run's.
#[test]
fn the_recorded_loss_is_plain_cross_entropy_on_the_true_labels() {
    let tmp = tempfile::tempdir().unwrap();
    let data = data(tmp.path());
    let one_step = |extra: &str, name: &str| {
        let mut config = config(&data, extra);
        config.epochs = 1;
        config.batch_size = 80;
        train(&config, &tmp.path().join(name), &offline())
            .unwrap()
            .history[0]
            .clone()
    };
    let plain = one_step("", "plain");
    let smoothed = one_step("label_smoothing = 0.2", "smoothed");
    // One step: the loss is taken before the update, on the same weights and batch.
    assert_eq!(smoothed.train_loss, plain.train_loss);
    assert_eq!(smoothed.train_acc, plain.train_acc);
    assert_ne!(
        smoothed.val_loss, plain.val_loss,
        "smoothing changed the update"
    );
    let noisy = one_step(
        "noise = 'uniform'\nnoise_policy = 'label-noise'\nlabel_noise = 0.5",
        "noisy",
    );
    assert_eq!(noisy.train_loss, plain.train_loss);
    assert_ne!(
        noisy.val_loss, plain.val_loss,
        "label noise changed the update"
    );
}

/// PyTorch's label smoothing, by hand: `(1 - eps) CE + eps mean_k(-log p_k)`.
#[test]
fn label_smoothing_is_pytorchs() {
    use burn::nn::loss::CrossEntropyLossConfig;
    use burn::tensor::{Device, Int, Tensor, TensorData};
    let device = Device::flex();
    let logits = [[2.0f32, 0.5, -1.0], [0.1, 0.2, 0.3]];
    let labels = [0i64, 2];
    let eps = 0.3;
    let t = Tensor::<2>::from_data(TensorData::from(logits), &device);
    let y = Tensor::<1, Int>::from_data(TensorData::from(labels), &device);
    let loss = CrossEntropyLossConfig::new()
        .with_smoothing(Some(eps as f32))
        .init(&device)
        .forward(t, y)
        .into_scalar::<f64>();
    let mut want = 0.0;
    for (row, label) in logits.iter().zip(labels) {
        let max = row.iter().fold(f64::MIN, |m, v| m.max(*v as f64));
        let sum: f64 = row.iter().map(|v| (*v as f64 - max).exp()).sum();
        let logp: Vec<f64> = row.iter().map(|v| *v as f64 - max - sum.ln()).collect();
        let ce = -logp[label as usize];
        let uniform = -logp.iter().sum::<f64>() / 3.0;
        want += (1.0 - eps) * ce + eps * uniform;
    }
    want /= 2.0;
    assert!((loss - want).abs() < 1e-6, "{loss} vs {want}");
}

#[test]
fn policies_that_would_inject_nothing_are_refused_with_a_sentence() {
    let tmp = tempfile::tempdir().unwrap();
    let data = data(tmp.path());
    let d = data.to_str().unwrap();
    let base = [
        "train",
        "--model",
        "baby-cnn",
        "--optimizer",
        "sgd",
        "--lr",
        "0.01",
        "--epochs",
        "2",
        "--offline",
        "--data-dir",
        d,
    ];
    for (extra, why) in [
        (
            vec!["--noise", "gaussian", "--noise-policy", "label-noise"],
            "--noise uniform",
        ),
        (
            vec![
                "--noise",
                "gaussian",
                "--noise-policy",
                "anti-pgd",
                "--anti-pgd-sigma",
                "0",
            ],
            "--anti-pgd-sigma",
        ),
        (
            vec!["--noise", "gaussian", "--noise-policy", "shrink-perturb"],
            "--shrink-every",
        ),
        (
            vec!["--noise", "none", "--noise-policy", "langevin"],
            "--noise is none",
        ),
        (vec!["--label-smoothing", "1"], "--label-smoothing"),
        (vec!["--label-noise", "1.5"], "probability"),
    ] {
        let mut args = base.to_vec();
        args.extend(extra.iter());
        let out = tmp.path().join("refused");
        args.extend(["--out", out.to_str().unwrap()]);
        let o = adanoise(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{extra:?}");
        assert!(err.contains(why), "{extra:?}: {err}");
        assert!(
            !out.join("config.toml").exists(),
            "nothing written: {extra:?}"
        );
    }
}

/// A sweep crossing policies gives one report row per policy, labelled with its
/// parameters, label smoothing among them, each with its Δ against no noise.
#[test]
fn every_policy_has_its_row_in_the_report() {
    let tmp = tempfile::tempdir().unwrap();
    let data = data(tmp.path());
    let file = tmp.path().join("policies.toml");
    let out = tmp.path().join("out");
    std::fs::write(
        &file,
        format!(
            "out = '{}'\n[base]\nmodel = 'baby-cnn'\noptimizer = 'sgd'\nlr = 0.02\nepochs = 2\nbatch_size = 40\n\
             data_dir = '{}'\nshrink_every = 1\n\
             [grid]\nnoise = [\n  {{ noise = 'none' }},\n  {{ noise = 'none', label_smoothing = 0.1 }},\n\
               {{ noise = 'gaussian', noise_policy = 'anti-pgd' }},\n  {{ noise = 'uniform', noise_policy = 'perturbed' }},\n\
               {{ noise = 'gaussian', noise_policy = 'langevin' }},\n  {{ noise = 'uniform', noise_policy = 'label-noise' }},\n\
               {{ noise = 'gaussian', noise_policy = 'shrink-perturb' }},\n]\nseed = [0, 1]\n",
            out.display(),
            data.display()
        ),
    )
    .unwrap();
    ok(&adanoise(&[
        "sweep",
        file.to_str().unwrap(),
        "--workers",
        "2",
    ]));
    let md = ok(&adanoise(&["report", out.to_str().unwrap()]));
    for label in [
        "| baby-cnn | none |",
        "| baby-cnn | none, label smoothing 0.1 |",
        "| baby-cnn | gaussian, anti-pgd sigma 0.001 |",
        "| baby-cnn | uniform, perturbed r 1 at norm <= 1, 400 steps apart |",
        "| baby-cnn | gaussian, langevin T 2e-5 |",
        "| baby-cnn | uniform, label noise p 0.1 |",
        "| baby-cnn | gaussian, shrink-perturb every 1 x0.4 + 0.001 |",
    ] {
        let row = md
            .lines()
            .find(|l| l.starts_with(label))
            .unwrap_or_else(|| panic!("no row {label}:\n{md}"));
        if label != "| baby-cnn | none |" {
            assert!(row.contains("(2 pairs)"), "{row}");
        }
    }
}
