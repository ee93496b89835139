//! One training epoch: weight noise at its start, one [`train_step`] per batch
//! (with the epoch's gradient noise), then evaluation. An epoch can stop between
//! two steps (on a signal) and later go on from there, with the same batches,
//! noise and sums as if it had never stopped.

use super::TrainConfig;
use super::metrics::{EpochMetrics, NoiseApplied};
use super::param_stats::WeightSnapshot;
use super::precision::StepPrecision;
use super::step::{GradNoise, StepInput, StepOutput, train_step};
use crate::data::placement::{EvalSplit, PlacedSplit};
use crate::events::{Event, Observer, Progress};
use crate::models::Model;
use crate::noise::{NoiseKind, add_weight_noise};
use crate::rng::{Purpose, derived_seed};
use crate::schedule::CosineRestarts;
use adanoise_core::PolicyConfig;
use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::ModuleOptimizer;
use burn::optim::lr_scheduler::LrScheduler;
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Below this f16 loss scale (2^-24, f16's smallest subnormal) a run whose gradients are
/// still not finite has diverged (40 skipped steps in a row from the initial 2^16).
const MIN_LOSS_SCALE: f64 = 5.960_464_477_539_063e-8;

/// How often (in steps) running sums are read back from the device for display and NaN
/// checks: each read waits for the device.
pub const READ_EVERY: u64 = 10;

/// The sums of an epoch stopped between two steps (checkpointed with the model at its start).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartialEpoch {
    /// The epoch.
    pub epoch: u64,
    /// Steps done in it.
    pub steps_done: u64,
    /// Images trained on (skipped f16 steps excluded).
    pub seen: u64,
    /// Sum of the batches' losses, each times its size.
    pub loss_sum: f64,
    /// Correct predictions.
    pub correct: i64,
    /// Sum of the steps' gradient norms.
    pub norm_sum: f64,
    /// Learning rate of the last step.
    pub lr: f64,
    /// Training time spent in it so far.
    pub train_seconds: f64,
    /// Steps skipped for non-finite f16 gradients (not in the sums above).
    #[serde(default)]
    pub skipped_steps: u64,
}

/// What an epoch updates besides the model: optimiser, LR schedule, precision.
pub struct Optimization {
    /// The optimiser and its state.
    pub optim: ModuleOptimizer,
    /// The learning-rate schedule, at the next step.
    pub schedule: CosineRestarts,
    /// The step's precision (and the f16 loss scale).
    pub precision: StepPrecision,
}

/// The noise of one epoch: its distribution, the policy, and the adaptive decision in
/// force (which the adaptive policy follows and the others ignore).
#[derive(Debug, Clone, Copy)]
pub struct NoisePlan {
    /// The distribution; `none` injects nothing.
    pub kind: NoiseKind,
    /// Who sets the sigma.
    pub policy: PolicyConfig,
    /// The decision taken after the previous epoch.
    pub decided_grad_sigma: f64,
    /// The decision's weight sigma.
    pub decided_weight_sigma: f64,
}

impl NoisePlan {
    /// The gradient noise's sigma at global step `step` (0: none).
    pub fn grad_sigma(&self, step: u64) -> f64 {
        if self.kind == NoiseKind::None {
            return 0.0;
        }
        self.policy.grad_sigma(self.decided_grad_sigma, step)
    }

    /// The weight noise's sigma at the epoch's start (0: none).
    pub fn weight_sigma(&self) -> f64 {
        if self.kind == NoiseKind::None {
            return 0.0;
        }
        self.policy.weight_sigma(self.decided_weight_sigma)
    }

    /// What an epoch of steps `first..=last` receives.
    pub fn applied(&self, first: u64, last: u64) -> NoiseApplied {
        let (start, end) = (self.grad_sigma(first), self.grad_sigma(last));
        let weight_sigma = self.weight_sigma();
        NoiseApplied {
            grad_sigma: start,
            grad_sigma_end: (end != start).then_some(end),
            weight_sigma,
            weight_scale: (weight_sigma > 0.0).then_some(self.policy.weight_scale),
        }
    }
}

