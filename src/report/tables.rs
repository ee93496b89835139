//! The study's Tables I-III from a set of runs: for each optimiser, one row per
//! model, noise type and noise policy at its chosen learning rate, with the
//! statistics over seeds (`docs/method.md`, section 10). Beyond the study: the
//! paired change against the no-noise row, noise and cooldown epochs, and the
//! runs that diverged or did not finish, counted per row.

use super::collect::RunRecord;
use super::stats::{Stat, paired};
use crate::models::ModelKind;
use crate::noise::NoiseKind;
use crate::optim::OptimizerKind;
use crate::train::{EpochMetrics, RunStatus};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use strum::VariantArray;

/// How each row's learning rate is chosen among those tried.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, strum::Display, Serialize,
)]
#[strum(serialize_all = "kebab-case")]
pub enum LrSelection {
    /// Each row its own best rate (the study's way).
    #[default]
    PerNoise,
    /// The rate best for the no-noise row of the same model and optimiser, for every row
    /// of that pair, so that noisy rows are compared at the baseline's rate.
    Shared,
}

/// How many runs of a row finished, diverged, or are unfinished (running or stopped).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Finished all their epochs.
    pub finished: usize,
    /// Stopped because the loss became NaN or infinite.
    pub diverged: usize,
    /// Running, interrupted, or not started.
    pub unfinished: usize,
}

impl Counts {
    fn of(runs: &[&RunRecord]) -> Self {
        let mut c = Counts::default();
        for run in runs {
            match run.summary.as_ref().map(|s| s.status) {
                Some(RunStatus::Finished) => c.finished += 1,
                Some(RunStatus::Diverged) => c.diverged += 1,
                _ => c.unfinished += 1,
            }
        }
        c
    }

    /// All runs counted.
    pub fn total(&self) -> usize {
        self.finished + self.diverged + self.unfinished
    }
}

/// One learning rate tried for a row.
#[derive(Debug, Clone, Serialize)]
pub struct LrTried {
    /// The initial learning rate.
    pub lr: f64,
    /// Mean final validation accuracy of its finished runs.
    pub mean_val_acc: Option<f64>,
    /// What the rate is ranked by: the mean final validation accuracy over its finished
    /// and diverged seeds, a diverged seed counting as 0 (none without a finished seed).
    pub score: Option<f64>,
    /// Its runs by status.
    pub counts: Counts,
}

/// One row of a table: a model, noise type and policy at its chosen learning rate.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// The optimiser.
    pub optimizer: OptimizerKind,
    /// The model.
    pub model: ModelKind,
    /// The model's name: the study's model's, or that of a model trained by the user's own
    /// code (`model = "other"`).
    pub model_name: String,
    /// The noise distribution.
    pub noise: NoiseKind,
    /// The noise policy, for noisy rows (`adaptive`, `constant 0.01`, ...).
    pub policy: String,
    /// Other options that tell apart runs of the same model/optimizer/noise (`key=value`).
    pub variant: String,
    /// The chosen learning rate.
    pub lr: f64,
    /// Final training accuracy over the finished seeds at `lr`.
    pub train_acc: Stat,
    /// Final validation accuracy.
    pub val_acc: Stat,
    /// Final training loss.
    pub train_loss: Stat,
    /// Final validation loss.
    pub val_loss: Stat,
    /// Final test accuracy, when the runs held out a validation split.
    pub test_acc: Option<Stat>,
    /// Validation accuracy minus the no-noise row's, paired by seed (noisy rows only).
    pub delta_val_acc: Option<Stat>,
    /// (val loss - train loss) minus the no-noise row's, paired by seed.
    pub delta_gap: Option<Stat>,
    /// Epochs with gradient noise, per run (mean over seeds).
    pub grad_noise_epochs: f64,
    /// Epochs with weight noise, per run.
    pub weight_noise_epochs: f64,
    /// Epochs suppressed by a cooldown, per run; none for a baseline policy, whose noise
    /// no cooldown changes.
    pub cooldown_epochs: Option<f64>,
    /// The runs at `lr`, by status.
    pub at_lr: Counts,
    /// Every learning rate tried.
    pub lrs_tried: Vec<LrTried>,
    /// Why `lr` is not the shared one, when `--lr-selection shared` could not apply.
    pub note: Option<String>,
    /// Runs of a seed at `lr` left out for a more complete run of the same seed (identical
    /// runs a grid made twice, e.g. `noise = none` under two settings that only matter
    /// with noise, or a copy of a run beside it): their directories, not counted.
    pub duplicates: Vec<String>,
    /// Every run of the row's group (any rate) that did not finish, with its state.
    pub not_finished: Vec<(String, String)>,
    /// The finished runs behind the row.
    pub runs: Vec<PathBuf>,
    /// (seed, final epoch) of the finished runs behind the row, for paired differences.
    #[serde(skip)]
    pub seeds: Vec<(u64, EpochMetrics)>,
}

