//! What each subcommand does, on top of the library.

use super::console::Console;
use super::{
    BenchArgs, Command, DataCommand, LrScheduleArgs, NoiseReplayArgs, ReportArgs, TrainArgs,
};
use crate::bench::{self, BenchOptions};
use crate::models::{ModelKind, trainable_params};
use crate::noise::NoiseSchedulerConfig;
use crate::noise::replay::{read_observations, replay};
use crate::report::{Format, figures, find_some_runs, render, tables};
use crate::schedule::CosineRestartsConfig;
use crate::train::config::WEIGHT_NOISE_SCALE_KEY;
use crate::train::interrupt::EXIT_INTERRUPTED;
use crate::train::{RunOptions, TrainConfig, train_with};
use anyhow::{Context, Result};
use burn::tensor::Device;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// Runs a subcommand; the exit code says how it ended (75: stopped with a checkpoint).
pub(crate) fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Train(args) => train_command(*args),
        Command::Sweep(args) => super::sweep::sweep_command(&args),
        other => run_simple(other).map(|()| ExitCode::SUCCESS),
    }
}

/// The subcommands that either succeed or fail.
fn run_simple(command: Command) -> Result<()> {
    match command {
        Command::Train(_) | Command::Sweep(_) => Ok(()),
        Command::Models { json } => models_command(json),
        Command::LrSchedule(args) => lr_schedule_command(&args),
        Command::Bench(args) => bench_command(&args),
        Command::NoiseReplay(args) => noise_replay_command(&args),
        Command::Report(args) => report_command(&args),
        Command::Plot { dir } => plot_command(&dir),
        Command::Data(DataCommand::Download { data_dir }) => {
            crate::data::download::ensure_cifar10(&data_dir, &mut Console::new())?;
            crate::data::cifar_binary::load(&data_dir)?;
            println!(
                "CIFAR-10 is ready in {}",
                data_dir
                    .join(crate::data::cifar_binary::BATCHES_DIR)
                    .display()
            );
            Ok(())
        }
        Command::Data(DataCommand::Synthetic {
            data_dir,
            train,
            test,
            seed,
        }) => {
            crate::data::synthetic::write_binary_release(&data_dir, train, test, seed)?;
            println!(
                "wrote a synthetic dataset ({train} train / {test} test images) into {}",
                data_dir.display()
            );
            Ok(())
        }
    }
}

/// Merges the config file (if any) with the flags, flags winning.
pub(crate) fn resolve_train_config(args: &TrainArgs) -> Result<TrainConfig> {
    let run_config = args
        .out
        .as_ref()
        .map(|out| out.join(crate::train::run_dir::CONFIG_FILE))
        .filter(|path| args.resume && path.is_file());
    refuse_resuming_nothing(args, run_config.is_some())?;
    let mut table = match (&args.config, &run_config) {
        (Some(path), _) => TrainConfig::read_table(path)?,
        // `--resume --out RUN`: the run's own config supplies every option not given.
        (None, Some(path)) => TrainConfig::read_table(path)?,
        (None, None) => toml::Table::new(),
    };
    let overrides =
        toml::Table::try_from(args).context("could not read the command-line options")?;
    TrainConfig::merge_tables(&mut table, overrides);
    match run_config {
        // A resumed run keeps the reading it was made with (`absolute` when it names none)
        // unless one is given: a default that changed must not change a run midway.
        Some(path) if !table.contains_key(WEIGHT_NOISE_SCALE_KEY) => {
            let (stored, _) = crate::train::run_dir::read_config(&path)?;
            table.insert(
                WEIGHT_NOISE_SCALE_KEY.into(),
                stored.weight_noise_scale.name().into(),
            );
            TrainConfig::from_table(table)
        }
        _ => TrainConfig::for_new_run(table),
    }
}

