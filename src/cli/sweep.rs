//! `adanoise sweep`: running a sweep here, one of its cells (job arrays), listing
//! its cells, or submitting it to Slurm.

use super::SweepArgs;
use super::commands::exit_code;
use super::console::Console;
use crate::experiments::runner::{CellLogging, CellOptions};
use crate::experiments::slurm::{self, SlurmOptions, Submitted};
use crate::experiments::{
    BaseOverrides, Cell, CellRun, Sweep, SweepFile, SweepOverrides, cell_status, read_cells,
    run_cell, run_sweep,
};
use crate::train::interrupt::EXIT_INTERRUPTED;
use anyhow::Result;
use std::process::ExitCode;

/// How a cell of a sweep runs: threads and TensorBoard from the command line.
fn cell_options(args: &SweepArgs, cell: &crate::experiments::Cell) -> CellOptions {
    CellOptions {
        threads: args.threads,
        tensorboard: args.tensorboard.as_ref().map(|dir| dir.join(&cell.name)),
        tensorboard_every: args.tensorboard_every,
    }
}

pub(super) fn sweep_command(args: &SweepArgs) -> Result<ExitCode> {
    let overrides = SweepOverrides {
        base: BaseOverrides {
            set: args.set.clone(),
            data_dir: args.data_dir.clone(),
            device: args.device,
        },
        // One cell of the pinned list: filters would only hide it.
        only: if args.cell.is_some() {
            Vec::new()
        } else {
            args.only.clone()
        },
        out: args.out.clone(),
    };
    if let Some(index) = args.cell {
        return one_cell(args, &overrides, index);
    }
    let sweep = Sweep::load(&args.file, &overrides)?;
    if args.list {
        print_cells(&sweep);
        return Ok(ExitCode::SUCCESS);
    }
    if args.slurm {
        let options = SlurmOptions {
            partition: args.partition.clone(),
            gpus_per_task: args.gpus_per_task,
            cpus_per_task: args.cpus_per_task,
            time: args.time.clone(),
            array_parallelism: args.array_parallelism,
            sbatch_args: args.sbatch_arg.clone(),
            signal_grace_s: args.signal_grace,
            dry_run: args.dry_run,
            threads: args.threads,
            logging: CellLogging {
                tensorboard: args.tensorboard.clone(),
                tensorboard_every: args.tensorboard_every,
            },
        };
        submitted(&slurm::submit(&sweep, &options)?, &sweep, args);
        return Ok(ExitCode::SUCCESS);
    }
    all_cells(args, &sweep)
}

/// `--cell INDEX`: one cell of the list pinned in the output directory (a job array's
/// task, or a sweep's own worker process, both with `--pinned`; or a user's command).
fn one_cell(args: &SweepArgs, overrides: &SweepOverrides, index: usize) -> Result<ExitCode> {
    // The sweep file, read at most once and only when needed: a job array's task (with
    // `--out` and `--pinned`, its cells pinned) never reads it.
    let mut file = None;
    let out = match &args.out {
        Some(out) => out.clone(),
        None => read_once(&mut file, args)?.out_dir(None)?,
    };
    let cells = match read_cells(&out) {
        Ok(cells) => cells,
        Err(_) => {
            let sweep = read_once(&mut file, args)?.resolve(overrides)?;
            sweep.write_cells()?;
            sweep.cells
        }
    };
    let Some(pinned) = cells.into_iter().find(|c| c.index == index) else {
        anyhow::bail!(
            "the sweep in {} has no cell with index {index}; `adanoise sweep {} --list` shows them",
            out.display(),
            args.file.display()
        );
    };
    let cell = if args.pinned {
        as_pinned(pinned, &overrides.base)?
    } else {
        let file = read_once(&mut file, args)?;
        checked_against_file(pinned, file, overrides, &out)?
    };
    crate::train::interrupt::install()?;
    Ok(
        match run_cell(&out, &cell, &cell_options(args, &cell), &mut Console::new())? {
            CellRun::Finished => ExitCode::SUCCESS,
            CellRun::Busy => {
                println!(
                    "cell {index} ({}) is being run by another process; nothing to do",
                    cell.name
                );
                exit_code(crate::experiments::runner::EXIT_CELL_BUSY)
            }
            CellRun::Interrupted => exit_code(EXIT_INTERRUPTED),
        },
    )
}

/// The sweep file as `slot` holds it, read into it first if it is not there yet.
fn read_once<'a>(slot: &'a mut Option<SweepFile>, args: &SweepArgs) -> Result<&'a SweepFile> {
    if slot.is_none() {
        *slot = Some(SweepFile::read(&args.file)?);
    }
    Ok(slot.as_ref().expect("read just above"))
}

/// `--pinned`: the cell exactly as pinned. Only where its data lives may change (`--data-dir`,
/// a folder that moved); an option that would change what it computes is refused.
fn as_pinned(mut cell: Cell, overrides: &BaseOverrides) -> Result<Cell> {
    if !overrides.set.is_empty() || overrides.device.is_some() {
        anyhow::bail!(
            "--pinned runs cell {} ({}) exactly as pinned, but {} would change it: drop those options, or leave out --pinned to resolve the cell from the sweep file again",
            cell.index,
            cell.name,
            BaseOverrides {
                data_dir: None,
                ..overrides.clone()
            }
            .describe()
        );
    }
    if let Some(dir) = &overrides.data_dir {
        cell.config.data_dir = dir.clone();
    }
    Ok(cell)
}

