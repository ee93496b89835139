//! Running a training run: set-up (data, model, optimiser, schedules), resume
//! from a checkpoint, the epoch loop, and what is written after each epoch
//! (metrics line, checkpoint, summary), in the spirit of nanoGPT's `train.py`.

use super::checkpoint::{self, Checkpoint, CheckpointState};
use super::config::TrainConfig;
use super::epoch::{EpochContext, EpochEnd, PartialEpoch, noise_note, run_epoch};
use super::interrupt;
use super::metrics::{EpochMetrics, RunStatus, Summary};
use super::precision::{LossScale, StepPrecision};
use super::run_dir::{Opened, RunDir};
use crate::data::augment::batches_per_epoch;
use crate::data::placement::PlacedSplit;
use crate::data::{Dataset, load_cifar10, source::train_subset};
use crate::models::{Model, trainable_params};
use crate::noise::{Decision, NoiseKind, NoiseScheduler, Observation};
use crate::rng::{Purpose, derived_seed, with_seeded_device};
use crate::schedule::CosineRestarts;
use anyhow::{Context, Result, bail};
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{ModuleOptimizer, OptimizerRecord};
use burn::store::ModuleRecord;
use burn::tensor::{Bytes, Device, Tensor};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;

pub use super::epoch::evaluate;

/// Options of a `train` invocation that are not part of the run's config.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub resume: bool,
    /// No progress bar or log lines (tests, sweeps).
    pub quiet: bool,
    /// Refuse to download the dataset when the data folder is empty.
    pub offline: bool,
    /// Stop (as if interrupted) once this many epochs are recorded; the run stays resumable.
    pub stop_after: Option<u64>,
    /// Stop (as a signal would) after this global optimiser step; for tests.
    pub stop_at_step: Option<u64>,
}

/// How a call to [`train`] ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub summary: Summary,
    pub history: Vec<EpochMetrics>,
    /// Stopped by a signal (or `stop_at_step`) after writing a checkpoint.
    pub interrupted: bool,
}

/// The noise scheduler and the decision in force for the next epoch (checkpointed together).
#[derive(Serialize, Deserialize)]
struct NoiseState {
    scheduler: NoiseScheduler,
    next: Decision,
}

/// What a checkpoint's `extra` holds.
#[derive(Serialize, Deserialize)]
struct ExtraState {
    noise: NoiseState,
    /// Set when the checkpoint was written in the middle of an epoch.
    #[serde(default)]
    partial: Option<PartialEpoch>,
    /// The f16 loss scale (absent for other precisions).
    #[serde(default)]
    loss_scale: Option<LossScale>,
}

/// Draws every lazily initialised parameter now, while the device RNG is freshly seeded.
pub(crate) struct Materialize;

impl ModuleVisitor for Materialize {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let _ = param.val();
    }
}

/// Builds the model for a run, initialised from the run's seed.
pub fn init_model(config: &TrainConfig, classes: usize, device: &Device) -> Model {
    // Drawn on the CPU whatever the device (as PyTorch users do before `.to(device)`), so a
    // seed gives the same initial weights on every backend.
    let host = Device::flex().autodiff();
    let model = with_seeded_device(
        &host,
        derived_seed(config.seed, Purpose::ModelInit, 0),
        || {
            let model = config.model.build(classes, &host);
            model.visit(&mut Materialize);
            model
        },
    );
    // `fork` keeps which parameters require gradients; `to_device` would drop it.
    model.fork(device)
}

/// Loads the dataset a config names, with its training subset applied.
pub fn load_data(config: &TrainConfig, offline: bool) -> Result<Dataset> {
    let mut data = load_cifar10(&config.data_dir, !offline)?;
    if let Some(n) = config.train_subset {
        train_subset(&mut data, n)?;
    }
    Ok(data)
}

fn record_error(e: burn::store::RecordError) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

fn model_bytes(model: &Model) -> Result<Vec<u8>> {
    // BatchNorm running statistics keep their latest update aside until synced; `valid()`
    // syncs them (a record taken without it would lose the last step's update).
    let _ = model.valid();
    Ok(model
        .clone()
        .into_record()
        .into_bytes()
        .map_err(record_error)?
        .to_vec())
}

fn load_model(template: Model, bytes: Vec<u8>) -> Result<Model> {
    let record = ModuleRecord::from_bytes(Bytes::from_bytes_vec(bytes))
        .map_err(record_error)
        .context("the checkpoint's model record is unreadable")?;
    template
        .try_load_record(record)
        .map_err(record_error)
        .context("the checkpoint does not fit this model")
}

