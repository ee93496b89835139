//! What each subcommand does, on top of the library.

use super::{BenchArgs, Command, DataCommand, LrScheduleArgs, NoiseReplayArgs, TrainArgs};
use crate::bench::{self, BenchOptions};
use crate::models::{ModelKind, trainable_params};
use crate::noise::NoiseSchedulerConfig;
use crate::noise::replay::{read_observations, replay};
use crate::schedule::CosineRestartsConfig;
use crate::train::{RunOptions, TrainConfig, train};
use anyhow::{Context, Result};
use burn::tensor::Device;
use std::io::Write;
use std::path::PathBuf;

pub fn run(command: Command) -> Result<()> {
    match command {
        Command::Train(args) => train_command(args),
        Command::Models { json } => models_command(json),
        Command::LrSchedule(args) => lr_schedule_command(&args),
        Command::Bench(args) => bench_command(&args),
        Command::NoiseReplay(args) => noise_replay_command(&args),
        Command::Data(DataCommand::Download { data_dir }) => {
            crate::data::download::ensure_cifar10(&data_dir)?;
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
pub fn resolve_train_config(args: &TrainArgs) -> Result<TrainConfig> {
    let mut table = match &args.config {
        Some(path) => TrainConfig::read_table(path)?,
        None => toml::Table::new(),
    };
    let overrides =
        toml::Table::try_from(args).context("could not read the command-line options")?;
    TrainConfig::merge_tables(&mut table, overrides);
    TrainConfig::from_table(table)
}

fn train_command(args: TrainArgs) -> Result<()> {
    let config = resolve_train_config(&args)?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(config.default_run_name()));
    let options = RunOptions {
        resume: args.resume,
        quiet: false,
        offline: args.offline,
        ..Default::default()
    };
    let outcome = train(&config, &out, &options)?;
    if let Some(last) = &outcome.summary.final_epoch {
        println!(
            "done: {} epochs, final val acc {:.4}, val loss {:.4}; results in {}",
            outcome.summary.epochs_done,
            last.val_acc,
            last.val_loss,
            out.display()
        );
    }
    Ok(())
}

fn models_command(json: bool) -> Result<()> {
    // Parameters only report that they require gradients on an autodiff device.
    let device = Device::flex().autodiff();
    let rows: Vec<(ModelKind, usize)> = ModelKind::ALL
        .into_iter()
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
    let mut schedule_epochs = 300;
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
    config
        .validate()
        .map_err(|e| anyhow::anyhow!("the noise scheduler's {e}"))?;
    let schedule_epochs = args.epochs.unwrap_or(schedule_epochs);
    if schedule_epochs == 0 {
        anyhow::bail!("--epochs (E_max) must be at least 1");
    }
    let observations = read_observations(&args.metrics)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for decision in replay(&observations, config, schedule_epochs) {
        writeln!(out, "{}", serde_json::to_string(&decision)?)?;
    }
    out.flush()?;
    Ok(())
}

fn bench_command(args: &BenchArgs) -> Result<()> {
    let result = bench::run(&BenchOptions {
        model: args.model,
        optimizer: args.optimizer,
        batch_size: args.batch_size,
        steps: args.steps,
        warmup: args.warmup,
        device: args.device,
        threads: args.threads,
        grad_norm: args.grad_norm,
        grad_noise: args.grad_noise,
    })?;
    if args.json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        println!(
            "{} {} batch {} on {} ({} threads{}): {:.1} images/s (median step {:.1} ms, min {:.1}, max {:.1}, {} steps)",
            result.model,
            result.optimizer,
            result.batch_size,
            result.device,
            result.threads,
            match (result.grad_noise, result.grad_norm) {
                (Some(s), _) => format!(", grad norm + gradient noise {s}"),
                (None, true) => ", grad norm".to_string(),
                _ => String::new(),
            },
            result.images_per_s,
            result.median_step_ms,
            result.min_step_ms,
            result.max_step_ms,
            result.steps
        );
    }
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
