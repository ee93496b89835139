//! One training epoch: weight noise at its start, then forward, loss, backward,
//! gradient norm, gradient noise and the optimiser step for every batch, then
//! evaluation. An epoch can stop between two steps (on a signal) and later go on
//! from there, with the same batches, noise and sums as if never stopped.

use super::TrainConfig;
use super::metrics::{EpochMetrics, NoiseApplied};
use super::param_stats::{WeightSnapshot, grad_norm};
use super::precision::StepPrecision;
use super::progress::EpochProgress;
use crate::data::placement::{EvalSplit, PlacedSplit};
use crate::models::Model;
use crate::noise::{Decision, NoiseKind, add_gradient_noise, add_weight_noise};
use crate::rng::{Purpose, derived_seed};
use crate::schedule::CosineRestarts;
use burn::module::Module;
use burn::nn::loss::{CrossEntropyLoss, CrossEntropyLossConfig};
use burn::optim::lr_scheduler::LrScheduler;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Below this f16 loss scale (2^-24, f16's smallest subnormal) a run whose gradients are
/// still not finite has diverged (40 skipped steps in a row from the initial 2^16).
const MIN_LOSS_SCALE: f64 = 5.960_464_477_539_063e-8;

/// How often (in steps) running sums are read back from the device for display and NaN checks.
const READ_EVERY: u64 = 10;

/// The sums of an epoch stopped between two steps (checkpointed with the model at its start).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartialEpoch {
    pub epoch: u64,
    pub steps_done: u64,
    pub seen: u64,
    pub loss_sum: f64,
    pub correct: i64,
    pub norm_sum: f64,
    pub lr: f64,
    pub train_seconds: f64,
    /// Steps skipped for non-finite f16 gradients (not in the sums above).
    #[serde(default)]
    pub skipped_steps: u64,
}

/// Everything an epoch needs besides the model and the optimiser.
pub struct EpochContext<'a> {
    pub config: &'a TrainConfig,
    pub epoch: u64,
    pub steps: u64,
    pub device: &'a Device,
    pub quiet: bool,
    pub decision: &'a Decision,
    pub train_data: &'a PlacedSplit,
    pub test_data: &'a EvalSplit,
    /// Whether to stop between two steps (a signal arrived).
    pub should_stop: &'a dyn Fn(u64) -> bool,
}

pub enum EpochEnd {
    Finished(Box<Model>, EpochMetrics),
    /// Stopped between two steps: the model now, the model at the epoch's start, the sums.
    Stopped(Box<Model>, Box<Model>, PartialEpoch),
    Diverged(String),
}

fn noise_applied(config: &TrainConfig, decision: &Decision) -> NoiseApplied {
    if config.noise == NoiseKind::None {
        return NoiseApplied::default();
    }
    NoiseApplied {
        grad_sigma: decision.grad_sigma,
        weight_sigma: decision.weight_sigma,
    }
}

