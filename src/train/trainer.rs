//! The training loop: one flat function per epoch (train, evaluate, record,
//! checkpoint), in the spirit of nanoGPT's `train.py`.

use super::checkpoint::{self, Checkpoint, CheckpointState};
use super::config::TrainConfig;
use super::metrics::{EpochMetrics, NoiseApplied, RunStatus, Summary};
use super::param_stats::{WeightSnapshot, grad_norm};
use super::progress::EpochProgress;
use super::run_dir::{Opened, RunDir};
use crate::data::augment::batches_per_epoch;
use crate::data::{
    Batch, BatchStream, Dataset, Normalization, eval_batches, load_cifar10, source::train_subset,
};
use crate::models::{Model, trainable_params};
use crate::noise::{
    Decision, NoiseKind, NoiseScheduler, Observation, add_gradient_noise, add_weight_noise,
};
use crate::rng::{Purpose, derived_seed, with_seeded_device};
use crate::schedule::CosineRestarts;
use anyhow::{Context, Result, bail};
use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::lr_scheduler::LrScheduler;
use burn::optim::{GradientsParams, ModuleOptimizer, OptimizerRecord};
use burn::store::ModuleRecord;
use burn::tensor::{Bytes, Device, Int, Tensor, TensorData};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

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
}

/// How a call to [`train`] ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub summary: Summary,
    pub history: Vec<EpochMetrics>,
}

/// Uploads a batch: images `[n, 3, 32, 32]` and labels `[n]`.
pub fn batch_tensors(batch: Batch, device: &Device) -> (Tensor<4>, Tensor<1, Int>) {
    let n = batch.len();
    let images = Tensor::<4>::from_data(TensorData::new(batch.images, [n, 3, 32, 32]), device);
    let labels = Tensor::<1, Int>::from_data(TensorData::new(batch.labels, [n]), device);
    (images, labels)
}

/// Draws every lazily initialised parameter now, while the device RNG is freshly seeded.
struct Materialize;

impl ModuleVisitor for Materialize {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let _ = param.val();
    }
}

/// Builds the model for a run, initialised from the run's seed.
pub fn init_model(config: &TrainConfig, classes: usize, device: &Device) -> Model {
    with_seeded_device(
        device,
        derived_seed(config.seed, Purpose::ModelInit, 0),
        || {
            let model = config.model.build(classes, device);
            model.visit(&mut Materialize);
            model
        },
    )
}

/// Loads the dataset a config names, with its training subset applied.
pub fn load_data(config: &TrainConfig, offline: bool) -> Result<Dataset> {
    let mut data = load_cifar10(&config.data_dir, !offline)?;
    if let Some(n) = config.train_subset {
        train_subset(&mut data, n)?;
    }
    Ok(data)
}

