//! One training epoch, whatever engine holds the tensors: what the policy does to
//! the weights at its start, one engine step per batch of the epoch's plan (with
//! the policy's gradient noise and labels, and what it does to the weights after
//! each update), then evaluation. An epoch can stop between two steps (on a
//! signal) and later go on from there, with the same batches, noise and sums as
//! if it had never stopped.

use super::TrainConfig;
use super::metrics::{EpochMetrics, NoiseApplied};
use crate::data::plan::epoch_plan;
use crate::engine::{
    Engine, EpochSums, EvalSet, NoiseDraw, Perturbation, Relabel, Step, WeightNoise,
};
use crate::events::{Event, Observer, Progress};
use crate::noise::NoiseKind;
use crate::noise::labels::step_labels;
use crate::rng::{Purpose, derived_seed};
use crate::schedule::CosineRestarts;
use adanoise_core::{AfterStep, PolicyConfig};
use anyhow::Result;
use burn::optim::lr_scheduler::LrScheduler;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// Below this f16 loss scale (2^-24, f16's smallest subnormal) a run whose gradients are
/// still not finite has diverged (40 skipped steps in a row from the initial 2^16).
const MIN_LOSS_SCALE: f64 = 5.960_464_477_539_063e-8;

/// How often, at most, the running sums are read back for progress and the divergence
/// check: each read waits for the device, so a GPU is never made to wait every step.
pub const READ_INTERVAL: Duration = Duration::from_secs(1);

/// The sums of an epoch stopped between two steps (checkpointed with the model at its start).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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
    /// Perturbed gradient descent: the global steps after which it perturbed, so far.
    #[serde(default)]
    pub perturbed_steps: Vec<u64>,
}

/// The noise of one epoch: its distribution, the policy, and the adaptive decision in
/// force (which the adaptive policy follows and the others ignore).
#[derive(Debug, Clone, Copy)]
pub struct NoisePlan {
    /// The distribution; `none` injects nothing.
    pub kind: NoiseKind,
    /// Who sets the sigma, and how weight noise scales.
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