/// A group of runs whose rows could not be computed: no run finished at any rate.
#[derive(Debug, Clone, Serialize)]
pub struct EmptyGroup {
    /// `optimizer / model / noise (policy)`.
    pub label: String,
    /// The optimiser.
    pub optimizer: OptimizerKind,
    /// The model.
    pub model: ModelKind,
    /// The model's name.
    pub model_name: String,
    /// The noise distribution.
    pub noise: NoiseKind,
    /// The noise policy, for noisy runs.
    pub policy: String,
    /// What else sets the group apart (`key=value`).
    pub variant: String,
    /// Its runs by status.
    pub counts: Counts,
    /// Its runs, with their state.
    pub runs: Vec<(String, String)>,
}

/// Which images the rows' runs validated on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub enum Validation {
    /// The test set, as in the study (no run held out a split).
    #[default]
    TestSet,
    /// Images held out of the training set (`--val-split`), for every run.
    HeldOut,
    /// Some runs held out a split, others validated on the test set.
    Mixed,
}

/// All tables of a report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Tables {
    /// How rows chose their learning rate.
    pub selection: LrSelection,
    /// Whether any run held out a validation split (then the test set is a column).
    pub held_out: bool,
    /// Which images the runs validated on.
    pub validation: Validation,
    /// The rows of each optimiser, in the study's order.
    pub by_optimizer: Vec<(OptimizerKind, Vec<Row>)>,
    /// Groups with no finished run.
    pub empty: Vec<EmptyGroup>,
    /// Runs that are not finished, with their state.
    pub unfinished: Vec<(String, String)>,
    /// The policy the Δ columns are taken against (`--against`); `None` for the no-noise row.
    pub against: Option<String>,
}

/// The study's row order: the largest model first.
const MODEL_ORDER: [ModelKind; 5] = [
    ModelKind::Resnet18,
    ModelKind::SimpleCnn,
    ModelKind::TinyCnn,
    ModelKind::BabyCnn,
    ModelKind::Other,
];

/// Keys that define a row by themselves or vary within it (seeds), or say where a run ran.
const NOT_VARIANTS: [&str; 25] = [
    "model",
    "model_name",
    "optimizer",
    "noise",
    "noise_policy",
    "weight_noise_scale",
    "noise_sigma",
    "anneal_eta",
    "anneal_gamma",
    "anti_pgd_sigma",
    "perturb_threshold",
    "perturb_interval",
    "perturb_radius",
    "langevin_temperature",
    "label_noise",
    "shrink_every",
    "shrink_factor",
    "shrink_sigma",
    "label_smoothing",
    "lr",
    "seed",
    "data_dir",
    "threads",
    "device",
    "data_placement",
];