pub fn noise_note(applied: &NoiseApplied) -> String {
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

/// What one training step gives back besides the updated model (all detached, on the device).
pub struct StepOutput {
    pub model: Model,
    pub loss: Tensor<1>,
    pub logits: Tensor<2>,
    /// The global L2 norm of the clean loss gradient, when asked for.
    pub grad_norm: Option<Tensor<1>>,
    /// Whether the update was skipped: f16 gradients that were not finite (the loss scale
    /// was halved instead).
    pub skipped: bool,
}

/// One training step: forward, cross-entropy, backward, the global gradient norm (before
/// noise and weight decay), gradient noise `(kind, sigma, seed)`, and the optimiser update
/// with learning rate `lr`, computed in `precision`. Training and `adanoise bench` both run
/// exactly this.
#[allow(clippy::too_many_arguments)]
pub fn train_step(
    model: Model,
    optim: &mut ModuleOptimizer,
    loss_fn: &CrossEntropyLoss,
    images: Tensor<4>,
    labels: Tensor<1, Int>,
    lr: f64,
    measure_norm: bool,
    grad_noise: Option<(NoiseKind, f64, u64)>,
    precision: &mut StepPrecision,
) -> StepOutput {
    let logits = precision.forward(&model, images);
    let loss = loss_fn.forward(logits.clone(), labels);
    let scaled = precision.backward_loss(loss.clone());
    let mut grads = GradientsParams::from_grads(scaled.backward(), &model);
    precision.unscale(&model, &mut grads);
    let norm = if measure_norm || precision.loss_scale.is_some() {
        grad_norm(&model, &grads)
    } else {
        None
    };
    if let Some(scale) = precision.loss_scale.as_mut() {
        // One value read back per step, as PyTorch's GradScaler does.
        let finite = norm
            .as_ref()
            .is_none_or(|n| n.clone().into_scalar::<f64>().is_finite());
        scale.update(finite);
        if !finite {
            return StepOutput {
                model,
                loss: loss.detach(),
                logits: logits.detach(),
                grad_norm: None,
                skipped: true,
            };
        }
    }
    if let Some((kind, sigma, seed)) = grad_noise {
        add_gradient_noise(&model, &mut grads, kind, sigma, seed);
    }
    let model = optim.step(lr, model, grads);
    StepOutput {
        model,
        loss: loss.detach(),
        logits: logits.detach(),
        grad_norm: norm.filter(|_| measure_norm),
        skipped: false,
    }
}

/// Runs epoch `ctx.epoch`, from its start or from `resume` (a stopped epoch and its start model).
pub fn run_epoch(
    ctx: &EpochContext,
    mut model: Model,
    optim: &mut ModuleOptimizer,
    scheduler: &mut CosineRestarts,
    precision: &mut StepPrecision,
    resume: Option<(PartialEpoch, Model)>,
) -> EpochEnd {
    let started = Instant::now();
    let config = ctx.config;
    let loss_fn = CrossEntropyLossConfig::new().init(ctx.device);
    let plain = ctx.device.clone().inner();
    let applied = noise_applied(config, ctx.decision);
    let scalar = |v: f64| Tensor::<1>::from_data(TensorData::new(vec![v as f32], [1]), &plain);

    let (
        start_model,
        mut loss_sum,
        mut correct,
        mut norm_sum,
        mut seen,
        mut steps,
        mut lr,
        earlier_seconds,
        mut skipped,
    ) = match resume {
        Some((p, start_model)) => (
            start_model,
            scalar(p.loss_sum),
            Tensor::<1, Int>::from_data(TensorData::new(vec![p.correct], [1]), &plain),
            scalar(p.norm_sum),
            p.seen as usize,
            p.steps_done,
            p.lr,
            p.train_seconds,
            p.skipped_steps,
        ),
        None => {
            // w_{e-1}: the weights before this epoch's weight noise.
            let start_model = model.clone();
            if applied.weight_sigma > 0.0 {
                let seed = derived_seed(config.seed, Purpose::WeightNoise, ctx.epoch);
                model = add_weight_noise(model, config.noise, applied.weight_sigma, seed);
            }
            (
                start_model,
                scalar(0.0),
                Tensor::<1, Int>::zeros([1], &plain),
                scalar(0.0),
                0,
                0,
                0.0,
                0.0,
                0,
            )
        }
    };
    let skip = steps as usize;
    let seen_before = seen;
    let note = noise_note(&applied);
    let mut progress = EpochProgress::new(ctx.epoch, config.epochs, ctx.steps, ctx.quiet);
    let batches =
        ctx.train_data
            .epoch_batches(config.batch_size, config.seed, ctx.epoch, skip, &plain);
    for (images, labels) in batches {
        let n = labels.dims()[0];
        let (images, labels) = (Tensor::from_inner(images), Tensor::from_inner(labels));
        // Seeded by the global step: the same noise however the run was interrupted.
        let noise = (applied.grad_sigma > 0.0).then(|| {
            let seed = derived_seed(
                config.seed,
                Purpose::GradientNoise,
                scheduler.current_step(),
            );
            (config.noise, applied.grad_sigma, seed)
        });
        lr = scheduler.step();
        let out = train_step(
            model,
            optim,
            &loss_fn,
            images,
            labels.clone(),
            lr,
            true,
            noise,
            precision,
        );
        model = out.model;
        steps += 1;
        if out.skipped {
            skipped += 1;
            if let Some(scale) = precision.loss_scale.filter(|s| s.scale < MIN_LOSS_SCALE) {
                progress.finish();
                return EpochEnd::Diverged(format!(
                    "the f16 gradients of epoch {} (step {steps}) stayed non-finite down to a loss scale of {:e}: training diverged; try a lower --lr or --precision bf16",
                    ctx.epoch, scale.scale
                ));
            }
        } else {
            let hits = out
                .logits
                .inner()
                .argmax(1)
                .reshape([n])
                .equal(labels.inner())
                .int()
                .sum();
            loss_sum = loss_sum + out.loss.inner().mul_scalar(n as f64);
            correct = correct + hits;
            if let Some(norm) = out.grad_norm {
                norm_sum = norm_sum + norm;
            }
            seen += n;
        }
        if (steps % READ_EVERY == 0 || steps == ctx.steps) && seen > 0 {
            let mean_loss = loss_sum.clone().into_scalar::<f64>() / seen as f64;
            if !mean_loss.is_finite() {
                progress.finish();
                return EpochEnd::Diverged(format!(
                    "the training loss became {mean_loss} in epoch {} (step {steps}): training diverged; try a lower --lr",
                    ctx.epoch
                ));
            }
            let acc = correct.clone().into_scalar::<i64>() as f64 / seen as f64;
            let speed = (seen - seen_before).max(1) as f64 / started.elapsed().as_secs_f64();
            progress.update(steps, mean_loss, acc, lr, speed, &note);
        }
        if steps < ctx.steps && (ctx.should_stop)(scheduler.current_step()) {
            progress.finish();
            let partial = PartialEpoch {
                epoch: ctx.epoch,
                steps_done: steps,
                seen: seen as u64,
                loss_sum: loss_sum.into_scalar::<f64>(),
                correct: correct.into_scalar::<i64>(),
                norm_sum: norm_sum.into_scalar::<f64>(),
                lr,
                train_seconds: earlier_seconds + started.elapsed().as_secs_f64(),
                skipped_steps: skipped,
            };
            return EpochEnd::Stopped(Box::new(model), Box::new(start_model), partial);
        }
    }
    progress.finish();
    let train_seconds = earlier_seconds + started.elapsed().as_secs_f64();
    let train_loss = loss_sum.into_scalar::<f64>() / seen as f64;
    let train_acc = correct.into_scalar::<i64>() as f64 / seen as f64;
    if seen == 0 {
        return EpochEnd::Diverged(format!(
            "every f16 step of epoch {} had non-finite gradients: training diverged; try a lower --lr or --precision bf16",
            ctx.epoch
        ));
    }
    let grad_norm_mean = norm_sum.into_scalar::<f64>() / (steps - skipped) as f64;
    let weight_update =
        WeightSnapshot::take(&model).relative_change(&WeightSnapshot::take(&start_model));
    let eval_started = Instant::now();
    let (val_loss, val_acc) = evaluate(&model, ctx.test_data, &plain);
    if !val_loss.is_finite() {
        return EpochEnd::Diverged(format!(
            "the validation loss became {val_loss} after epoch {}: training diverged; try a lower --lr",
            ctx.epoch
        ));
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
        seconds: train_seconds + eval_started.elapsed().as_secs_f64(),
        images_per_s: seen as f64 / train_seconds,
        noise_applied: applied,
        skipped_steps: precision.loss_scale.map(|_| skipped),
        loss_scale: precision.loss_scale.map(|s| s.scale),
        decision: None,
    };
    EpochEnd::Finished(Box::new(model), metrics)
}

/// Mean cross-entropy and accuracy over `batches`, in evaluation mode (BN running statistics).
pub fn evaluate(model: &Model, data: &EvalSplit, plain: &Device) -> (f64, f64) {
    let model = model.valid();
    let loss_fn = CrossEntropyLossConfig::new().init(plain);
    let mut loss_sum = Tensor::<1>::zeros([1], plain);
    let mut correct = Tensor::<1, Int>::zeros([1], plain);
    let mut seen = 0usize;
    for (images, labels) in data.batches(plain) {
        let n = labels.dims()[0];
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