/// `--resume` of a folder that holds no run, with nothing that says what to train: say so,
/// rather than ask for the options a new run needs as if the user had meant one.
fn refuse_resuming_nothing(args: &TrainArgs, has_run: bool) -> Result<()> {
    let defines_a_run = args.config.is_some() || args.model.is_some();
    if !args.resume || has_run || defines_a_run {
        return Ok(());
    }
    let Some(out) = &args.out else {
        anyhow::bail!(
            "--resume needs the run directory to continue: pass --out RUN (the folder holding its config.toml)"
        );
    };
    let what = if !out.exists() {
        "does not exist"
    } else if out.is_dir() {
        "holds no run (no config.toml)"
    } else {
        "is a file, not a run directory"
    };
    anyhow::bail!(
        "--resume --out {}: the folder {what}, so there is no run to continue. Check the path; to start a new run there, leave out --resume and give --model, --optimizer and --lr",
        out.display()
    )
}

fn train_command(args: TrainArgs) -> Result<ExitCode> {
    let config = resolve_train_config(&args)?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(config.default_run_name()));
    // One folder per run under a shared --tensorboard DIR (as a sweep gives each cell), so
    // that two runs logging there stay two runs in TensorBoard.
    let run_name = out
        .file_name()
        .map_or_else(|| PathBuf::from("run"), PathBuf::from);
    let options = RunOptions {
        resume: args.resume,
        offline: args.offline,
        tensorboard: args.tensorboard.as_ref().map(|dir| dir.join(&run_name)),
        tensorboard_every: args.tensorboard_every,
        ..Default::default()
    };
    crate::train::interrupt::install()?;
    let outcome = train_with(&config, &out, &options, &mut Console::new())?;
    if outcome.interrupted {
        return Ok(exit_code(EXIT_INTERRUPTED));
    }
    if let Some(last) = &outcome.summary.final_epoch {
        println!(
            "done: {} epochs, final val acc {:.4}, val loss {:.4}; results in {}",
            outcome.summary.epochs_done,
            last.val_acc,
            last.val_loss,
            out.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn models_command(json: bool) -> Result<()> {
    // Parameters only report that they require gradients on an autodiff device.
    let device = Device::flex().autodiff();
    let rows: Vec<(ModelKind, usize)> = ModelKind::TRAINABLE
        .iter()
        .copied()
        .map(|kind| (kind, trainable_params(&kind.build(10, &device))))
        .collect();
    if json {
        let list: Vec<_> = rows
            .iter()
            .map(|(kind, params)| serde_json::json!({"name": kind.name(), "params": params, "description": kind.description()}))
            .collect();
        println!("{}", serde_json::to_string(&list)?);
    } else {
        for (kind, params) in rows {
            println!(
                "{:<11} {:>11} params  {}",
                kind.name(),
                group_thousands(params),
                kind.description()
            );
        }
    }
    Ok(())
}

fn group_thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn lr_schedule_command(args: &LrScheduleArgs) -> Result<()> {
    let config = CosineRestartsConfig {
        lr_max: args.lr_max,
        lr_final_max: args.lr_final_max,
        lr_min: args.lr_min,
        schedule_epochs: args.epochs,
        restart_epochs: args.restart_epochs,
        t_mult: args.t_mult,
        steps_per_epoch: args.steps_per_epoch,
    };
    config.validate()?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    writeln!(out, "step,epoch,lr")?;
    for step in 0..args.epochs * args.steps_per_epoch {
        let written = writeln!(
            out,
            "{step},{},{:.12e}",
            step / args.steps_per_epoch,
            config.lr_at(step)
        );
        if written.is_err() {
            return Ok(()); // the reader closed the pipe (e.g. `| head`)
        }
    }
    let _ = out.flush();
    Ok(())
}

fn noise_replay_command(args: &NoiseReplayArgs) -> Result<()> {
    let mut table = toml::Table::new();
    let mut schedule_epochs = adanoise_core::defaults::EPOCHS;
    if let Some(path) = &args.config {
        let file = TrainConfig::read_table(path)?;
        if let Some(toml::Value::Table(t)) = file.get("noise_scheduler") {
            table = t.clone();
        }
        let length = file.get("schedule_epochs").or_else(|| file.get("epochs"));
        if let Some(n) = length.and_then(|v| v.as_integer()).filter(|n| *n > 0) {
            schedule_epochs = n as u64;
        }
    }
    TrainConfig::merge_tables(&mut table, toml::Table::try_from(&args.thresholds)?);
    let config: NoiseSchedulerConfig = toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| anyhow::anyhow!("{}", e.message().trim()))
        .context("the noise scheduler's thresholds are invalid")?;
    config.validate()?;
    let schedule_epochs = args.epochs.unwrap_or(schedule_epochs);
    if schedule_epochs == 0 {
        anyhow::bail!("--epochs (E_max) must be at least 1");
    }
    let observations = read_observations(&args.metrics)?;
    let decisions = replay(&observations, config, schedule_epochs)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for decision in decisions {
        writeln!(out, "{}", serde_json::to_string(&decision)?)?;
    }
    out.flush()?;
    Ok(())
}

/// An exit code from one of the program's own codes.
pub(super) fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(code as u8)
}