fn variant_of(run: &RunRecord) -> BTreeMap<String, String> {
    let table = toml::Table::try_from(&run.config).expect("a config serialises");
    let mut out = BTreeMap::new();
    flatten("", &table, &mut out);
    for key in NOT_VARIANTS {
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

/// What sets a run's row apart: optimiser, model (its position, then its name), noise,
/// policy (noisy runs only), variant.
type GroupKey = (usize, usize, String, usize, String, String);

/// What sets a row apart besides its noise type: the policy (noisy runs only) and label
/// smoothing (`label smoothing 0.1`); empty for a run without either, the baseline.
fn policy_label(run: &RunRecord) -> String {
    let mut parts = Vec::new();
    if run.config.noise != NoiseKind::None {
        parts.push(run.config.policy().label());
    }
    if run.config.label_smoothing > 0.0 {
        parts.push(format!(
            "label smoothing {}",
            adanoise_core::formulas::compact(run.config.label_smoothing)
        ));
    }
    parts.join(", ")
}

/// The variant labels: the keys whose values differ between runs.
fn variant_labels(runs: &[RunRecord]) -> Vec<String> {
    let variants: Vec<BTreeMap<String, String>> = runs.iter().map(variant_of).collect();
    let Some(first) = variants.first() else {
        return Vec::new();
    };
    let mut keys: Vec<&String> = variants.iter().flat_map(|v| v.keys()).collect();
    keys.sort();
    keys.dedup();
    let differing: Vec<&String> = keys
        .into_iter()
        .filter(|k| variants.iter().any(|v| v.get(*k) != first.get(*k)))
        .collect();
    variants
        .iter()
        .map(|v| {
            differing
                .iter()
                .map(|k| format!("{k}={}", v.get(*k).map_or("-", |x| x.as_str())))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .collect()
}

fn group_key(run: &RunRecord, variant: String) -> GroupKey {
    let c = &run.config;
    fn position<T: PartialEq>(all: &[T], x: T) -> usize {
        all.iter().position(|y| *y == x).unwrap_or(0)
    }
    (
        position(OptimizerKind::VARIANTS, c.optimizer),
        position(&MODEL_ORDER, c.model),
        c.model_label(),
        position(NoiseKind::VARIANTS, c.noise),
        policy_label(run),
        variant,
    )
}

/// Builds the tables of `runs`, choosing learning rates as `selection` says.
pub fn build(runs: &[RunRecord], selection: LrSelection) -> Tables {
    let held_out = runs.iter().filter(|r| r.config.val_split > 0).count();
    let mut tables = Tables {
        selection,
        held_out: held_out > 0,
        validation: match held_out {
            0 => Validation::TestSet,
            n if n == runs.len() => Validation::HeldOut,
            _ => Validation::Mixed,
        },
        ..Default::default()
    };
    let mut all: BTreeMap<GroupKey, Vec<&RunRecord>> = BTreeMap::new();
    for (run, variant) in runs.iter().zip(variant_labels(runs)) {
        all.entry(group_key(run, variant)).or_default().push(run);
    }
    let mut groups: BTreeMap<GroupKey, (Vec<&RunRecord>, Vec<&RunRecord>)> = BTreeMap::new();
    for (key, runs) in all {
        let (kept, left_out) = one_run_per_seed(&runs);
        for run in kept.iter().filter(|r| !r.finished()) {
            tables
                .unfinished
                .push((run.dir.display().to_string(), run.state()));
        }
        groups.insert(key, (kept, left_out));
    }
    let mut entries: Vec<(&[&RunRecord], Option<Row>)> = Vec::new();
    for (key, (runs, _)) in &groups {
        let row = per_noise_row(runs).map(|mut row| {
            row.variant = key.5.clone();
            row
        });
        if row.is_none() {
            let c = &runs[0].config;
            tables.empty.push(EmptyGroup {
                label: group_label(runs[0]),
                optimizer: c.optimizer,
                model: c.model,
                model_name: c.model_label(),
                noise: c.noise,
                policy: key.4.clone(),
                variant: key.5.clone(),
                counts: Counts::of(runs),
                runs: runs
                    .iter()
                    .map(|r| (r.dir.display().to_string(), r.state()))
                    .collect(),
            });
        }
        entries.push((runs, row));
    }
    if selection == LrSelection::Shared {
        share_baseline_lr(&mut entries);
    }
    let left_out = groups.values().map(|(_, left_out)| left_out);
    let mut rows: Vec<Row> = entries
        .into_iter()
        .zip(left_out)
        .filter_map(|((_, row), left_out)| {
            row.map(|mut row| {
                row.duplicates = left_out
                    .iter()
                    .filter(|r| r.config.lr == row.lr)
                    .map(|r| r.dir.display().to_string())
                    .collect();
                row
            })
        })
        .collect();
    add_deltas(&mut rows);
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
    tables
}

fn group_label(run: &RunRecord) -> String {
    let c = &run.config;
    let policy = policy_label(run);
    let policy = if policy.is_empty() {
        String::new()
    } else {
        format!(" ({policy})")
    };
    format!(
        "{} / {} / {}{policy}",
        c.optimizer,
        c.model_label(),
        c.noise
    )
}

/// The runs of a group by learning rate.
fn by_lr<'a>(runs: &[&'a RunRecord]) -> BTreeMap<u64, Vec<&'a RunRecord>> {
    let mut out: BTreeMap<u64, Vec<&RunRecord>> = BTreeMap::new();
    for run in runs {
        out.entry(run.config.lr.to_bits()).or_default().push(run);
    }
    out
}

fn finished_val_accs(runs: &[&RunRecord]) -> Vec<f64> {
    runs.iter()
        .filter(|r| r.finished())
        .filter_map(|r| r.final_epoch())
        .map(|m| m.val_acc)
        .collect()
}

/// A rate's score: the mean final validation accuracy over its finished and diverged
/// seeds, a diverged seed counting as 0, so that a rate where most seeds diverge cannot
/// win on its survivors. Unfinished seeds are not known yet and do not count. `None`
/// without a finished seed.
fn rate_score(runs: &[&RunRecord]) -> Option<f64> {
    let accs = finished_val_accs(runs);
    if accs.is_empty() {
        return None;
    }
    let diverged = Counts::of(runs).diverged;
    Some(accs.iter().sum::<f64>() / (accs.len() + diverged) as f64)
}

/// The row of a group at its own best learning rate (highest [`rate_score`]; the larger
/// rate on an exact tie); `None` when no run finished.
fn per_noise_row(runs: &[&RunRecord]) -> Option<Row> {
    let lrs = by_lr(runs);
    let best = lrs
        .iter()
        .filter_map(|(lr, rs)| rate_score(rs).map(|score| (f64::from_bits(*lr), score)))
        .max_by(|a, b| a.1.total_cmp(&b.1).then(a.0.total_cmp(&b.0)))?;
    Some(row_at(runs, best.0))
}

/// One run per learning rate and seed of a row, and the others left out: a grid that makes
/// the same run twice (settings that change nothing for it), or a copy of a run left beside
/// it, must not count its seed twice. The run kept is the most complete: a finished one
/// before a diverged one before an unfinished one, then the one with more epochs recorded,
/// then the first in directory order; so a finished run is never set aside for a copy that
/// is still running.
fn one_run_per_seed<'a>(runs: &[&'a RunRecord]) -> (Vec<&'a RunRecord>, Vec<&'a RunRecord>) {
    let completeness = |r: &RunRecord| {
        let status = match r.summary.as_ref().map(|s| s.status) {
            Some(RunStatus::Finished) => 2,
            Some(RunStatus::Diverged) => 1,
            _ => 0,
        };
        (status, r.history.len())
    };
    let mut sorted: Vec<&RunRecord> = runs.to_vec();
    sorted.sort_by(|a, b| {
        completeness(b)
            .cmp(&completeness(a))
            .then_with(|| a.dir.cmp(&b.dir))
    });
    let mut seen = std::collections::HashSet::new();
    let (mut kept, mut left_out) = (Vec::new(), Vec::new());
    for run in sorted {
        if seen.insert((run.config.lr.to_bits(), run.config.seed)) {
            kept.push(run);
        } else {
            left_out.push(run);
        }
    }
    kept.sort_by(|a, b| a.dir.cmp(&b.dir));
    (kept, left_out)
}

