//! The run directory: `config.toml` (written first), `metrics.jsonl` (one line
//! per epoch, appended and flushed), `summary.json` and `checkpoint.bin`, all
//! written so that a kill at any moment leaves a directory `--resume` can use.

use super::checkpoint::{self, Checkpoint};
use super::config::{
    DATA_FINGERPRINT_KEY, TrainConfig, WEIGHT_NOISE_SCALE_HINT, WEIGHT_NOISE_SCALE_KEY,
};
use super::lock::{LOCK_FILE, RunLock};
use super::metrics::{EpochMetrics, RunStatus, Summary};
use crate::data::fingerprint::DataFingerprint;
use crate::fsio::{append_line, is_stale_temporary, write_atomic};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

/// The run's resolved configuration (and data fingerprint).
pub const CONFIG_FILE: &str = "config.toml";
/// One JSON line per recorded epoch.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// The run's status and its final and best epochs.
pub const SUMMARY_FILE: &str = "summary.json";

/// An open run directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    /// Its path.
    pub path: PathBuf,
}

/// How a run directory was opened.
pub enum Opened {
    /// A new run: nothing recorded yet.
    Fresh(RunDir),
    /// An interrupted run to continue from its checkpoint, with the epochs it recorded.
    Resumed(RunDir, Box<Checkpoint>, Vec<EpochMetrics>),
    /// The run had already finished: nothing to do.
    AlreadyFinished(RunDir, Box<Summary>),
}

impl Opened {
    /// The run directory, however it was opened.
    pub fn dir(&self) -> &RunDir {
        match self {
            Self::Fresh(dir) | Self::Resumed(dir, ..) | Self::AlreadyFinished(dir, _) => dir,
        }
    }
}

/// Files a run directory may hold before its `config.toml`: the lock, a sweep cell's log and
/// failure record, and what a write killed midway leaves.
fn is_leftover(name: &str) -> bool {
    name == LOCK_FILE || name == "train.log" || name == "failed.json" || name.starts_with(".tmp-")
}

/// Removes the temporary files of writes killed midway. Only the lock holder writes here,
/// but one whose lock file was deleted may still be writing: a live writer's files are left.
fn remove_leftover_temporaries(path: &Path) -> Result<()> {
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        if is_stale_temporary(&entry.file_name().to_string_lossy()) && entry.file_type()?.is_file()
        {
            std::fs::remove_file(entry.path()).with_context(|| {
                format!("could not remove the leftover {}", entry.path().display())
            })?;
        }
    }
    Ok(())
}

