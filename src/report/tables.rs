//! The paper's Tables I-III from a set of runs: for each optimiser, model x noise
//! type at the best initial learning rate (by mean final validation accuracy),
//! with mean +- std over seeds, and what the paper did not give: the change
//! against the no-noise row and the number of noisy and cooldown epochs.

use super::collect::RunRecord;
use crate::models::ModelKind;
use crate::noise::NoiseKind;
use crate::optim::OptimizerKind;
use std::collections::BTreeMap;
use std::path::PathBuf;
use strum::VariantArray;

/// Mean, sample standard deviation and count.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Stat {
    pub mean: f64,
    pub std: f64,
    pub n: usize,
}

impl Stat {
    pub fn of(values: &[f64]) -> Stat {
        let n = values.len();
        let mean = values.iter().sum::<f64>() / n as f64;
        let std = if n > 1 {
            (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
        } else {
            0.0
        };
        Stat { mean, std, n }
    }
}

/// One row of a table: a model and noise type at its best learning rate.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    pub optimizer: OptimizerKind,
    pub model: ModelKind,
    pub noise: NoiseKind,
    /// Other options that tell apart runs of the same model/optimizer/noise (`key=value`).
    pub variant: String,
    pub lr: f64,
    pub train_acc: Stat,
    pub val_acc: Stat,
    pub train_loss: Stat,
    pub val_loss: Stat,
    /// Val accuracy minus that of the no-noise row (noisy rows only).
    pub delta_val_acc: Option<f64>,
    /// (val loss - train loss) minus the same gap of the no-noise row.
    pub delta_gap: Option<f64>,
    pub grad_noise_epochs: f64,
    pub weight_noise_epochs: f64,
    pub cooldown_epochs: f64,
    /// Every learning rate tried: (lr, mean final val accuracy, finished runs).
    pub lrs_tried: Vec<(f64, f64, usize)>,
    /// The runs behind the row (at the chosen learning rate).
    pub runs: Vec<PathBuf>,
}

/// All tables of a report.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Tables {
    pub by_optimizer: Vec<(OptimizerKind, Vec<Row>)>,
    /// Runs that are not finished (and so not in the tables), with their state.
    pub unfinished: Vec<(String, String)>,
}

/// The paper's row order: the largest model first.
const MODEL_ORDER: [ModelKind; 4] = [
    ModelKind::Resnet18,
    ModelKind::SimpleCnn,
    ModelKind::TinyCnn,
    ModelKind::BabyCnn,
];

/// The options that define a row besides model, optimizer, noise, lr and seed.
fn variant_of(run: &RunRecord) -> BTreeMap<String, String> {
    let table = toml::Table::try_from(&run.config).expect("a config serialises");
    let mut out = BTreeMap::new();
    flatten("", &table, &mut out);
    for key in [
        "model",
        "optimizer",
        "noise",
        "lr",
        "seed",
        "data_dir",
        "threads",
        "device",
    ] {
        out.remove(key);
    }
    out
}

fn flatten(prefix: &str, table: &toml::Table, out: &mut BTreeMap<String, String>) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) => flatten(&key, t, out),
            other => {
                out.insert(key, other.to_string());
            }
        }
    }
}