/// Everything an epoch reads.
pub struct EpochContext<'a> {
    /// The run's configuration.
    pub config: &'a TrainConfig,
    /// The epoch, from 1.
    pub epoch: u64,
    /// Its optimiser steps.
    pub steps: u64,
    /// The autodiff device.
    pub device: &'a Device,
    /// The noise this epoch receives.
    pub noise: NoisePlan,
    /// The training images.
    pub train_data: &'a PlacedSplit,
    /// The validation images.
    pub val_data: &'a EvalSplit,
    /// The test images, evaluated as well when a validation split is held out.
    pub test_data: Option<&'a EvalSplit>,
    /// Whether to stop between two steps (a signal arrived), given the global step.
    pub should_stop: &'a dyn Fn(u64) -> bool,
    /// Steps between two reads of the running sums (progress, NaN check).
    pub read_every: u64,
}

/// How an epoch ended.
pub enum EpochEnd {
    /// All its steps ran and it was evaluated.
    Finished(Box<Model>, EpochMetrics),
    /// Stopped between two steps: the model now, the model at the epoch's start, the sums.
    Stopped(Box<Model>, Box<Model>, PartialEpoch),
    /// The loss became NaN or infinite.
    Diverged(String),
}

/// What a step measured, to add to the sums.
struct StepMeasures {
    loss: Tensor<1>,
    logits: Tensor<2>,
    grad_norm: Option<Tensor<1>>,
}

/// The epoch's running sums, kept on the device between reads.
struct Sums {
    loss: Tensor<1>,
    correct: Tensor<1, Int>,
    norm: Tensor<1>,
    seen: usize,
    seen_before: usize,
    steps: u64,
    lr: f64,
    earlier_seconds: f64,
    skipped: u64,
}

impl Sums {
    fn scalar(v: f64, plain: &Device) -> Tensor<1> {
        Tensor::<1>::from_data(TensorData::new(vec![v as f32], [1]), plain)
    }

    fn fresh(plain: &Device) -> Self {
        Self::from_partial(&PartialEpoch::default(), plain)
    }

    fn from_partial(p: &PartialEpoch, plain: &Device) -> Self {
        Self {
            loss: Self::scalar(p.loss_sum, plain),
            correct: Tensor::<1, Int>::from_data(TensorData::new(vec![p.correct], [1]), plain),
            norm: Self::scalar(p.norm_sum, plain),
            seen: p.seen as usize,
            seen_before: p.seen as usize,
            steps: p.steps_done,
            lr: p.lr,
            earlier_seconds: p.train_seconds,
            skipped: p.skipped_steps,
        }
    }

    fn add(&mut self, out: StepMeasures, labels: Tensor<1, Int>, n: usize) {
        let hits = out
            .logits
            .inner()
            .argmax(1)
            .reshape([n])
            .equal(labels)
            .int()
            .sum();
        self.loss = self.loss.clone() + out.loss.inner().mul_scalar(n as f64);
        self.correct = self.correct.clone() + hits;
        if let Some(norm) = out.grad_norm {
            self.norm = self.norm.clone() + norm;
        }
        self.seen += n;
    }

    fn into_partial(self, epoch: u64, seconds: f64) -> PartialEpoch {
        PartialEpoch {
            epoch,
            steps_done: self.steps,
            seen: self.seen as u64,
            loss_sum: self.loss.into_scalar::<f64>(),
            correct: self.correct.into_scalar::<i64>(),
            norm_sum: self.norm.into_scalar::<f64>(),
            lr: self.lr,
            train_seconds: self.earlier_seconds + seconds,
            skipped_steps: self.skipped,
        }
    }
}

impl Default for PartialEpoch {
    fn default() -> Self {
        Self {
            epoch: 0,
            steps_done: 0,
            seen: 0,
            loss_sum: 0.0,
            correct: 0,
            norm_sum: 0.0,
            lr: 0.0,
            train_seconds: 0.0,
            skipped_steps: 0,
        }
    }
}

/// Why the steps of an epoch ended early.
enum Interruption {
    Stopped,
    Diverged(String),
}