/// Writes the checkpoint: after a whole epoch, or in the middle of one (`partial`).
fn save_checkpoint(
    dir: &RunDir,
    epochs_done: u64,
    model: &Model,
    optim: &ModuleOptimizer,
    scheduler: &CosineRestarts,
    extra: ExtraState,
    epoch_start: Option<&Model>,
) -> Result<NoiseState> {
    let epoch_start_model = epoch_start.map(model_bytes).transpose()?;
    checkpoint::save(
        &dir.checkpoint_path(),
        &Checkpoint {
            state: CheckpointState {
                epoch: epochs_done,
                step: scheduler.current_step(),
                extra: serde_json::to_value(&extra)?,
            },
            model: model_bytes(model)?,
            optimizer: optim
                .to_record()
                .into_bytes()
                .map_err(record_error)?
                .to_vec(),
            epoch_start_model,
        },
    )?;
    Ok(extra.noise)
}

/// Runs (or resumes) a training run into `out`.
pub fn train(config: &TrainConfig, out: &Path, options: &RunOptions) -> Result<Outcome> {
    config.validate()?;
    crate::device::set_cpu_threads(config.threads);
    // Everything that can reject the input happens before the run directory is touched.
    let device = config.device.device()?;
    config
        .precision
        .check_device(&device, config.device.name())?;
    let data = load_data(config, options.offline)?;
    let train_device = device.clone().autodiff();
    let steps_per_epoch = batches_per_epoch(data.train.len(), config.batch_size) as u64;
    let mut scheduler = CosineRestarts::new(config.lr_schedule(steps_per_epoch))?;
    let opened = RunDir::open(out, config, options.resume)?;
    if let Opened::AlreadyFinished(dir, summary) = opened {
        let history = dir.read_metrics()?;
        if !options.quiet {
            println!(
                "{} already finished {} epochs; nothing to do",
                out.display(),
                summary.epochs_done
            );
        }
        return Ok(Outcome {
            summary: *summary,
            history,
            interrupted: false,
        });
    }
    let template = init_model(config, data.num_classes(), &train_device);
    let mut model = template.clone();
    let mut optim = config.optimizer.build(config.weight_decay);
    let mut noise = NoiseState {
        scheduler: NoiseScheduler::new(config.noise_scheduler, config.schedule_length()),
        next: Decision::quiet(0),
    };
    let mut resume_epoch: Option<(PartialEpoch, Model)> = None;
    let mut precision = StepPrecision::new(config.precision);

    let (dir, mut history) = match opened {
        Opened::Fresh(dir) => (dir, Vec::new()),
        Opened::Resumed(dir, ckpt, history) => {
            let ckpt = *ckpt;
            model = load_model(template.clone(), ckpt.model)?;
            let record = OptimizerRecord::from_bytes(Bytes::from_bytes_vec(ckpt.optimizer))
                .map_err(record_error)
                .context("the checkpoint's optimiser record is unreadable")?;
            optim = optim.load_record(record);
            scheduler.set_step(ckpt.state.step);
            let extra: ExtraState = serde_json::from_value(ckpt.state.extra.clone())
                .context("the checkpoint's noise scheduler state is unreadable; delete the run directory and train again")?;
            noise = extra.noise;
            precision = StepPrecision::with_loss_scale(config.precision, extra.loss_scale);
            if let (Some(partial), Some(bytes)) = (extra.partial, ckpt.epoch_start_model) {
                if !options.quiet {
                    println!(
                        "resuming {} in epoch {} after step {} of {steps_per_epoch}",
                        out.display(),
                        partial.epoch,
                        partial.steps_done
                    );
                }
                resume_epoch = Some((partial, load_model(template.clone(), bytes)?));
            } else if !options.quiet {
                println!(
                    "resuming {} after epoch {}",
                    out.display(),
                    ckpt.state.epoch
                );
            }
            (dir, history)
        }
        Opened::AlreadyFinished(..) => unreachable!("handled above"),
    };
    if !options.quiet {
        println!(
            "training {} ({} trainable parameters) with {} lr {} on {} ({} train / {} test images, {} steps per epoch)",
            config.model,
            trainable_params(&model),
            config.optimizer,
            config.lr,
            config.device,
            data.train.len(),
            data.test.len(),
            steps_per_epoch
        );
    }

    let on_device = config.data_placement.on_device(config.device);
    let train_data = PlacedSplit::new(Arc::new(data.train), on_device, &device);
    let test_data =
        PlacedSplit::new(Arc::new(data.test), on_device, &device).for_eval(config.batch_size);
    let should_stop =
        |step: u64| interrupt::requested() || options.stop_at_step.is_some_and(|s| step >= s);
    let last = options
        .stop_after
        .map_or(config.epochs, |n| n.min(config.epochs));
    let mut interrupted = false;
    for epoch in history.len() as u64 + 1..=last {
        let ctx = EpochContext {
            config,
            epoch,
            steps: steps_per_epoch,
            device: &train_device,
            quiet: options.quiet,
            decision: &noise.next,
            train_data: &train_data,
            test_data: &test_data,
            should_stop: &should_stop,
        };
        let (next_model, mut metrics) = match run_epoch(
            &ctx,
            model,
            &mut optim,
            &mut scheduler,
            &mut precision,
            resume_epoch.take(),
        ) {
            EpochEnd::Finished(m, metrics) => (*m, metrics),
            EpochEnd::Stopped(m, start, partial) => {
                let steps_done = partial.steps_done;
                save_checkpoint(
                    &dir,
                    epoch - 1,
                    &m,
                    &optim,
                    &scheduler,
                    ExtraState {
                        noise,
                        partial: Some(partial),
                        loss_scale: precision.loss_scale,
                    },
                    Some(&start),
                )?;
                if !options.quiet {
                    println!(
                        "stopped in epoch {epoch} after step {steps_done} of {steps_per_epoch}; checkpoint written: continue with --resume"
                    );
                }
                let summary =
                    Summary::from_history(&history, config.epochs, RunStatus::Running, None);
                dir.write_summary(&summary)?;
                return Ok(Outcome {
                    summary,
                    history,
                    interrupted: true,
                });
            }
            EpochEnd::Diverged(message) => {
                let summary = Summary::from_history(
                    &history,
                    config.epochs,
                    RunStatus::Diverged,
                    Some(message.clone()),
                );
                dir.write_summary(&summary)?;
                bail!(
                    "{message}. The {} epochs recorded before stay in {}",
                    history.len(),
                    out.display()
                );
            }
        };
        model = next_model;
        let decision = noise.scheduler.observe(Observation {
            epoch,
            train_loss: metrics.train_loss,
            val_loss: metrics.val_loss,
            grad_norm: metrics.grad_norm,
            weight_update: metrics.weight_update,
        });
        metrics.decision = Some(decision.clone());
        noise.next = decision;
        // The metrics line first: a kill before the checkpoint redoes this epoch on resume.
        dir.append_metrics(&metrics)?;
        let extra = ExtraState {
            noise,
            partial: None,
            loss_scale: precision.loss_scale,
        };
        noise = save_checkpoint(&dir, epoch, &model, &optim, &scheduler, extra, None)?;
        if !options.quiet {
            log_epoch(config, &metrics);
        }
        history.push(metrics);
        let status = if epoch == config.epochs {
            RunStatus::Finished
        } else {
            RunStatus::Running
        };
        dir.write_summary(&Summary::from_history(
            &history,
            config.epochs,
            status,
            None,
        ))?;
        if epoch < config.epochs && should_stop(scheduler.current_step()) {
            interrupted = true;
            if !options.quiet {
                println!("stopped after epoch {epoch}; checkpoint written: continue with --resume");
            }
            break;
        }
    }
    let status = if history.len() as u64 == config.epochs {
        RunStatus::Finished
    } else {
        RunStatus::Running
    };
    let summary = Summary::from_history(&history, config.epochs, status, None);
    dir.write_summary(&summary)?;
    Ok(Outcome {
        summary,
        history,
        interrupted,
    })
}