/// Whether `path` holds anything but leftovers.
fn holds_files(path: &Path) -> Result<bool> {
    for entry in std::fs::read_dir(path)? {
        if !is_leftover(&entry?.file_name().to_string_lossy()) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Creates `path` (naming it when it is a file) and takes its lock.
pub fn create_and_lock(path: &Path) -> Result<RunLock> {
    if path.exists() && !path.is_dir() {
        bail!(
            "--out {} is a file, not a directory: choose another --out",
            path.display()
        );
    }
    std::fs::create_dir_all(path)
        .with_context(|| format!("could not create the run directory {}", path.display()))?;
    RunLock::acquire(path)
}

/// The text of `config.toml`: the config, then the fingerprint of its data.
fn config_text(config: &TrainConfig, data: &DataFingerprint) -> Result<String> {
    let mut table = toml::Table::try_from(config).context("the config could not be written")?;
    table.insert(
        DATA_FINGERPRINT_KEY.into(),
        toml::Value::try_from(data).context("the data fingerprint could not be written")?,
    );
    Ok(toml::to_string(&table)?)
}

/// The hint to add to a list of config differences that includes the weight-noise reading.
pub fn reading_hint(diffs: &[String]) -> String {
    let reading = format!("{WEIGHT_NOISE_SCALE_KEY}:");
    if diffs.iter().any(|d| d.starts_with(&reading)) {
        format!(" ({WEIGHT_NOISE_SCALE_HINT})")
    } else {
        String::new()
    }
}

/// Reads a run's `config.toml`: the config and, when recorded, its data's fingerprint.
pub fn read_config(path: &Path) -> Result<(TrainConfig, Option<DataFingerprint>)> {
    let mut table = TrainConfig::read_table(path)?;
    let fingerprint = match table.remove(DATA_FINGERPRINT_KEY) {
        Some(value) => Some(value.try_into().with_context(|| {
            format!(
                "{} holds an unreadable {DATA_FINGERPRINT_KEY}",
                path.display()
            )
        })?),
        None => None,
    };
    let config = TrainConfig::from_table(table)
        .with_context(|| format!("{} is an unreadable run config", path.display()))?;
    Ok((config, fingerprint))
}

impl RunDir {
    /// Opens `path` for `config` trained on `data`: creates it, or (with `resume`) picks up
    /// the run it holds. The returned lock keeps other processes out until dropped.
    pub fn open(
        path: &Path,
        config: &TrainConfig,
        data: &DataFingerprint,
        resume: bool,
        held: Option<RunLock>,
    ) -> Result<(Opened, RunLock)> {
        let lock = match held {
            Some(lock) => lock,
            None => create_and_lock(path)?,
        };
        remove_leftover_temporaries(path)?;
        let dir = RunDir {
            path: path.to_path_buf(),
        };
        let config_path = path.join(CONFIG_FILE);
        if !config_path.exists() {
            if !resume && holds_files(path)? {
                bail!(
                    "{} exists and holds files but no {CONFIG_FILE}: it is not a run directory; choose another --out",
                    path.display()
                );
            }
            write_atomic(&config_path, config_text(config, data)?.as_bytes())?;
            return Ok((Opened::Fresh(dir), lock));
        }
        let (stored, stored_data) = read_config(&config_path)?;
        if let Some(summary) = dir
            .read_summary()?
            .filter(|s| s.status == RunStatus::Finished)
        {
            if resume && stored.differences(config).is_empty() {
                return Ok((Opened::AlreadyFinished(dir, Box::new(summary)), lock));
            }
            bail!(
                "{} holds a finished run ({} epochs); it is not overwritten: choose another --out, or delete the directory to train again",
                path.display(),
                summary.epochs_done
            );
        }
        dir.check_resumable(&stored, stored_data.as_ref(), config, data, resume)?;
        // Record the new location options (data_dir, threads); the fingerprint is the same.
        write_atomic(&config_path, config_text(config, data)?.as_bytes())?;
        let opened = match checkpoint::load(&dir.checkpoint_path())? {
            Some(ckpt) => {
                let history = dir.read_metrics_up_to(ckpt.state.epoch)?;
                Opened::Resumed(dir, Box::new(ckpt), history)
            }
            None => {
                // Killed before the first checkpoint: start over, dropping partial records.
                let _ = std::fs::remove_file(path.join(METRICS_FILE));
                Opened::Fresh(dir)
            }
        };
        Ok((opened, lock))
    }

    /// Refuses to continue the stored run with another config or other data.
    fn check_resumable(
        &self,
        stored: &TrainConfig,
        stored_data: Option<&DataFingerprint>,
        config: &TrainConfig,
        data: &DataFingerprint,
        resume: bool,
    ) -> Result<()> {
        let path = &self.path;
        if !resume {
            bail!(
                "{} already holds a run; pass --resume to continue it, or choose another --out",
                path.display()
            );
        }
        let diffs = stored.differences(config);
        if !diffs.is_empty() {
            bail!(
                "cannot resume {}: its config differs from this one ({}); use the same options, or choose another --out{}",
                path.display(),
                diffs.join("; "),
                reading_hint(&diffs)
            );
        }
        if let Some(stored_data) = stored_data {
            let diffs = stored_data.differences(data);
            if !diffs.is_empty() {
                bail!(
                    "cannot resume {}: it trained on other data than {} holds ({}); point --data-dir at the data it trained on (it was {})",
                    path.display(),
                    config.data_dir.display(),
                    diffs.join("; "),
                    stored.data_dir.display()
                );
            }
        }
        Ok(())
    }

    /// Where the checkpoint is.
    pub fn checkpoint_path(&self) -> PathBuf {
        self.path.join(checkpoint::CHECKPOINT_FILE)
    }

    /// Where the metrics are.
    pub fn metrics_path(&self) -> PathBuf {
        self.path.join(METRICS_FILE)
    }

    /// The recorded epochs up to `epoch`, rewriting `metrics.jsonl` to exactly those lines:
    /// epochs recorded after the checkpoint and a half-written last line are dropped.
    pub fn read_metrics_up_to(&self, epoch: u64) -> Result<Vec<EpochMetrics>> {
        let path = self.metrics_path();
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let mut history = Vec::new();
        let mut kept = String::new();
        for line in text.lines() {
            let Ok(m) = serde_json::from_str::<EpochMetrics>(line) else {
                break;
            };
            if m.epoch > epoch {
                break;
            }
            kept.push_str(line);
            kept.push('\n');
            history.push(m);
        }
        if history.len() as u64 != epoch
            || history
                .iter()
                .enumerate()
                .any(|(i, m)| m.epoch != i as u64 + 1)
        {
            bail!(
                "{} records {} epochs but the checkpoint is at epoch {epoch}: the run directory was edited by hand; restore it or start a new run",
                path.display(),
                history.len()
            );
        }
        if kept != text {
            write_atomic(&path, kept.as_bytes())?;
        }
        Ok(history)
    }

    /// Reads every line of `metrics.jsonl` (used by reports and replays).
    pub fn read_metrics(&self) -> Result<Vec<EpochMetrics>> {
        read_metrics_file(&self.metrics_path())
    }

    /// Appends one epoch's metrics line and syncs it.
    pub fn append_metrics(&self, metrics: &EpochMetrics) -> Result<()> {
        append_line(&self.metrics_path(), &serde_json::to_string(metrics)?)
    }

    /// Replaces `summary.json` atomically.
    pub fn write_summary(&self, summary: &Summary) -> Result<()> {
        let text = serde_json::to_string_pretty(summary)?;
        write_atomic(&self.path.join(SUMMARY_FILE), text.as_bytes())
    }

    /// Reads `summary.json`, when there is one.
    pub fn read_summary(&self) -> Result<Option<Summary>> {
        let path = self.path.join(SUMMARY_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path)?;
        let summary = serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not a valid summary; delete it to let --resume rebuild it",
                path.display()
            )
        })?;
        Ok(Some(summary))
    }
}

/// Parses a `metrics.jsonl` file that a crash may have cut short: every complete record,
/// and a note when its last line is half written (what a kill during the append leaves).
/// A malformed line before the last one is an error, as in [`read_metrics_file`].
pub fn read_complete_metrics(path: &Path) -> Result<(Vec<EpochMetrics>, Option<String>)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("could not read {}", path.display()))?;
    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .collect();
    let mut records = Vec::with_capacity(lines.len());
    for (k, (i, line)) in lines.iter().enumerate() {
        match serde_json::from_str(line) {
            Ok(m) => records.push(m),
            Err(_) if k + 1 == lines.len() => {
                let note = format!(
                    "{} line {} is half written (the run was killed while recording it); the {} complete epochs before it are read",
                    path.display(),
                    i + 1,
                    records.len()
                );
                return Ok((records, Some(note)));
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("{} line {} is not a metrics record", path.display(), i + 1)
                });
            }
        }
    }
    Ok((records, None))
}

/// Parses a `metrics.jsonl` file, naming the line of any malformed record.
pub fn read_metrics_file(path: &Path) -> Result<Vec<EpochMetrics>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("could not read {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| {
                format!("{} line {} is not a metrics record", path.display(), i + 1)
            })
        })
        .collect()
}