/// Runs epoch `ctx.epoch`, from its start or from `resume` (a stopped epoch and its start model).
pub fn run_epoch(
    ctx: &EpochContext,
    model: Model,
    opt: &mut Optimization,
    resume: Option<(PartialEpoch, Model)>,
    observer: &mut dyn Observer,
) -> EpochEnd {
    let started = Instant::now();
    let plain = ctx.device.clone().inner();
    let (start_model, model, sums) = match resume {
        Some((partial, start_model)) => (start_model, model, Sums::from_partial(&partial, &plain)),
        None => {
            // w_{e-1}: the weights before this epoch's weight noise.
            let start_model = model.clone();
            (
                start_model,
                with_weight_noise(ctx, model),
                Sums::fresh(&plain),
            )
        }
    };
    observer.on(&Event::EpochStarted {
        epoch: ctx.epoch,
        epochs: ctx.config.epochs,
        steps: ctx.steps,
        noise: &ctx.applied(),
    });
    let (model, sums, interruption) = train_steps(ctx, model, opt, sums, started, observer);
    match interruption {
        Some(Interruption::Diverged(message)) => EpochEnd::Diverged(message),
        Some(Interruption::Stopped) => {
            let partial = sums.into_partial(ctx.epoch, started.elapsed().as_secs_f64());
            EpochEnd::Stopped(Box::new(model), Box::new(start_model), partial)
        }
        None => finish_epoch(ctx, model, &start_model, sums, started, opt),
    }
}

impl EpochContext<'_> {
    /// What this epoch receives, from its first step to its last.
    fn applied(&self) -> NoiseApplied {
        let first = (self.epoch - 1) * self.steps;
        self.noise.applied(first, first + self.steps - 1)
    }
}

fn with_weight_noise(ctx: &EpochContext, model: Model) -> Model {
    let sigma = ctx.noise.weight_sigma();
    if sigma <= 0.0 {
        return model;
    }
    let seed = derived_seed(ctx.config.seed, Purpose::WeightNoise, ctx.epoch);
    add_weight_noise(
        model,
        ctx.config.noise,
        sigma,
        ctx.noise.policy.weight_scale,
        seed,
    )
}

/// The gradient noise of global step `step`, seeded by that step: the same noise however
/// the run was interrupted.
fn step_noise(ctx: &EpochContext, step: u64) -> Option<GradNoise> {
    let sigma = ctx.noise.grad_sigma(step);
    (sigma > 0.0).then(|| GradNoise {
        kind: ctx.config.noise,
        sigma,
        seed: derived_seed(ctx.config.seed, Purpose::GradientNoise, step),
    })
}

/// The steps of the epoch not done yet, until the last or an interruption.
fn train_steps(
    ctx: &EpochContext,
    mut model: Model,
    opt: &mut Optimization,
    mut sums: Sums,
    started: Instant,
    observer: &mut dyn Observer,
) -> (Model, Sums, Option<Interruption>) {
    let config = ctx.config;
    let loss_fn = CrossEntropyLossConfig::new().init(ctx.device);
    let plain = ctx.device.clone().inner();
    let batches = ctx.train_data.epoch_batches(
        config.batch_size,
        config.seed,
        ctx.epoch,
        sums.steps as usize,
        &plain,
    );
    for (images, labels) in batches {
        let n = labels.dims()[0];
        let grad_noise = step_noise(ctx, opt.schedule.current_step());
        sums.lr = opt.schedule.step();
        let input = StepInput {
            images: Tensor::from_inner(images),
            labels: Tensor::from_inner(labels.clone()),
            lr: sums.lr,
            measure_norm: true,
            grad_noise,
        };
        let StepOutput {
            model: next,
            loss,
            logits,
            grad_norm,
            skipped,
        } = train_step(model, &mut opt.optim, &loss_fn, input, &mut opt.precision);
        model = next;
        sums.steps += 1;
        if skipped {
            sums.skipped += 1;
            if let Some(message) = loss_scale_collapsed(ctx, &opt.precision, sums.steps) {
                return (model, sums, Some(Interruption::Diverged(message)));
            }
        } else {
            let measures = StepMeasures {
                loss,
                logits,
                grad_norm,
            };
            sums.add(measures, labels, n);
        }
        let read_back = sums.steps.is_multiple_of(ctx.read_every) || sums.steps == ctx.steps;
        if read_back
            && sums.seen > 0
            && let Err(message) = report_progress(ctx, &sums, started, observer)
        {
            return (model, sums, Some(Interruption::Diverged(message)));
        }
        if sums.steps < ctx.steps && (ctx.should_stop)(opt.schedule.current_step()) {
            return (model, sums, Some(Interruption::Stopped));
        }
    }
    (model, sums, None)
}

fn loss_scale_collapsed(
    ctx: &EpochContext,
    precision: &StepPrecision,
    step: u64,
) -> Option<String> {
    let scale = precision.loss_scale.filter(|s| s.scale < MIN_LOSS_SCALE)?;
    Some(format!(
        "the f16 gradients of epoch {} (step {step}) stayed non-finite down to a loss scale of {:e}: training diverged; try a lower --lr or --precision bf16",
        ctx.epoch, scale.scale
    ))
}