/// The row of a group at learning rate `lr` (which has a finished run).
fn row_at(runs: &[&RunRecord], lr: f64) -> Row {
    let lrs = by_lr(runs);
    let lrs_tried = lrs
        .iter()
        .map(|(l, rs)| {
            let accs = finished_val_accs(rs);
            LrTried {
                lr: f64::from_bits(*l),
                mean_val_acc: (!accs.is_empty()).then(|| Stat::of(&accs).mean),
                score: rate_score(rs),
                counts: Counts::of(rs),
            }
        })
        .collect();
    let at = &lrs[&lr.to_bits()];
    let finished: Vec<&RunRecord> = at.iter().copied().filter(|r| r.finished()).collect();
    let finals: Vec<&EpochMetrics> = finished.iter().filter_map(|r| r.final_epoch()).collect();
    let stat =
        |f: fn(&EpochMetrics) -> f64| Stat::of(&finals.iter().map(|m| f(m)).collect::<Vec<_>>());
    let test: Vec<f64> = finals.iter().filter_map(|m| m.test_acc).collect();
    let noise: Vec<(usize, usize, usize)> = finished.iter().map(|r| r.noise_epochs()).collect();
    let avg = |f: fn(&(usize, usize, usize)) -> usize| {
        noise.iter().map(|n| f(n) as f64).sum::<f64>() / noise.len().max(1) as f64
    };
    let c = &at[0].config;
    let adaptive = c.noise_policy == adanoise_core::NoisePolicy::Adaptive;
    Row {
        optimizer: c.optimizer,
        model: c.model,
        model_name: c.model_label(),
        noise: c.noise,
        policy: policy_label(at[0]),
        variant: String::new(),
        lr,
        train_acc: stat(|m| m.train_acc),
        val_acc: stat(|m| m.val_acc),
        train_loss: stat(|m| m.train_loss),
        val_loss: stat(|m| m.val_loss),
        test_acc: (!test.is_empty()).then(|| Stat::of(&test)),
        delta_val_acc: None,
        delta_gap: None,
        grad_noise_epochs: avg(|n| n.0),
        weight_noise_epochs: avg(|n| n.1),
        cooldown_epochs: adaptive.then(|| avg(|n| n.2)),
        at_lr: Counts::of(at),
        lrs_tried,
        note: None,
        duplicates: Vec::new(),
        not_finished: runs
            .iter()
            .filter(|r| !r.finished())
            .map(|r| (r.dir.display().to_string(), r.state()))
            .collect(),
        runs: finished.iter().map(|r| r.dir.clone()).collect(),
        seeds: finished
            .iter()
            .filter_map(|r| r.final_epoch().map(|m| (r.config.seed, m.clone())))
            .collect(),
    }
}

