//! Running a sweep: each pending cell in its own `adanoise sweep --cell` child
//! process (a crash or a failure stays in its cell), `--workers` at a time, each
//! with a share of the CPU threads; and running one cell, under its lock.

use super::cell_state::{CellState, cell_status, clear_failure, record_failure};
use super::sweep::{Cell, Sweep, describe};
use crate::events::{CellOutcome, Event, Observer};
use crate::train::lock::RunBusy;
use crate::train::run_dir::create_and_lock;
use crate::train::{RunOptions, train_holding};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What a sweep invocation did.
#[derive(Debug, Default)]
pub struct SweepOutcome {
    /// Cells found done.
    pub done_before: usize,
    /// Cells this invocation finished.
    pub finished: usize,
    /// Cells that failed, with their error.
    pub failed: Vec<(String, String)>,
    /// Cells another process was running.
    pub busy: usize,
    /// Cells stopped by a signal (resumable).
    pub interrupted: usize,
}

/// How each cell of a sweep logs, passed on to the cell processes.
#[derive(Debug, Clone, Default)]
pub struct CellLogging {
    /// TensorBoard directory of the sweep: each cell writes into `DIR/<cell name>`.
    pub tensorboard: Option<PathBuf>,
    /// Steps between two TensorBoard points of the running loss and the LR.
    pub tensorboard_every: Option<u64>,
}

/// How one cell runs in its process.
#[derive(Debug, Clone, Default)]
pub struct CellOptions {
    /// Threads, overriding the sweep file's.
    pub threads: Option<usize>,
    /// The cell's TensorBoard directory.
    pub tensorboard: Option<PathBuf>,
    /// Steps between two TensorBoard points.
    pub tensorboard_every: Option<u64>,
}

/// The exit code of a cell process that found its cell held by another process.
pub const EXIT_CELL_BUSY: i32 = 3;

/// Runs every cell that is not done, `workers` at a time.
pub fn run_sweep(
    sweep: &Sweep,
    workers: usize,
    threads: Option<usize>,
    logging: &CellLogging,
    observer: &mut dyn Observer,
) -> Result<SweepOutcome> {
    let workers = workers.max(1);
    sweep.write_cells()?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads_each = (cores / workers).max(1);
    let exe =
        std::env::current_exe().context("could not find the adanoise executable to run cells")?;
    let mut outcome = SweepOutcome::default();
    let mut queue: Vec<&Cell> = sweep
        .cells
        .iter()
        .filter(|cell| still_to_run(sweep, cell, &mut outcome))
        .collect();
    let total = queue.len();
    observer.on(&Event::Notice(&format!(
        "sweep {}: {} cells, {} done, {} running elsewhere, {} to run with {workers} worker(s) x {} thread(s)",
        sweep.out.display(),
        sweep.cells.len(),
        outcome.done_before,
        outcome.busy,
        total,
        threads
            .or(sweep.cells.first().and_then(|c| c.config.threads))
            .unwrap_or(threads_each)
    )));
    let mut running: Vec<(&Cell, Child, Instant)> = Vec::new();
    let mut started = 0;
    while !queue.is_empty() || !running.is_empty() {
        if crate::train::interrupt::requested() {
            // Stop starting cells; the running ones checkpoint and exit on the same signal.
            queue.clear();
        }
        while running.len() < workers && !queue.is_empty() {
            let cell = queue.remove(0);
            // Another sweep process may have taken or finished it meanwhile.
            if !still_to_run(sweep, cell, &mut outcome) {
                continue;
            }
            // Threads: the command line's, else the sweep file's, else a share of the cores.
            let cell_threads = threads.or(cell.config.threads).unwrap_or(threads_each);
            let child = spawn_cell(sweep, cell, &exe, cell_threads, logging)?;
            started += 1;
            observer.on(&Event::CellStarted {
                started,
                total,
                name: &cell.name,
                values: &describe(&cell.values),
            });
            running.push((cell, child, Instant::now()));
        }
        std::thread::sleep(Duration::from_millis(100));
        reap_ended(sweep, &mut running, &mut outcome, observer)?;
    }
    Ok(outcome)
}

/// Counts `cell` if it is done or held by another process; true when it still has to run.
fn still_to_run(sweep: &Sweep, cell: &Cell, outcome: &mut SweepOutcome) -> bool {
    match cell_status(&sweep.cell_dir(cell), cell.config.epochs).state {
        CellState::Done => outcome.done_before += 1,
        CellState::Running => outcome.busy += 1,
        CellState::Pending | CellState::Failed => return true,
    }
    false
}