/// The cell the sweep file makes at the pinned cell's index, resolved with the options given
/// now or, for those not given, the ones the cell was pinned with; refused when it is another
/// cell than the pinned one (the file was edited since). Options that only say where the run
/// executes (`data_dir`, `threads`) may differ, and are taken from the file.
fn checked_against_file(
    pinned: Cell,
    file: &SweepFile,
    overrides: &SweepOverrides,
    out: &std::path::Path,
) -> Result<Cell> {
    let base = overrides.base.or(&pinned.pinned_with);
    let resolved = file.resolve(&SweepOverrides {
        base: base.clone(),
        ..overrides.clone()
    })?;
    let now = resolved.cells.into_iter().find(|c| c.index == pinned.index);
    let differences = now
        .as_ref()
        .map(|c| pinned.config.differences(&c.config))
        .unwrap_or_default();
    let now_name = now
        .as_ref()
        .map_or("no cell".to_string(), |c| format!("'{}'", c.name));
    if let Some(now) = now.filter(|c| c.name == pinned.name && differences.is_empty()) {
        return Ok(now);
    }
    let with = if base.is_empty() {
        String::new()
    } else {
        format!(" (with {})", base.describe())
    };
    let what = if differences.is_empty() {
        String::new()
    } else {
        format!(" ({})", differences.join(", "))
    };
    anyhow::bail!(
        "cell {} pinned in {}/{} is '{}', but {}{with} now makes it {now_name}{what}: the file changed since the cells were pinned. \
         Run `adanoise sweep {}` (which re-pins the file's cells), or pass --pinned to run the pinned cell",
        pinned.index,
        out.display(),
        crate::experiments::sweep::CELLS_FILE,
        pinned.name,
        file.path().display(),
        file.path().display()
    )
}

/// Runs every cell not done, `--workers` at a time, and says how it went.
fn all_cells(args: &SweepArgs, sweep: &Sweep) -> Result<ExitCode> {
    crate::train::interrupt::install_for_sweep()?;
    let logging = CellLogging {
        tensorboard: args.tensorboard.clone(),
        tensorboard_every: args.tensorboard_every,
    };
    let outcome = run_sweep(
        sweep,
        args.workers,
        args.threads,
        &logging,
        &mut Console::new(),
    )?;
    println!(
        "sweep {}: {} done before, {} finished now, {} failed, {} running elsewhere, {} interrupted",
        sweep.out.display(),
        outcome.done_before,
        outcome.finished,
        outcome.failed.len(),
        outcome.busy,
        outcome.interrupted
    );
    if !outcome.failed.is_empty() {
        for (name, error) in &outcome.failed {
            eprintln!("failed: {name}: {error}");
        }
        anyhow::bail!(
            "{} of {} cells failed (recorded in each cell's failed.json); fix the cause and run the sweep again to retry them",
            outcome.failed.len(),
            sweep.cells.len()
        );
    }
    if outcome.interrupted > 0 || crate::train::interrupt::requested() {
        eprintln!(
            "interrupted: {} running cell(s) wrote a checkpoint; run the same command again to continue",
            outcome.interrupted
        );
        return Ok(exit_code(EXIT_INTERRUPTED));
    }
    Ok(ExitCode::SUCCESS)
}

/// Says what `--slurm` did.
fn submitted(what: &Submitted, sweep: &Sweep, args: &SweepArgs) {
    match what {
        Submitted::NothingToDo => println!(
            "every cell of {} is done; nothing to submit",
            sweep.out.display()
        ),
        Submitted::DryRun {
            script,
            script_file,
            tasks_file,
            tasks,
        } => {
            print!("{script}");
            eprintln!(
                "(dry run: {tasks} array tasks; script {} and task list {} written, nothing submitted)",
                script_file.display(),
                tasks_file.display()
            );
        }
        Submitted::Submitted(sub) => {
            println!(
                "submitted job array {} ({} tasks) from {}",
                sub.job_id,
                sub.cells.len(),
                sub.script.display()
            );
            println!("watch it:  adanoise sweep {} --list", args.file.display());
            println!("report:    adanoise report {}", sweep.out.display());
        }
    }
}

/// `--list`: every cell with its state, epochs, final val accuracy and, for a submitted
/// sweep, its Slurm task and state.
fn print_cells(sweep: &Sweep) {
    let jobs = slurm::cell_jobs(&sweep.out);
    let slurm_header = if jobs.is_empty() {
        String::new()
    } else {
        format!("{:<14} {:<11} ", "slurm task", "slurm state")
    };
    println!(
        "{:>5}  {:<8} {:>9}  {:>7}  {slurm_header}cell",
        "index", "state", "epochs", "val acc"
    );
    for cell in &sweep.cells {
        let s = cell_status(&sweep.cell_dir(cell), &cell.config);
        let acc = s
            .final_val_acc
            .map_or("-".to_string(), |a| format!("{a:.4}"));
        let job = if jobs.is_empty() {
            String::new()
        } else {
            let (task, state) = jobs
                .get(&cell.index)
                .cloned()
                .unwrap_or(("-".into(), "-".into()));
            format!("{task:<14} {state:<11} ")
        };
        let epochs = format!("{}/{}", s.epochs_done, s.epochs);
        let error = s.error.map_or(String::new(), |e| format!("  ({e})"));
        println!(
            "{:>5}  {:<8} {epochs:>9}  {acc:>7}  {job}{}{error}",
            cell.index, s.state, cell.name
        );
    }
}
