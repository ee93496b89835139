//! Finding the runs under a directory and reading what reports need of them.

use crate::events::{Event, Observer};
use crate::noise::NoiseKind;
use crate::train::run_dir::{CONFIG_FILE, METRICS_FILE, RunDir, read_complete_metrics};
use crate::train::{EpochMetrics, RunStatus, Summary, TrainConfig};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

/// One run directory, read.
#[derive(Debug, Clone)]
pub struct RunRecord {
    /// The run directory.
    pub dir: PathBuf,
    /// Its configuration.
    pub config: TrainConfig,
    /// Its summary, when written.
    pub summary: Option<Summary>,
    /// Every recorded epoch.
    pub history: Vec<EpochMetrics>,
}

impl RunRecord {
    /// Reads the run in `dir`; a half-written last metrics line (a crashed run) is
    /// reported to `observer` and left out, the complete epochs kept.
    pub fn read(dir: &Path, observer: &mut dyn Observer) -> Result<RunRecord> {
        let config = TrainConfig::from_table(TrainConfig::read_table(&dir.join(CONFIG_FILE))?)?;
        let summary = RunDir {
            path: dir.to_path_buf(),
        }
        .read_summary()?;
        let metrics = dir.join(METRICS_FILE);
        let history = if metrics.exists() {
            let (history, note) = read_complete_metrics(&metrics)?;
            if let Some(note) = note {
                observer.on(&Event::Warning(&note));
            }
            history
        } else {
            Vec::new()
        };
        Ok(RunRecord {
            dir: dir.to_path_buf(),
            config,
            summary,
            history,
        })
    }

    /// `finished`, `diverged after 3/10 epochs`, `running after 2/10 epochs`, `not started`.
    pub fn state(&self) -> String {
        self.summary
            .as_ref()
            .map_or("not started".to_string(), |s| {
                if s.status == RunStatus::Finished {
                    return "finished".to_string();
                }
                format!("{} after {}/{} epochs", s.status, s.epochs_done, s.epochs)
            })
    }

    /// Whether all its epochs are recorded.
    pub fn finished(&self) -> bool {
        self.summary
            .as_ref()
            .is_some_and(|s| s.status == RunStatus::Finished)
    }

    /// The last recorded epoch, from the summary.
    pub fn final_epoch(&self) -> Option<&EpochMetrics> {
        self.summary.as_ref().and_then(|s| s.final_epoch.as_ref())
    }

    /// The run directory's name.
    pub fn name(&self) -> String {
        self.dir.file_name().map_or_else(
            || self.dir.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        )
    }

    /// Epochs that trained with gradient noise, with weight noise (at the start, after
    /// steps, or a perturbation), and suppressed by a cooldown.
    pub fn noise_epochs(&self) -> (usize, usize, usize) {
        let grad = self
            .history
            .iter()
            .filter(|m| m.noise_applied.grad_noise())
            .count();
        let weight = self
            .history
            .iter()
            .filter(|m| m.noise_applied.weight_noise())
            .count();
        // A decision with a cooldown after epoch e suppresses epoch e + 1.
        let cooldown = self
            .history
            .iter()
            .filter(|m| {
                m.epoch < self.config.epochs && m.decision.as_ref().is_some_and(|d| d.cooldown > 0)
            })
            .count();
        if self.config.noise == NoiseKind::None {
            (0, 0, cooldown)
        } else {
            (grad, weight, cooldown)
        }
    }
}

/// [`find_runs`] for a command that needs at least one run: an error that says why there is
/// none (no run directory, or none that could be read, with the first reason).
pub fn find_some_runs(
    root: &Path,
    depth: usize,
    observer: &mut dyn Observer,
) -> Result<Vec<RunRecord>> {
    let mut unreadable = Vec::new();
    let runs = find_runs_noting(root, depth, observer, &mut unreadable)?;
    if !runs.is_empty() {
        return Ok(runs);
    }
    match unreadable.first() {
        None => bail!(
            "{} holds no run directory (a folder with config.toml)",
            root.display()
        ),
        Some((dir, why)) => bail!(
            "none of the {} run directories under {} could be read; the first, {}: {why}. Fix or remove what is named, then run the command again",
            unreadable.len(),
            root.display(),
            dir.display()
        ),
    }
}

/// Every run directory at most `depth` levels under `root` (the root itself included); one
/// that cannot be read is reported to `observer` and left out.
pub fn find_runs(root: &Path, depth: usize, observer: &mut dyn Observer) -> Result<Vec<RunRecord>> {
    find_runs_noting(root, depth, observer, &mut Vec::new())
}

fn find_runs_noting(
    root: &Path,
    depth: usize,
    observer: &mut dyn Observer,
    unreadable: &mut Vec<(PathBuf, String)>,
) -> Result<Vec<RunRecord>> {
    if !root.is_dir() {
        bail!(
            "{} is not a directory; give a sweep's output directory or a run directory",
            root.display()
        );
    }
    let root = root
        .canonicalize()
        .with_context(|| format!("could not resolve {}", root.display()))?;
    let mut dirs = Vec::new();
    walk(&root, depth, &mut dirs);
    dirs.sort();
    dirs.dedup();
    let mut runs = Vec::new();
    for dir in dirs {
        match RunRecord::read(&dir, observer) {
            Ok(run) => runs.push(run),
            Err(e) => {
                observer.on(&Event::Warning(&format!(
                    "skipping {}: {e:#}",
                    dir.display()
                )));
                unreadable.push((dir, format!("{e:#}")));
            }
        }
    }
    Ok(runs)
}

/// Collects the run directories under `dir`, never following a symbolic link (a link to a
/// run would count it twice, a link to `..` would leave the folder).
fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    let config = dir.join(CONFIG_FILE);
    if std::fs::symlink_metadata(&config).is_ok_and(|m| m.is_file()) {
        out.push(dir.to_path_buf());
        return;
    }
    if depth == 0 {
        return;
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            if is_dir && !entry.file_name().to_string_lossy().starts_with('.') {
                walk(&entry.path(), depth - 1, out);
            }
        }
    }
}
