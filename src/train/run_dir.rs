//! The run directory: `config.toml` (written first), `metrics.jsonl` (one line
//! per epoch, appended and flushed), `summary.json` and `checkpoint.bin`, all
//! written so that a kill at any moment leaves a directory `--resume` can use.

use super::checkpoint::{self, Checkpoint};
use super::config::TrainConfig;
use super::metrics::{EpochMetrics, RunStatus, Summary};
use crate::fsio::{append_line, write_atomic};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

pub const CONFIG_FILE: &str = "config.toml";
pub const METRICS_FILE: &str = "metrics.jsonl";
pub const SUMMARY_FILE: &str = "summary.json";

/// An open run directory.
#[derive(Debug, Clone)]
pub struct RunDir {
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

impl RunDir {
    /// Opens `path` for `config`: creates it, or (with `resume`) picks up the run it holds.
    pub fn open(path: &Path, config: &TrainConfig, resume: bool) -> Result<Opened> {
        let dir = RunDir {
            path: path.to_path_buf(),
        };
        let config_path = path.join(CONFIG_FILE);
        if !config_path.exists() {
            if path.exists() && std::fs::read_dir(path)?.next().is_some() && !resume {
                bail!(
                    "{} exists and holds files but no {CONFIG_FILE}: it is not a run directory; choose another --out",
                    path.display()
                );
            }
            std::fs::create_dir_all(path).with_context(|| {
                format!("could not create the run directory {}", path.display())
            })?;
            write_atomic(&config_path, config.to_toml().as_bytes())?;
            return Ok(Opened::Fresh(dir));
        }
        let stored = TrainConfig::from_table(TrainConfig::read_table(&config_path)?)
            .with_context(|| format!("{} holds an unreadable {CONFIG_FILE}", path.display()))?;
        let summary = dir.read_summary()?;
        if let Some(summary) = summary.filter(|s| s.status == RunStatus::Finished) {
            if resume && stored.differences(config).is_empty() {
                return Ok(Opened::AlreadyFinished(dir, Box::new(summary)));
            }
            bail!(
                "{} holds a finished run ({} epochs); it is not overwritten: choose another --out, or delete the directory to train again",
                path.display(),
                summary.epochs_done
            );
        }
        if !resume {
            bail!(
                "{} already holds a run; pass --resume to continue it, or choose another --out",
                path.display()
            );
        }
        let diffs = stored.differences(config);
        if !diffs.is_empty() {
            bail!(
                "cannot resume {}: its config differs from this one ({}); use the same options, or choose another --out",
                path.display(),
                diffs.join("; ")
            );
        }
        // Record the new location options (data_dir, threads).
        write_atomic(&config_path, config.to_toml().as_bytes())?;
        match checkpoint::load(&dir.checkpoint_path())? {
            Some(ckpt) => {
                let history = dir.read_metrics_up_to(ckpt.state.epoch)?;
                Ok(Opened::Resumed(dir, Box::new(ckpt), history))
            }
            None => {
                // Killed before the first checkpoint: start over, dropping partial records.
                let _ = std::fs::remove_file(path.join(METRICS_FILE));
                Ok(Opened::Fresh(dir))
            }
        }
    }

    pub fn checkpoint_path(&self) -> PathBuf {
        self.path.join(checkpoint::CHECKPOINT_FILE)
    }

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

    pub fn append_metrics(&self, metrics: &EpochMetrics) -> Result<()> {
        append_line(&self.metrics_path(), &serde_json::to_string(metrics)?)
    }

    pub fn write_summary(&self, summary: &Summary) -> Result<()> {
        let text = serde_json::to_string_pretty(summary)?;
        write_atomic(&self.path.join(SUMMARY_FILE), text.as_bytes())
    }

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