    /// What an epoch of steps `first..=last`, at learning rates `lrs` (the first step's
    /// and the last's), receives; perturbed gradient descent's perturbations are added when
    /// they are known.
    pub fn applied(&self, first: u64, last: u64, epoch: u64, lrs: (f64, f64)) -> NoiseApplied {
        if self.kind == NoiseKind::None {
            return NoiseApplied::default();
        }
        let policy = &self.policy;
        let (start, end) = (self.grad_sigma(first), self.grad_sigma(last));
        let at_start = policy.epoch_start(epoch, self.decided_weight_sigma);
        let weight_sigma = at_start.map_or(0.0, |s| s.sigma);
        let (step_sigma, step_sigma_end) =
            match (policy.after_step(lrs.0), policy.after_step(lrs.1)) {
                (AfterStep::Anticorrelated { sigma }, _) => (Some(sigma), None),
                (AfterStep::Langevin { sigma }, AfterStep::Langevin { sigma: end }) => {
                    (Some(sigma), (end != sigma).then_some(end))
                }
                _ => (None, None),
            };
        NoiseApplied {
            grad_sigma: start,
            grad_sigma_end: (end != start).then_some(end),
            weight_sigma,
            weight_scale: (weight_sigma > 0.0)
                .then_some(at_start.map_or(policy.weight_scale, |s| s.scale)),
            shrink: at_start.map(|s| s.shrink).filter(|s| *s != 1.0),
            step_weight_sigma: step_sigma,
            step_weight_sigma_end: step_sigma_end,
            perturbed_steps: matches!(policy.after_step(lrs.0), AfterStep::Perturbed(_))
                .then(Vec::new),
            label_noise: policy.label_noise(),
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
    /// Training images.
    pub train_images: usize,
    /// Whether a test set is evaluated besides the validation set.
    pub has_test: bool,
    /// The noise this epoch receives.
    pub noise: NoisePlan,
    /// Whether to stop between two steps (a signal arrived), given the global step.
    pub should_stop: &'a dyn Fn(u64) -> bool,
    /// Steps between two TensorBoard points: the sums are read back at those steps too.
    pub read_every: Option<u64>,
    /// How many classes the labels take (label noise draws among them).
    pub classes: usize,
}

/// How an epoch ended.
#[derive(Debug)]
pub enum EpochEnd {
    /// All its steps ran and it was evaluated.
    Finished(Box<EpochMetrics>),
    /// Stopped between two steps, with its sums so far.
    Stopped(PartialEpoch),
    /// The loss became NaN or infinite.
    Diverged(String),
}

/// The host's side of the epoch's sums: counts, times and perturbations (the engine keeps
/// the rest).
struct Tally {
    seen: usize,
    seen_before: usize,
    steps: u64,
    skipped: u64,
    lr: f64,
    earlier_seconds: f64,
    last_read: Instant,
    perturbed: Vec<u64>,
}

impl Tally {
    fn from_partial(p: &PartialEpoch) -> Self {
        Self {
            seen: p.seen as usize,
            seen_before: p.seen as usize,
            steps: p.steps_done,
            skipped: p.skipped_steps,
            lr: p.lr,
            earlier_seconds: p.train_seconds,
            last_read: Instant::now(),
            perturbed: p.perturbed_steps.clone(),
        }
    }

    fn into_partial(self, epoch: u64, sums: EpochSums, seconds: f64) -> PartialEpoch {
        PartialEpoch {
            epoch,
            steps_done: self.steps,
            seen: self.seen as u64,
            loss_sum: sums.loss,
            correct: sums.correct,
            norm_sum: sums.grad_norm,
            lr: self.lr,
            train_seconds: self.earlier_seconds + seconds,
            skipped_steps: self.skipped,
            perturbed_steps: self.perturbed,
        }
    }
}

/// Why the steps of an epoch ended early.
enum Interruption {
    Stopped,
    Diverged(String),
}

/// Runs epoch `ctx.epoch` on `engine`, from its start or from `resume` (a stopped epoch,
/// whose starting weights the engine restored from the checkpoint). `last_perturbation`
/// is perturbed gradient descent's last perturbation step, kept across epochs.
pub fn run_epoch(
    ctx: &EpochContext,
    engine: &mut dyn Engine,
    schedule: &mut CosineRestarts,
    resume: Option<PartialEpoch>,
    last_perturbation: &mut Option<u64>,
    observer: &mut dyn Observer,
) -> Result<EpochEnd> {
    let started = Instant::now();
    let tally = match resume {
        Some(partial) => {
            engine.set_sums(EpochSums {
                loss: partial.loss_sum,
                correct: partial.correct,
                grad_norm: partial.norm_sum,
            })?;
            Tally::from_partial(&partial)
        }
        None => {
            engine.start_epoch(weight_noise(ctx))?;
            engine.set_sums(EpochSums::default())?;
            Tally::from_partial(&PartialEpoch::default())
        }
    };
    observer.on(&Event::EpochStarted {
        epoch: ctx.epoch,
        epochs: ctx.config.epochs,
        steps: ctx.steps,
        noise: &ctx.applied(),
    });
    let (tally, interruption) = train_steps(
        ctx,
        engine,
        schedule,
        tally,
        last_perturbation,
        started,
        observer,
    )?;
    match interruption {
        Some(Interruption::Diverged(message)) => Ok(EpochEnd::Diverged(message)),
        Some(Interruption::Stopped) => {
            let sums = engine.sums()?;
            let seconds = started.elapsed().as_secs_f64();
            Ok(EpochEnd::Stopped(
                tally.into_partial(ctx.epoch, sums, seconds),
            ))
        }
        None => finish_epoch(ctx, engine, schedule, tally, started),
    }
}

impl EpochContext<'_> {
    /// What this epoch receives, from its first step to its last (without the
    /// perturbations, which are known as they happen).
    fn applied(&self) -> NoiseApplied {
        let first = (self.epoch - 1) * self.steps;
        let last = first + self.steps - 1;
        let schedule = self.config.lr_schedule(self.steps);
        let lrs = (schedule.lr_at(first), schedule.lr_at(last));
        self.noise.applied(first, last, self.epoch, lrs)
    }

    /// The seed of the policy's draw for `purpose` at global step `step`.
    fn seed(&self, purpose: Purpose, step: u64) -> u64 {
        derived_seed(self.config.seed, purpose, step)
    }
}

/// What the policy does to the weights at the epoch's start, seeded by the epoch: the
/// adaptive weight noise, or shrink and perturb.
fn weight_noise(ctx: &EpochContext) -> Option<WeightNoise> {
    if ctx.noise.kind == NoiseKind::None {
        return None;
    }
    let start = ctx
        .noise
        .policy
        .epoch_start(ctx.epoch, ctx.noise.decided_weight_sigma)?;
    let purpose = if start.shrink == 1.0 {
        Purpose::WeightNoise
    } else {
        Purpose::ShrinkPerturb
    };
    Some(WeightNoise {
        draw: NoiseDraw {
            kind: ctx.config.noise,
            sigma: start.sigma,
            seed: derived_seed(ctx.config.seed, purpose, ctx.epoch),
        },
        scale: start.scale,
        shrink: start.shrink,
    })
}

/// What the policy does to the weights after the update of global step `step` (at learning
/// rate `lr`), where it acts: anti-PGD and Langevin dynamics at every step, perturbed
/// gradient descent where its rule fires (recorded in `tally`). Anti-PGD also acts after a
/// skipped f16 step, so that its draws keep telescoping; the others act only on an update.
fn after_step(
    ctx: &EpochContext,
    engine: &mut dyn Engine,
    step: u64,
    lr: f64,
    applied: bool,
    tally: &mut Tally,
    last_perturbation: &mut Option<u64>,
) -> Result<()> {
    if ctx.noise.kind == NoiseKind::None {
        return Ok(());
    }
    let kind = ctx.config.noise;
    let draw = |purpose, at, sigma| NoiseDraw {
        kind,
        sigma,
        seed: ctx.seed(purpose, at),
    };
    match ctx.noise.policy.after_step(lr) {
        AfterStep::Nothing => {}
        AfterStep::Anticorrelated { sigma } => {
            engine.perturb_weights(&Perturbation::Difference {
                next: draw(Purpose::AntiPgd, step + 1, sigma),
                previous: draw(Purpose::AntiPgd, step, sigma),
            })?;
        }
        AfterStep::Langevin { sigma } if applied => {
            engine.perturb_weights(&Perturbation::Noise(draw(Purpose::Langevin, step, sigma)))?;
        }
        AfterStep::Perturbed(rule) if applied => {
            let norm = engine.last_grad_norm()?;
            if rule.fires(step, norm, *last_perturbation) {
                engine.perturb_weights(&Perturbation::Ball {
                    kind,
                    radius: rule.radius,
                    seed: ctx.seed(Purpose::Perturbation, step),
                })?;
                *last_perturbation = Some(step);
                tally.perturbed.push(step);
            }
        }
        AfterStep::Langevin { .. } | AfterStep::Perturbed(_) => {}
    }
    Ok(())
}

/// The gradient noise of global step `step`, seeded by that step: the same noise however
/// the run was interrupted.
fn step_noise(ctx: &EpochContext, step: u64) -> Option<NoiseDraw> {
    let sigma = ctx.noise.grad_sigma(step);
    (sigma > 0.0).then(|| NoiseDraw {
        kind: ctx.config.noise,
        sigma,
        seed: derived_seed(ctx.config.seed, Purpose::GradientNoise, step),
    })
}

/// The steps of the epoch not done yet, until the last or an interruption.
fn train_steps(
    ctx: &EpochContext,
    engine: &mut dyn Engine,
    schedule: &mut CosineRestarts,
    mut tally: Tally,
    last_perturbation: &mut Option<u64>,
    started: Instant,
    observer: &mut dyn Observer,
) -> Result<(Tally, Option<Interruption>)> {
    let config = ctx.config;
    let plan = epoch_plan(ctx.train_images, config.batch_size, config.seed, ctx.epoch);
    let label_noise = ctx
        .noise
        .policy
        .label_noise()
        .filter(|_| ctx.noise.kind != NoiseKind::None);
    for (index, samples) in plan.enumerate().skip(tally.steps as usize) {
        let global = schedule.current_step();
        let grad_noise = step_noise(ctx, global);
        let labels =
            label_noise.map(|p| step_labels(config.seed, global, samples.len(), ctx.classes, p));
        tally.lr = schedule.step();
        let applied = engine.step(&Step {
            epoch: ctx.epoch,
            index,
            samples: &samples,
            lr: tally.lr,
            grad_noise,
            measure_norm: true,
            relabel: labels.as_ref().map(|l| Relabel {
                replaced: &l.replaced,
                classes: &l.classes,
            }),
        })?;
        after_step(
            ctx,
            engine,
            global,
            tally.lr,
            applied,
            &mut tally,
            last_perturbation,
        )?;
        tally.steps += 1;
        if applied {
            tally.seen += samples.len();
        } else {
            tally.skipped += 1;
            if let Some(message) = loss_scale_collapsed(ctx, engine, tally.steps) {
                return Ok((tally, Some(Interruption::Diverged(message))));
            }
        }
        if due_for_a_read(ctx, &tally, global + 1) && tally.seen > 0 {
            tally.last_read = Instant::now();
            if let Err(message) = report_progress(ctx, engine, &tally, started, observer)? {
                return Ok((tally, Some(Interruption::Diverged(message))));
            }
        }
        if tally.steps < ctx.steps && (ctx.should_stop)(schedule.current_step()) {
            return Ok((tally, Some(Interruption::Stopped)));
        }
    }
    Ok((tally, None))
}

/// Whether to read the sums back after global step `done` (1-based): at the epoch's last
/// step, where TensorBoard wants a point, or once `READ_INTERVAL` has passed.
fn due_for_a_read(ctx: &EpochContext, tally: &Tally, done: u64) -> bool {
    tally.steps == ctx.steps
        || ctx
            .read_every
            .is_some_and(|every| done.is_multiple_of(every))
        || tally.last_read.elapsed() >= READ_INTERVAL
}

fn loss_scale_collapsed(ctx: &EpochContext, engine: &dyn Engine, step: u64) -> Option<String> {
    let scale = engine.loss_scale().filter(|s| s.scale < MIN_LOSS_SCALE)?;
    Some(format!(
        "the f16 gradients of epoch {} (step {step}) stayed non-finite down to a loss scale of {:e}: training diverged; try a lower --lr or --precision bf16",
        ctx.epoch, scale.scale
    ))
}

/// Reads the running sums back, checks the loss is finite and reports progress; the inner
/// error is a divergence's message.
fn report_progress(
    ctx: &EpochContext,
    engine: &mut dyn Engine,
    tally: &Tally,
    started: Instant,
    observer: &mut dyn Observer,
) -> Result<Result<(), String>> {
    let sums = engine.sums()?;
    let loss = sums.loss / tally.seen as f64;
    if !loss.is_finite() {
        return Ok(Err(format!(
            "the training loss became {loss} in epoch {} (step {}): training diverged; {}",
            ctx.epoch,
            tally.steps,
            divergence_advice(&ctx.applied(), &ctx.noise.policy)
        )));
    }
    let fresh = (tally.seen - tally.seen_before).max(1) as f64;
    observer.on(&Event::Progress(&Progress {
        epoch: ctx.epoch,
        step: tally.steps,
        steps: ctx.steps,
        global_step: (ctx.epoch - 1) * ctx.steps + tally.steps,
        loss,
        acc: sums.correct as f64 / tally.seen as f64,
        lr: tally.lr,
        images_per_s: fresh / started.elapsed().as_secs_f64(),
    }));
    Ok(Ok(()))
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
    engine: &mut dyn Engine,
    schedule: &CosineRestarts,
    tally: Tally,
    started: Instant,
) -> Result<EpochEnd> {
    let train_seconds = tally.earlier_seconds + started.elapsed().as_secs_f64();
    if tally.seen == 0 {
        return Ok(EpochEnd::Diverged(format!(
            "every f16 step of epoch {} had non-finite gradients: training diverged; try a lower --lr or --precision bf16",
            ctx.epoch
        )));
    }
    let sums = engine.sums()?;
    let seen = tally.seen as f64;
    let weight_update = engine.weight_update()?;
    let eval_started = Instant::now();
    let (val_loss, val_acc) = engine.evaluate(EvalSet::Validation)?;
    if !val_loss.is_finite() {
        return Ok(EpochEnd::Diverged(format!(
            "the validation loss became {val_loss} after epoch {}: training diverged; {}",
            ctx.epoch,
            divergence_advice(&ctx.applied(), &ctx.noise.policy)
        )));
    }
    let test = if ctx.has_test {
        Some(engine.evaluate(EvalSet::Test)?)
    } else {
        None
    };
    let loss_scale = engine.loss_scale();
    let mut noise_applied = ctx.applied();
    if let Some(steps) = noise_applied.perturbed_steps.as_mut() {
        *steps = tally.perturbed.clone();
    }
    Ok(EpochEnd::Finished(Box::new(EpochMetrics {
        epoch: ctx.epoch,
        train_loss: sums.loss / seen,
        train_acc: sums.correct as f64 / seen,
        val_loss,
        val_acc,
        test_loss: test.map(|t| t.0),
        test_acc: test.map(|t| t.1),
        grad_norm: sums.grad_norm / (tally.steps - tally.skipped) as f64,
        weight_update,
        lr: tally.lr,
        steps: schedule.current_step(),
        seconds: train_seconds + eval_started.elapsed().as_secs_f64(),
        images_per_s: seen / train_seconds,
        noise_applied,
        skipped_steps: loss_scale.map(|_| tally.skipped),
        loss_scale: loss_scale.map(|s| s.scale),
        decision: None,
    })))
}
