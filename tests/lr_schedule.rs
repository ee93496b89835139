//! The schedule against the reference values of method-examples (every epoch
//! start of the paper's 300-epoch, lr 1e-3, 391-steps-per-epoch schedule), and
//! the `lr-schedule` command's CSV.

mod common;

use adanoise::schedule::CosineRestartsConfig;

#[test]
fn every_reference_epoch_start_matches() {
    let text = include_str!("fixtures/lr-paper-epoch-starts.csv");
    let config = CosineRestartsConfig::paper(1e-3, 300, 391);
    config.validate().unwrap();
    let mut rows = 0;
    for line in text.lines().skip(1) {
        let fields: Vec<&str> = line.split(',').collect();
        let step: u64 = fields[0].parse().unwrap();
        let epoch: u64 = fields[1].parse().unwrap();
        let want: f64 = fields[2].parse().unwrap();
        assert_eq!(step, epoch * 391);
        let got = config.lr_at(step);
        assert!(
            ((got - want) / want).abs() < 1e-9,
            "step {step}: got {got:e}, want {want:e}"
        );
        rows += 1;
    }
    assert_eq!(rows, 300);
}

/// Runs `adanoise lr-schedule` with the given options.
fn lr_schedule(options: &str) -> std::process::Output {
    let args: Vec<&str> = std::iter::once("lr-schedule")
        .chain(options.split_whitespace())
        .collect();
    common::adanoise(&args)
}

#[test]
fn command_prints_one_row_per_step() {
    let out = lr_schedule("--epochs 4 --steps-per-epoch 3 --lr-max 0.1 --restart-epochs 2");
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "step,epoch,lr");
    assert_eq!(lines.len(), 1 + 12);
    assert_eq!(lines[1], "0,0,1.000000000000e-1");
    assert!(lines[7].starts_with("6,2,"));
    // At least 10 significant digits.
    let mantissa = lines[2]
        .split(',')
        .nth(2)
        .unwrap()
        .split('e')
        .next()
        .unwrap();
    assert!(mantissa.len() >= 11, "{mantissa}");
}

#[test]
fn command_rejects_lr_min_above_lr_max() {
    let out = lr_schedule("--epochs 4 --steps-per-epoch 3 --lr-max 0.001 --lr-min 0.01");
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("lr_min") && !err.contains("panicked"), "{err}");
}