fn log_epoch(config: &TrainConfig, m: &EpochMetrics) {
    println!(
        "epoch {}/{}{}: train loss {:.4} acc {:.4} | val loss {:.4} acc {:.4} | grad norm {:.4} update {:.3e} | lr {:.3e} | {:.1}s {:.0} img/s",
        m.epoch,
        config.epochs,
        noise_note(&m.noise_applied),
        m.train_loss,
        m.train_acc,
        m.val_loss,
        m.val_acc,
        m.grad_norm,
        m.weight_update,
        m.lr,
        m.seconds,
        m.images_per_s
    );
    if let Some(d) = m.decision.as_ref().filter(|d| !d.flags.is_empty()) {
        println!(
            "  noise scheduler after epoch {}: {}",
            m.epoch,
            describe(d, config.noise)
        );
    }
}

/// One line on what the scheduler decided and why.
fn describe(d: &Decision, kind: NoiseKind) -> String {
    let flags: Vec<String> = d
        .flags
        .iter()
        .map(|f| {
            serde_json::to_value(f)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
        })
        .collect();
    let verb = if kind == NoiseKind::None {
        "would inject"
    } else {
        "injects"
    };
    if d.cooldown > 0 {
        format!(
            "flags {} but cooldown ({} epochs left): no noise next epoch",
            flags.join(", "),
            d.cooldown
        )
    } else {
        format!(
            "flags {}: {verb} grad sigma {:.4}, weight sigma {:.4} ({kind}) next epoch",
            flags.join(", "),
            d.grad_sigma,
            d.weight_sigma
        )
    }
}