/// Removes the cells whose process has exited from `running`, counting and reporting how
/// each ended.
fn reap_ended(
    sweep: &Sweep,
    running: &mut Vec<(&Cell, Child, Instant)>,
    outcome: &mut SweepOutcome,
    observer: &mut dyn Observer,
) -> Result<()> {
    let mut i = 0;
    while i < running.len() {
        let Some(status) = running[i].1.try_wait()? else {
            i += 1;
            continue;
        };
        let (cell, _, since) = running.remove(i);
        let ended = cell_outcome(sweep, cell, status, since.elapsed().as_secs_f64());
        match &ended {
            CellOutcome::Done { .. } => outcome.finished += 1,
            CellOutcome::Interrupted => outcome.interrupted += 1,
            CellOutcome::Busy => outcome.busy += 1,
            CellOutcome::Failed(error) => outcome.failed.push((cell.name.clone(), error.clone())),
        }
        observer.on(&Event::CellEnded {
            name: &cell.name,
            outcome: &ended,
        });
    }
    Ok(())
}

/// Starts `adanoise sweep FILE --cell INDEX` for `cell`, its output going to the cell's
/// `train.log`.
fn spawn_cell(
    sweep: &Sweep,
    cell: &Cell,
    exe: &Path,
    threads: usize,
    logging: &CellLogging,
) -> Result<Child> {
    let dir = sweep.cell_dir(cell);
    std::fs::create_dir_all(&dir).with_context(|| format!("could not create {}", dir.display()))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("train.log"))
        .with_context(|| format!("could not open {}/train.log", dir.display()))?;
    let mut command = Command::new(exe);
    command
        .arg("sweep")
        .arg(&sweep.file)
        .arg("--cell")
        .arg(cell.index.to_string())
        .arg("--out")
        .arg(&sweep.out)
        .arg("--threads")
        .arg(threads.to_string());
    if let Some(dir) = &logging.tensorboard {
        command.arg("--tensorboard").arg(dir);
    }
    if let Some(every) = logging.tensorboard_every {
        command.arg("--tensorboard-every").arg(every.to_string());
    }
    command
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("could not start a cell process")
}

/// How a cell's process ended, from its exit status and its run directory.
fn cell_outcome(
    sweep: &Sweep,
    cell: &Cell,
    status: std::process::ExitStatus,
    seconds: f64,
) -> CellOutcome {
    let dir = sweep.cell_dir(cell);
    let s = cell_status(&dir, cell.config.epochs);
    if status.code() == Some(crate::train::interrupt::EXIT_INTERRUPTED) {
        CellOutcome::Interrupted
    } else if status.code() == Some(EXIT_CELL_BUSY) {
        CellOutcome::Busy
    } else if s.state == CellState::Done {
        CellOutcome::Done {
            seconds,
            val_acc: s.final_val_acc,
        }
    } else {
        CellOutcome::Failed(s.error.unwrap_or_else(|| {
            format!(
                "the cell process ended with {status}; see {}/train.log",
                dir.display()
            )
        }))
    }
}

/// How a cell process ended, when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CellRun {
    /// All its epochs are recorded.
    Finished,
    /// Another process holds the cell.
    Busy,
    /// Stopped by a signal after writing a checkpoint: run it again to continue.
    Interrupted,
}

/// Trains one cell (resuming it if interrupted) while holding its lock; a failure is recorded
/// in the cell's `failed.json`.
pub fn run_cell(
    sweep_out: &Path,
    cell: &Cell,
    options: &CellOptions,
    observer: &mut dyn Observer,
) -> Result<CellRun> {
    let dir = sweep_out.join(&cell.name);
    let lock = match create_and_lock(&dir) {
        Ok(lock) => lock,
        Err(e) if e.is::<RunBusy>() => return Ok(CellRun::Busy),
        Err(e) => return Err(e),
    };
    let mut config = cell.config.clone();
    if options.threads.is_some() {
        config.threads = options.threads;
    }
    clear_failure(&dir);
    observer.on(&Event::Notice(&format!(
        "cell {} ({}): {}",
        cell.index,
        cell.name,
        describe(&cell.values)
    )));
    let run_options = RunOptions {
        resume: true,
        offline: false,
        tensorboard: options.tensorboard.clone(),
        tensorboard_every: options.tensorboard_every,
        ..Default::default()
    };
    match train_holding(&config, &dir, &run_options, observer, lock) {
        Ok(outcome) if outcome.interrupted => Ok(CellRun::Interrupted),
        Ok(_) => Ok(CellRun::Finished),
        Err(e) => {
            record_failure(&dir, &e)?;
            bail!(e)
        }
    }
}