fn report_command(args: &ReportArgs) -> Result<()> {
    let runs = find_some_runs(&args.dir, 4, &mut Console::new())?;
    let mut tables = tables::build(&runs, args.lr_selection);
    if let Some(policy) = &args.against {
        tables::deltas_against(&mut tables, policy)?;
    }
    let text = match args.format {
        Format::Md => render::markdown(&tables),
        Format::Csv => render::csv(&tables)?,
        Format::Latex => render::latex(&tables),
        Format::Html => render::html(&tables, &runs)?,
    };
    match &args.out {
        Some(path) => {
            crate::fsio::write_atomic(path, text.as_bytes())?;
            println!("wrote {}", path.display());
        }
        None => print!("{text}"),
    }
    Ok(())
}

fn plot_command(dir: &std::path::Path) -> Result<()> {
    let runs = find_some_runs(dir, 4, &mut Console::new())?;
    for run in &runs {
        if run.history.is_empty() {
            println!("{}: no epoch recorded yet, skipped", run.dir.display());
            continue;
        }
        for path in figures::plot_run(run)? {
            println!("wrote {}", path.display());
        }
    }
    if runs.len() > 1 || !dir.join(crate::train::run_dir::CONFIG_FILE).exists() {
        for path in figures::save(&figures::SweepFigure(&runs), &dir.join("sweep"))? {
            println!("wrote {}", path.display());
        }
    }
    Ok(())
}

fn bench_command(args: &BenchArgs) -> Result<()> {
    use crate::bench::StepKind;
    let variants = if args.noise_overhead {
        vec![
            StepKind::Plain,
            StepKind::GradNorm,
            StepKind::GradNoise(args.grad_noise.unwrap_or(0.01)),
        ]
    } else if let Some(sigma) = args.grad_noise {
        vec![StepKind::GradNoise(sigma)]
    } else if args.grad_norm {
        vec![StepKind::GradNorm]
    } else {
        vec![StepKind::Plain]
    };
    let result = bench::run(&BenchOptions {
        model: args.model,
        optimizer: args.optimizer,
        batch_size: args.batch_size,
        steps: args.steps,
        warmup: args.warmup,
        device: args.device,
        threads: args.threads,
        variants,
        device_data: args.device_data,
        precision: args.precision,
    })?;
    if args.json {
        println!("{}", serde_json::to_string(&result)?);
        return Ok(());
    }
    println!(
        "{} {} batch {} on {} in {} ({} threads, {} timed steps per variant):",
        result.model,
        result.optimizer,
        result.batch_size,
        result.device,
        result.precision,
        result.threads,
        result.steps
    );
    if result.skipped_steps > 0 {
        println!(
            "  {} of the timed f16 steps were skipped (non-finite gradients at the loss scale)",
            result.skipped_steps
        );
    }
    for v in &result.variants {
        println!(
            "  {:<32} {:>8.1} images/s  median step {:>8.1} ms (min {:.1}, max {:.1})  x{:.3} of {}",
            v.variant,
            v.images_per_s,
            v.median_step_ms,
            v.min_step_ms,
            v.max_step_ms,
            v.ratio_to_first,
            result.variants[0].variant
        );
    }
    println!(
        "  host data pipeline (1 thread): {:.0} images/s, {:.1}x the training step's{}",
        result.host_data_images_per_s,
        result.host_data_images_per_s / result.images_per_s,
        if result.device_data {
            " (not used: batches were cut out on the device)"
        } else {
            ""
        }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands() {
        assert_eq!(group_thousands(11173962), "11,173,962");
        assert_eq!(group_thousands(714), "714");
    }
}
