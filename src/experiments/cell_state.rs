//! The state of a sweep cell, read from its run directory: done, failed,
//! running (another process holds its lock), pending, or a run of another
//! configuration than the sweep file's cell (the file was edited since it ran).
//! One rule decides whether a run directory is the cell's: its `config.toml`
//! equals the cell's configuration, up to where the run executes (and, once the
//! run has finished, the device it ran on: a sweep may finish its cells on
//! another machine).

use crate::fsio::write_atomic;
use crate::train::lock::is_locked;
use crate::train::run_dir::{CONFIG_FILE, RunDir, read_config, read_metrics_file};
use crate::train::{RunStatus, Summary, TrainConfig};
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// A failed cell's record of why.
pub const FAILED_FILE: &str = "failed.json";

/// Where a sweep cell stands.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, strum::Display, strum::IntoStaticStr,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum CellState {
    /// Not started, or interrupted and resumable.
    Pending,
    /// Another process holds its lock.
    Running,
    /// Finished.
    Done,
    /// Failed (see its `failed.json`) or diverged.
    Failed,
    /// Its directory holds a run of another configuration: the sweep file was edited
    /// since it ran, and the run is not this cell's.
    Differs,
}

/// Why a cell failed, as recorded in its `failed.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Failure {
    /// The error, as the cell's process printed it.
    pub error: String,
    /// When it failed (seconds since the Unix epoch).
    pub unix_time: u64,
}

/// What `--list` shows of a cell.
#[derive(Debug, Clone)]
pub struct CellStatus {
    /// Where the cell stands.
    pub state: CellState,
    /// Epochs recorded.
    pub epochs_done: u64,
    /// Epochs the cell trains.
    pub epochs: u64,
    /// The last recorded validation accuracy.
    pub final_val_acc: Option<f64>,
    /// Why it failed, for a failed cell.
    pub error: Option<String>,
}

/// Records why a cell failed in its `failed.json`.
pub fn record_failure(cell_dir: &Path, error: &anyhow::Error) -> Result<()> {
    let failure = Failure {
        error: format!("{error:#}"),
        unix_time: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    write_atomic(
        &cell_dir.join(FAILED_FILE),
        serde_json::to_string_pretty(&failure)?.as_bytes(),
    )
}

/// Forgets a cell's earlier failure (it is being run again).
pub fn clear_failure(cell_dir: &Path) {
    let _ = std::fs::remove_file(cell_dir.join(FAILED_FILE));
}

fn read_failure(cell_dir: &Path) -> Option<Failure> {
    let text = std::fs::read_to_string(cell_dir.join(FAILED_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Whether the run in `cell_dir` (if any) is of `config`, up to where it executes and,
/// for a finished run, the device it ran on: `Err` with what differs, one "key: recorded ->
/// now" per option, when it is not. (An unfinished run must go on where it started, as
/// `--resume` requires.)
pub fn run_matches(cell_dir: &Path, config: &TrainConfig) -> Result<(), String> {
    let path = cell_dir.join(CONFIG_FILE);
    if !path.exists() {
        return Ok(());
    }
    let finished = RunDir {
        path: cell_dir.to_path_buf(),
    }
    .read_summary()
    .ok()
    .flatten()
    .is_some_and(|s| s.status == RunStatus::Finished);
    let diffs: Vec<String> = match read_config(&path) {
        Ok((recorded, _)) => recorded
            .differences(config)
            .into_iter()
            .filter(|d| !(finished && d.starts_with("device:")))
            .collect(),
        Err(e) => vec![format!("its {CONFIG_FILE} is unreadable: {e:#}")],
    };
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(diffs.join("; "))
    }
}

/// Reads the state of the cell of `config` in `cell_dir` (which may not exist yet).
pub fn cell_status(cell_dir: &Path, config: &TrainConfig) -> CellStatus {
    let epochs = config.epochs;
    let summary: Option<Summary> = RunDir {
        path: cell_dir.to_path_buf(),
    }
    .read_summary()
    .ok()
    .flatten();
    let epochs_done = summary.as_ref().map_or_else(
        || {
            read_metrics_file(&cell_dir.join(crate::train::run_dir::METRICS_FILE))
                .map_or(0, |m| m.len() as u64)
        },
        |s| s.epochs_done,
    );
    let final_val_acc = summary
        .as_ref()
        .and_then(|s| s.final_epoch.as_ref())
        .map(|m| m.val_acc);
    let mut status = CellStatus {
        state: CellState::Pending,
        epochs_done,
        epochs,
        final_val_acc,
        error: None,
    };
    if let Err(differences) = run_matches(cell_dir, config) {
        status.state = CellState::Differs;
        status.error = Some(differences);
        return status;
    }
    // A finished run is done even while locked: a process that takes a finished cell's lock
    // (a second sweep that raced for it, or a probe of the lock) only opens it and leaves.
    if summary
        .as_ref()
        .is_some_and(|s| s.status == RunStatus::Finished)
    {
        status.state = CellState::Done;
    } else if is_locked(cell_dir) {
        status.state = CellState::Running;
    } else if let Some(failure) = read_failure(cell_dir) {
        status.state = CellState::Failed;
        status.error = Some(failure.error);
    } else if let Some(s) = summary.as_ref().filter(|s| s.status == RunStatus::Diverged) {
        status.state = CellState::Failed;
        status.error = s.message.clone();
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::lock::RunLock;

    fn config(epochs: u64) -> TrainConfig {
        TrainConfig::for_new_run(
            format!("model = 'baby-cnn'\noptimizer = 'sgd'\nlr = 0.1\nepochs = {epochs}")
                .parse()
                .unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn a_locked_cell_is_running_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let lock = RunLock::acquire(dir.path()).unwrap();
        assert_eq!(
            cell_status(dir.path(), &config(3)).state,
            CellState::Running
        );
        drop(lock);
        assert_eq!(
            cell_status(dir.path(), &config(3)).state,
            CellState::Pending
        );
    }

    /// A second sweep process may hold a finished cell's lock for the instant it takes to see
    /// that there is nothing to do; the cell must read as done meanwhile, not as running.
    #[test]
    fn a_finished_cell_is_done_even_while_locked() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir {
            path: dir.path().to_path_buf(),
        };
        let lock = RunLock::acquire(dir.path()).unwrap();
        run.write_summary(&Summary::from_history(&[], 3, RunStatus::Running, None))
            .unwrap();
        assert_eq!(
            cell_status(dir.path(), &config(3)).state,
            CellState::Running
        );
        run.write_summary(&Summary::from_history(&[], 3, RunStatus::Finished, None))
            .unwrap();
        assert_eq!(cell_status(dir.path(), &config(3)).state, CellState::Done);
        drop(lock);
        assert_eq!(cell_status(dir.path(), &config(3)).state, CellState::Done);
    }
}