/// Reads the running sums back, checks the loss is finite and reports progress.
fn report_progress(
    ctx: &EpochContext,
    sums: &Sums,
    started: Instant,
    observer: &mut dyn Observer,
) -> Result<(), String> {
    let loss = sums.loss.clone().into_scalar::<f64>() / sums.seen as f64;
    if !loss.is_finite() {
        return Err(format!(
            "the training loss became {loss} in epoch {} (step {}): training diverged; {}",
            ctx.epoch,
            sums.steps,
            divergence_advice(&ctx.applied(), &ctx.noise.policy)
        ));
    }
    let acc = sums.correct.clone().into_scalar::<i64>() as f64 / sums.seen as f64;
    let fresh = (sums.seen - sums.seen_before).max(1) as f64;
    observer.on(&Event::Progress(&Progress {
        epoch: ctx.epoch,
        step: sums.steps,
        steps: ctx.steps,
        global_step: (ctx.epoch - 1) * ctx.steps + sums.steps,
        loss,
        acc,
        lr: sums.lr,
        images_per_s: fresh / started.elapsed().as_secs_f64(),
    }));
    Ok(())
}

/// What to try after a divergence: less noise (through the option of the run's policy)
/// when this epoch had some, else a lower rate.
pub fn divergence_advice(noise: &NoiseApplied, policy: &PolicyConfig) -> String {
    use adanoise_core::formulas::compact;
    if noise.grad_sigma > 0.0 || noise.weight_sigma > 0.0 {
        format!(
            "this epoch had noise (grad sigma {}, weight sigma {}): try a lower {}, or a lower --lr",
            compact(noise.grad_sigma),
            compact(noise.weight_sigma),
            policy.sigma_option()
        )
    } else {
        "try a lower --lr".to_string()
    }
}

/// Evaluates the trained epoch and assembles its metrics.
fn finish_epoch(
    ctx: &EpochContext,
    model: Model,
    start_model: &Model,
    sums: Sums,
    started: Instant,
    opt: &Optimization,
) -> EpochEnd {
    let train_seconds = sums.earlier_seconds + started.elapsed().as_secs_f64();
    if sums.seen == 0 {
        return EpochEnd::Diverged(format!(
            "every f16 step of epoch {} had non-finite gradients: training diverged; try a lower --lr or --precision bf16",
            ctx.epoch
        ));
    }
    let seen = sums.seen as f64;
    let train_loss = sums.loss.into_scalar::<f64>() / seen;
    let train_acc = sums.correct.into_scalar::<i64>() as f64 / seen;
    let grad_norm = sums.norm.into_scalar::<f64>() / (sums.steps - sums.skipped) as f64;
    let weight_update =
        WeightSnapshot::take(&model).relative_change(&WeightSnapshot::take(start_model));
    let eval_started = Instant::now();
    let plain = ctx.device.clone().inner();
    let (val_loss, val_acc) = evaluate(&model, ctx.val_data, &plain);
    if !val_loss.is_finite() {
        return EpochEnd::Diverged(format!(
            "the validation loss became {val_loss} after epoch {}: training diverged; {}",
            ctx.epoch,
            divergence_advice(&ctx.applied(), &ctx.noise.policy)
        ));
    }
    let test = ctx.test_data.map(|data| evaluate(&model, data, &plain));
    let precision = &opt.precision;
    let metrics = EpochMetrics {
        epoch: ctx.epoch,
        train_loss,
        train_acc,
        val_loss,
        val_acc,
        test_loss: test.map(|t| t.0),
        test_acc: test.map(|t| t.1),
        grad_norm,
        weight_update,
        lr: sums.lr,
        steps: opt.schedule.current_step(),
        seconds: train_seconds + eval_started.elapsed().as_secs_f64(),
        images_per_s: seen / train_seconds,
        noise_applied: ctx.applied(),
        skipped_steps: precision.loss_scale.map(|_| sums.skipped),
        loss_scale: precision.loss_scale.map(|s| s.scale),
        decision: None,
    };
    EpochEnd::Finished(Box::new(model), metrics)
}

/// Mean cross-entropy and accuracy over `data`, in evaluation mode (BN running statistics).
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
