//! Running a sweep: each pending cell in its own `adanoise sweep --cell` child
//! process (a crash or a failure stays in its cell), `--workers` at a time, each
//! with a share of the CPU threads; and running one cell, under its lock.

use super::cell_state::{CellState, cell_status, clear_failure, record_failure};
use super::sweep::{Cell, Sweep, describe};
use crate::events::{CellOutcome, Event, Observer, SweepProgress};
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

impl CellLogging {
    /// The `sweep --cell` options that give a cell process this logging.
    pub fn arguments(&self) -> Vec<std::ffi::OsString> {
        let mut args = Vec::new();
        if let Some(dir) = &self.tensorboard {
            args.push("--tensorboard".into());
            args.push(dir.clone().into_os_string());
        }
        if let Some(every) = self.tensorboard_every {
            args.push("--tensorboard-every".into());
            args.push(every.to_string().into());
        }
        args
    }
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
    refuse_edited_cells(sweep)?;
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
    let mut pace = Pace {
        started: Instant::now(),
        cell_seconds: Vec::new(),
        workers,
        total: sweep.cells.len(),
    };
    let mut forwarded = false;
    while !queue.is_empty() || !running.is_empty() {
        if crate::train::interrupt::requested() {
            // Stop starting cells; the running ones checkpoint and exit. A Ctrl-C reaches
            // them too, but a signal sent to this process alone (`kill PID`) must as well.
            queue.clear();
            if !forwarded {
                running.iter().for_each(|(_, child, _)| ask_to_stop(child));
                forwarded = true;
            }
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
        reap_ended(
            sweep,
            &mut running,
            queue.len(),
            &mut pace,
            &mut outcome,
            observer,
        )?;
    }
    Ok(outcome)
}

/// Asks a cell process to checkpoint and exit (SIGTERM, which it never takes as "exit at
/// once").
fn ask_to_stop(child: &Child) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: signalling a child process this process started and has not reaped.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
}

/// Refuses a sweep some of whose cell directories hold runs of another configuration (the
/// sweep file, or the options it is resolved with, changed since they ran): a finished run
/// must never pass for the cell of the file as it is now, nor an interrupted one go on
/// under other settings.
pub fn refuse_edited_cells(sweep: &Sweep) -> Result<()> {
    let edited: Vec<(&Cell, String)> = sweep
        .cells
        .iter()
        .filter_map(|cell| {
            super::cell_state::run_matches(&sweep.cell_dir(cell), &cell.config)
                .err()
                .map(|diffs| (cell, diffs))
        })
        .collect();
    if edited.is_empty() {
        return Ok(());
    }
    let listed: Vec<String> = edited
        .iter()
        .take(5)
        .map(|(cell, diffs)| format!("{} ({diffs})", cell.name))
        .collect();
    let more = match edited.len() {
        n if n > 5 => format!(" and {} more", n - 5),
        _ => String::new(),
    };
    let all: Vec<String> = edited.iter().map(|(_, d)| d.clone()).collect();
    bail!(
        "{} of the {} cells in {} hold runs of another configuration than {} now gives them: {}{more}. \
         The sweep file (or an option it is resolved with) changed since they ran, so their results are not this file's. \
         Restore the file, run the edited file into another directory (--out), or delete those cell directories to train them again{}",
        edited.len(),
        sweep.cells.len(),
        sweep.out.display(),
        sweep.file.display(),
        listed.join(", "),
        crate::train::run_dir::reading_hint(&all)
    )
}

/// Counts `cell` if it is done or held by another process; true when it still has to run.
fn still_to_run(sweep: &Sweep, cell: &Cell, outcome: &mut SweepOutcome) -> bool {
    match cell_status(&sweep.cell_dir(cell), &cell.config).state {
        CellState::Done => outcome.done_before += 1,
        CellState::Running => outcome.busy += 1,
        CellState::Pending | CellState::Failed | CellState::Differs => return true,
    }
    false
}

/// How fast this invocation gets through the sweep, for its estimate of the time left.
struct Pace {
    started: Instant,
    /// Wall time of each cell this invocation finished.
    cell_seconds: Vec<f64>,
    workers: usize,
    total: usize,
}

impl Pace {
    /// Seconds until the `queued` cells and those `running` are done: each takes the mean
    /// time of the cells finished so far (a running one, what it has left of that), shared
    /// among the workers. None before a cell finished.
    fn left(&self, queued: usize, running: &[(&Cell, Child, Instant)]) -> Option<f64> {
        if self.cell_seconds.is_empty() {
            return None;
        }
        let mean = self.cell_seconds.iter().sum::<f64>() / self.cell_seconds.len() as f64;
        let in_flight: f64 = running
            .iter()
            .map(|(_, _, since)| (mean - since.elapsed().as_secs_f64()).max(0.0))
            .sum();
        Some((queued as f64 * mean + in_flight) / self.workers as f64)
    }
}

/// Removes the cells whose process has exited from `running`, counting and reporting how
/// each ended, with where the sweep stands.
fn reap_ended(
    sweep: &Sweep,
    running: &mut Vec<(&Cell, Child, Instant)>,
    queued: usize,
    pace: &mut Pace,
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
            CellOutcome::Done { seconds, .. } => {
                outcome.finished += 1;
                pace.cell_seconds.push(*seconds);
            }
            CellOutcome::Interrupted => outcome.interrupted += 1,
            CellOutcome::Busy => outcome.busy += 1,
            CellOutcome::Failed(error) => outcome.failed.push((cell.name.clone(), error.clone())),
        }
        let progress = SweepProgress {
            done: outcome.done_before + outcome.finished,
            total: pace.total,
            elapsed_s: pace.started.elapsed().as_secs_f64(),
            left_s: pace.left(queued, running),
        };
        observer.on(&Event::CellEnded {
            name: &cell.name,
            outcome: &ended,
            sweep: progress,
        });
    }
    Ok(())
}

/// Starts `adanoise sweep FILE --cell INDEX --pinned` for `cell`, its output going to the
/// cell's `train.log`. The cell runs as this process resolved and pinned it (with every
/// command-line override), so the child never resolves the file again.
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
        .arg("--pinned")
        .arg("--out")
        .arg(&sweep.out)
        .arg("--threads")
        .arg(threads.to_string())
        .args(logging.arguments());
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
    let s = cell_status(&dir, &cell.config);
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