/// Runs (or resumes) a training run into `out`.
pub fn train(config: &TrainConfig, out: &Path, options: &RunOptions) -> Result<Outcome> {
    config.validate()?;
    crate::device::set_cpu_threads(config.threads);
    // Everything that can reject the input happens before the run directory is touched.
    let device = config.device.device()?;
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
        });
    }
    let mut model = init_model(config, data.num_classes(), &train_device);
    let mut optim = config.optimizer.build(config.weight_decay);
    let mut noise = NoiseState {
        scheduler: NoiseScheduler::new(config.noise_scheduler, config.schedule_length()),
        next: Decision::quiet(0),
    };

    let (dir, mut history) = match opened {
        Opened::Fresh(dir) => (dir, Vec::new()),
        Opened::Resumed(dir, ckpt, history) => {
            let record = ModuleRecord::from_bytes(Bytes::from_bytes_vec(ckpt.model))
                .map_err(|e| anyhow::anyhow!("{e}"))
                .context("the checkpoint's model record is unreadable")?;
            model = model
                .try_load_record(record)
                .map_err(|e| anyhow::anyhow!("{e}"))
                .context("the checkpoint does not fit this model")?;
            let record = OptimizerRecord::from_bytes(Bytes::from_bytes_vec(ckpt.optimizer))
                .map_err(|e| anyhow::anyhow!("{e}"))
                .context("the checkpoint's optimiser record is unreadable")?;
            optim = optim.load_record(record);
            scheduler.set_step(ckpt.state.step);
            noise = serde_json::from_value(ckpt.state.extra.clone())
                .context("the checkpoint's noise scheduler state is unreadable; delete the run directory and train again")?;
            if !options.quiet {
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

    let train_split = Arc::new(data.train);
    let test_batches = eval_batches(&data.test, config.batch_size, Normalization::CIFAR10);
    let start = history.len() as u64 + 1;
    let last = options
        .stop_after
        .map_or(config.epochs, |n| n.min(config.epochs));
    for epoch in start..=last {
        let mut ctx = EpochContext {
            config,
            epoch,
            steps: steps_per_epoch,
            device: &train_device,
            quiet: options.quiet,
        };
        let result = run_epoch(
            &mut ctx,
            model,
            &mut optim,
            &mut scheduler,
            &noise.next,
            train_split.clone(),
            &test_batches,
        );
        let (next_model, metrics) = match result {
            Ok(ok) => ok,
            Err(EpochError::Diverged(message)) => {
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
            Err(EpochError::Other(e)) => return Err(e),
        };
        model = next_model;
        let mut metrics = metrics;
        let decision = noise.scheduler.observe(Observation {
            epoch,
            train_loss: metrics.train_loss,
            val_loss: metrics.val_loss,
            grad_norm: metrics.grad_norm,
            weight_update: metrics.weight_update,
        });
        metrics.decision = Some(decision.clone());
        noise.next = decision;
        dir.append_metrics(&metrics)?;
        checkpoint::save(
            &dir.checkpoint_path(),
            &Checkpoint {
                state: CheckpointState {
                    epoch,
                    step: scheduler.current_step(),
                    extra: serde_json::to_value(&noise)?,
                },
                model: model
                    .clone()
                    .into_record()
                    .into_bytes()
                    .map_err(|e| anyhow::anyhow!("{e}"))?
                    .to_vec(),
                optimizer: optim
                    .to_record()
                    .into_bytes()
                    .map_err(|e| anyhow::anyhow!("{e}"))?
                    .to_vec(),
            },
        )?;
        if !options.quiet {
            println!(
                "epoch {epoch}/{}{}: train loss {:.4} acc {:.4} | val loss {:.4} acc {:.4} | grad norm {:.4} update {:.3e} | lr {:.3e} | {:.1}s {:.0} img/s",
                config.epochs,
                noise_note(&metrics.noise_applied),
                metrics.train_loss,
                metrics.train_acc,
                metrics.val_loss,
                metrics.val_acc,
                metrics.grad_norm,
                metrics.weight_update,
                metrics.lr,
                metrics.seconds,
                metrics.images_per_s
            );
            if let Some(d) = metrics.decision.as_ref().filter(|d| !d.flags.is_empty()) {
                println!(
                    "  noise scheduler after epoch {epoch}: {}",
                    describe(d, config.noise)
                );
            }
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
    }
    let status = if history.len() as u64 == config.epochs {
        RunStatus::Finished
    } else {
        RunStatus::Running
    };
    let summary = Summary::from_history(&history, config.epochs, status, None);
    dir.write_summary(&summary)?;
    Ok(Outcome { summary, history })
}

/// The noise scheduler and the decision in force for the next epoch (checkpointed together).
#[derive(serde::Serialize, serde::Deserialize)]
struct NoiseState {
    scheduler: NoiseScheduler,
    next: Decision,
}

fn noise_note(applied: &NoiseApplied) -> String {
    let mut parts = Vec::new();
    if applied.grad_sigma > 0.0 {
        parts.push(format!("grad noise {:.4}", applied.grad_sigma));
    }
    if applied.weight_sigma > 0.0 {
        parts.push(format!("weight noise {:.4}", applied.weight_sigma));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(" [{}]", parts.join(", "))
    }
}

/// One line on what the scheduler decided and why.
fn describe(d: &Decision, kind: NoiseKind) -> String {
    let flags: Vec<String> = d
        .flags
        .iter()
        .map(|f| {
            serde_json::to_value(f)
                .map(|v| v.as_str().unwrap_or("").to_string())
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

struct EpochContext<'a> {
    config: &'a TrainConfig,
    epoch: u64,
    steps: u64,
    device: &'a Device,
    quiet: bool,
}

enum EpochError {
    Diverged(String),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for EpochError {
    fn from(e: anyhow::Error) -> Self {
        EpochError::Other(e)
    }
}

/// How often (in steps) running sums are read back from the device for display and NaN checks.
const READ_EVERY: u64 = 10;

fn run_epoch(
    ctx: &mut EpochContext,
    mut model: Model,
    optim: &mut ModuleOptimizer,
    scheduler: &mut CosineRestarts,
    decision: &Decision,
    train_split: Arc<crate::data::Split>,
    test_batches: &[Batch],
) -> Result<(Model, EpochMetrics), EpochError> {
    let started = Instant::now();
    let config = ctx.config;
    let loss_fn = CrossEntropyLossConfig::new().init(ctx.device);
    let plain = ctx.device.clone().inner();
    // What this epoch injects: the last decision, unless the run only records (`none`).
    let applied = if config.noise == NoiseKind::None {
        NoiseApplied::default()
    } else {
        NoiseApplied {
            grad_sigma: decision.grad_sigma,
            weight_sigma: decision.weight_sigma,
        }
    };
    // w_{e-1} is taken before this epoch's weight noise.
    let before = WeightSnapshot::take(&model);
    if applied.weight_sigma > 0.0 {
        let seed = derived_seed(config.seed, Purpose::WeightNoise, ctx.epoch);
        model = add_weight_noise(model, config.noise, applied.weight_sigma, seed);
    }
    let note = noise_note(&applied);
    let mut progress = EpochProgress::new(ctx.epoch, config.epochs, ctx.steps, ctx.quiet);
    let stream = BatchStream::start(
        train_split,
        config.batch_size,
        Normalization::CIFAR10,
        config.seed,
        ctx.epoch,
    );

    let mut loss_sum = Tensor::<1>::zeros([1], &plain);
    let mut correct = Tensor::<1, Int>::zeros([1], &plain);
    let mut norm_sum = Tensor::<1>::zeros([1], &plain);
    let (mut seen, mut steps, mut lr) = (0usize, 0u64, 0.0);
    for batch in stream {
        let n = batch.len();
        let (images, labels) = batch_tensors(batch, ctx.device);
        let logits = model.forward(images);
        let loss = loss_fn.forward(logits.clone(), labels.clone());
        let hits = logits
            .detach()
            .inner()
            .argmax(1)
            .reshape([n])
            .equal(labels.inner())
            .int()
            .sum();
        loss_sum = loss_sum + loss.clone().detach().inner().mul_scalar(n as f64);
        correct = correct + hits;
        let mut grads = GradientsParams::from_grads(loss.backward(), &model);
        if let Some(norm) = grad_norm(&model, &grads) {
            norm_sum = norm_sum + norm;
        }
        if applied.grad_sigma > 0.0 {
            // Seeded by the global step: the same noise however the run was interrupted.
            let seed = derived_seed(
                config.seed,
                Purpose::GradientNoise,
                scheduler.current_step(),
            );
            add_gradient_noise(&model, &mut grads, config.noise, applied.grad_sigma, seed);
        }
        lr = scheduler.step();
        model = optim.step(lr, model, grads);
        seen += n;
        steps += 1;
        if steps % READ_EVERY == 0 || steps == ctx.steps {
            let mean_loss = loss_sum.clone().into_scalar::<f64>() / seen as f64;
            if !mean_loss.is_finite() {
                return Err(EpochError::Diverged(format!(
                    "the training loss became {mean_loss} in epoch {} (step {steps}): training diverged; try a lower --lr",
                    ctx.epoch
                )));
            }
            let acc = correct.clone().into_scalar::<i64>() as f64 / seen as f64;
            let speed = seen as f64 / started.elapsed().as_secs_f64();
            progress.update(steps, mean_loss, acc, lr, speed, &note);
        }
    }
    progress.finish();
    let train_seconds = started.elapsed().as_secs_f64();
    let train_loss = loss_sum.into_scalar::<f64>() / seen as f64;
    let train_acc = correct.into_scalar::<i64>() as f64 / seen as f64;
    let grad_norm_mean = norm_sum.into_scalar::<f64>() / steps as f64;
    let weight_update = WeightSnapshot::take(&model).relative_change(&before);
    let (val_loss, val_acc) = evaluate(&model, test_batches, &plain);
    if !val_loss.is_finite() {
        return Err(EpochError::Diverged(format!(
            "the validation loss became {val_loss} after epoch {}: training diverged; try a lower --lr",
            ctx.epoch
        )));
    }
    let metrics = EpochMetrics {
        epoch: ctx.epoch,
        train_loss,
        train_acc,
        val_loss,
        val_acc,
        grad_norm: grad_norm_mean,
        weight_update,
        lr,
        steps: scheduler.current_step(),
        seconds: started.elapsed().as_secs_f64(),
        images_per_s: seen as f64 / train_seconds,
        noise_applied: applied,
        decision: None,
    };
    Ok((model, metrics))
}

/// Mean cross-entropy and accuracy over `batches`, in evaluation mode (BN running statistics).
pub fn evaluate(model: &Model, batches: &[Batch], plain: &Device) -> (f64, f64) {
    let model = model.valid();
    let loss_fn = CrossEntropyLossConfig::new().init(plain);
    let mut loss_sum = Tensor::<1>::zeros([1], plain);
    let mut correct = Tensor::<1, Int>::zeros([1], plain);
    let mut seen = 0usize;
    for batch in batches {
        let n = batch.len();
        let (images, labels) = batch_tensors(batch.clone(), plain);
        let logits = model.forward(images);
        loss_sum = loss_sum
            + loss_fn
                .forward(logits.clone(), labels.clone())
                .mul_scalar(n as f64);
        correct = correct + logits.argmax(1).reshape([n]).equal(labels).int().sum();
        seen += n;
    }
    (
        loss_sum.into_scalar::<f64>() / seen as f64,
        correct.into_scalar::<i64>() as f64 / seen as f64,
    )
}