pub fn build(runs: &[RunRecord]) -> Tables {
    let mut tables = Tables::default();
    let variants: Vec<BTreeMap<String, String>> = runs.iter().map(variant_of).collect();
    // Keys whose value differs between runs label the variants.
    let mut differing: Vec<String> = Vec::new();
    if let Some(first) = variants.first() {
        for key in first.keys() {
            if variants.iter().any(|v| v.get(key) != first.get(key)) {
                differing.push(key.clone());
            }
        }
    }
    type Key = (usize, usize, usize, String);
    let mut groups: BTreeMap<Key, Vec<&RunRecord>> = BTreeMap::new();
    for (run, variant) in runs.iter().zip(&variants) {
        if !run.finished() {
            let state = run.summary.as_ref().map_or("not started".to_string(), |s| {
                format!("{:?} after {}/{} epochs", s.status, s.epochs_done, s.epochs).to_lowercase()
            });
            tables
                .unfinished
                .push((run.dir.display().to_string(), state));
            continue;
        }
        let label = differing
            .iter()
            .map(|k| format!("{k}={}", variant.get(k).map_or("-", |v| v.as_str())))
            .collect::<Vec<_>>()
            .join(", ");
        let c = &run.config;
        let key = (
            OptimizerKind::VARIANTS
                .iter()
                .position(|o| *o == c.optimizer)
                .unwrap_or(0),
            MODEL_ORDER.iter().position(|m| *m == c.model).unwrap_or(0),
            NoiseKind::VARIANTS
                .iter()
                .position(|n| *n == c.noise)
                .unwrap_or(0),
            label,
        );
        groups.entry(key).or_default().push(run);
    }
    let mut rows: Vec<Row> = groups
        .into_iter()
        .map(|((_, _, _, variant), runs)| best_lr_row(&runs, variant))
        .collect();
    // Deltas against the no-noise row of the same optimiser, model and variant.
    let baselines: Vec<Row> = rows
        .iter()
        .filter(|r| r.noise == NoiseKind::None)
        .cloned()
        .collect();
    for row in rows.iter_mut().filter(|r| r.noise != NoiseKind::None) {
        if let Some(base) = baselines.iter().find(|b| {
            b.optimizer == row.optimizer && b.model == row.model && b.variant == row.variant
        }) {
            row.delta_val_acc = Some(row.val_acc.mean - base.val_acc.mean);
            let gap = |r: &Row| r.val_loss.mean - r.train_loss.mean;
            row.delta_gap = Some(gap(row) - gap(base));
        }
    }
    for optimizer in OptimizerKind::VARIANTS {
        let mine: Vec<Row> = rows
            .iter()
            .filter(|r| r.optimizer == *optimizer)
            .cloned()
            .collect();
        if !mine.is_empty() {
            tables.by_optimizer.push((*optimizer, mine));
        }
    }
    rows.clear();
    tables
}

/// The row of a group at its best learning rate (highest mean final val accuracy;
/// the larger rate on an exact tie).
fn best_lr_row(runs: &[&RunRecord], variant: String) -> Row {
    let mut by_lr: BTreeMap<u64, Vec<&RunRecord>> = BTreeMap::new();
    for run in runs {
        by_lr.entry(run.config.lr.to_bits()).or_default().push(run);
    }
    let mean_val = |rs: &[&RunRecord]| {
        Stat::of(
            &rs.iter()
                .filter_map(|r| r.final_epoch())
                .map(|m| m.val_acc)
                .collect::<Vec<_>>(),
        )
        .mean
    };
    let lrs_tried: Vec<(f64, f64, usize)> = by_lr
        .iter()
        .map(|(lr, rs)| (f64::from_bits(*lr), mean_val(rs), rs.len()))
        .collect();
    let (best_lr, best_runs) = by_lr
        .iter()
        .max_by(|a, b| {
            mean_val(a.1)
                .total_cmp(&mean_val(b.1))
                .then(f64::from_bits(*a.0).total_cmp(&f64::from_bits(*b.0)))
        })
        .expect("a group has runs");
    let finals: Vec<_> = best_runs.iter().filter_map(|r| r.final_epoch()).collect();
    let stat = |f: fn(&crate::train::EpochMetrics) -> f64| {
        Stat::of(&finals.iter().map(|m| f(m)).collect::<Vec<_>>())
    };
    let noise: Vec<(usize, usize, usize)> = best_runs.iter().map(|r| r.noise_epochs()).collect();
    let avg = |f: fn(&(usize, usize, usize)) -> usize| {
        noise.iter().map(|n| f(n) as f64).sum::<f64>() / noise.len() as f64
    };
    let c = &best_runs[0].config;
    Row {
        optimizer: c.optimizer,
        model: c.model,
        noise: c.noise,
        variant,
        lr: f64::from_bits(*best_lr),
        train_acc: stat(|m| m.train_acc),
        val_acc: stat(|m| m.val_acc),
        train_loss: stat(|m| m.train_loss),
        val_loss: stat(|m| m.val_loss),
        delta_val_acc: None,
        delta_gap: None,
        grad_noise_epochs: avg(|n| n.0),
        weight_noise_epochs: avg(|n| n.1),
        cooldown_epochs: avg(|n| n.2),
        lrs_tried,
        runs: best_runs.iter().map(|r| r.dir.clone()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_is_mean_and_sample_std() {
        let s = Stat::of(&[0.8, 0.9]);
        assert!((s.mean - 0.85).abs() < 1e-12);
        assert!((s.std - 0.5f64.sqrt() * 0.1).abs() < 1e-12);
        assert_eq!(s.n, 2);
        assert_eq!(Stat::of(&[0.7]).std, 0.0);
    }
}