impl Row {
    /// Whether this is a baseline row, the one the others' Δ columns are taken against:
    /// no noise and no label smoothing.
    pub fn is_baseline(&self) -> bool {
        self.noise == NoiseKind::None && self.policy.is_empty()
    }
}

fn same_pair(a: &Row, b: &Row) -> bool {
    a.optimizer == b.optimizer && a.model_name == b.model_name && a.variant == b.variant
}

/// `--lr-selection shared`: every noisy row takes its no-noise row's learning rate.
fn share_baseline_lr(entries: &mut [(&[&RunRecord], Option<Row>)]) {
    let baselines: Vec<Row> = entries
        .iter()
        .filter_map(|(_, row)| row.clone())
        .filter(|r| r.is_baseline())
        .collect();
    for (runs, slot) in entries.iter_mut() {
        let Some(row) = slot.as_mut().filter(|r| !r.is_baseline()) else {
            continue;
        };
        let Some(base) = baselines.iter().find(|b| same_pair(b, row)) else {
            row.note = Some("no no-noise row to share a rate with: its own best rate".into());
            continue;
        };
        let finished_there = by_lr(runs)
            .get(&base.lr.to_bits())
            .is_some_and(|rs| rs.iter().any(|r| r.finished()));
        if finished_there {
            let variant = std::mem::take(&mut row.variant);
            *row = row_at(runs, base.lr);
            row.variant = variant;
        } else {
            row.note = Some(format!(
                "no finished run at the no-noise rate {}: its own best rate",
                base.lr
            ));
        }
    }
}

/// The paired changes of every noisy row against its no-noise row.
fn add_deltas(rows: &mut [Row]) {
    let baselines: Vec<Row> = rows.iter().filter(|r| r.is_baseline()).cloned().collect();
    for row in rows.iter_mut().filter(|r| !r.is_baseline()) {
        if let Some(base) = baselines.iter().find(|b| same_pair(b, row)) {
            set_deltas(row, base);
        }
    }
}

/// `row`'s Δ columns, paired by seed against `base`.
fn set_deltas(row: &mut Row, base: &Row) {
    let acc =
        |r: &Row| -> Vec<(u64, f64)> { r.seeds.iter().map(|(s, m)| (*s, m.val_acc)).collect() };
    let gap = |r: &Row| -> Vec<(u64, f64)> {
        r.seeds
            .iter()
            .map(|(s, m)| (*s, m.val_loss - m.train_loss))
            .collect()
    };
    row.delta_val_acc = paired(&acc(row), &acc(base));
    row.delta_gap = paired(&gap(row), &gap(base));
}

/// Whether `row` is a row of `policy`, named as `--noise-policy` names it (`adaptive`
/// matches `adaptive, relative weight noise`) or as a label starts (`label smoothing`).
fn of_policy(row: &Row, policy: &str) -> bool {
    row.policy == policy
        || row.policy.starts_with(&format!("{policy},"))
        || row.policy.starts_with(&format!("{policy} "))
}

/// `--against POLICY`: every row's Δ columns taken against the `policy` row of its model
/// and optimiser (of the same noise type where there are several) instead of the
/// no-noise row; the policy's own rows get none. An error, naming the policies there
/// are, when no row has that policy.
pub fn deltas_against(tables: &mut Tables, policy: &str) -> anyhow::Result<()> {
    let rows = || tables.by_optimizer.iter().flat_map(|(_, rows)| rows);
    let references: Vec<Row> = rows().filter(|r| of_policy(r, policy)).cloned().collect();
    if references.is_empty() {
        let mut there: Vec<String> = rows()
            .filter(|r| !r.policy.is_empty())
            .map(|r| r.policy.clone())
            .collect();
        there.sort();
        there.dedup();
        anyhow::bail!(
            "no row of these runs has the policy {policy:?} to take the Δ columns against; the rows' policies are: {}. Pass one of them (its first words are enough, as in --against adaptive), or leave --against out to compare with no noise",
            if there.is_empty() {
                "none (no noisy rows)".to_string()
            } else {
                there.join("; ")
            }
        );
    }
    for (_, rows) in tables.by_optimizer.iter_mut() {
        for row in rows.iter_mut() {
            row.delta_val_acc = None;
            row.delta_gap = None;
            if of_policy(row, policy) {
                continue;
            }
            let candidates: Vec<&Row> = references.iter().filter(|b| same_pair(b, row)).collect();
            let base = match candidates.iter().find(|b| b.noise == row.noise) {
                Some(b) => Some(*b),
                None if candidates.len() == 1 => Some(candidates[0]),
                None => None,
            };
            if let Some(base) = base {
                set_deltas(row, base);
            }
        }
    }
    tables.against = Some(policy.to_string());
    Ok(())
}
