//! A training run from start to end, in the phases a reader can follow:
//!
//! 1. **prepare**: device, data, schedule: everything that can reject the input,
//!    before the run directory is touched;
//! 2. **open or resume** the run directory (a resumed run continues from its
//!    checkpoint, possibly in the middle of an epoch);
//! 3. **one epoch** after another ([`run_epoch`]);
//! 4. **record** each epoch: the noise scheduler's decision, the metrics line,
//!    the checkpoint, the summary;
//! 5. **stop** when asked (a signal, a step or epoch limit) with a checkpoint
//!    that `--resume` continues from, or finish.

use super::config::TrainConfig;
use super::epoch::{
    EpochContext, EpochEnd, NoisePlan, Optimization, PartialEpoch, READ_EVERY, run_epoch,
};
use super::interrupt;
use super::lock::RunLock;
use super::metrics::{EpochMetrics, RunStatus, Summary};
use super::precision::StepPrecision;
use super::record::{self, ExtraState, NoiseState, load_model, optimizer_record};
use super::run_dir::{Opened, RunDir};
use crate::data::Split;
use crate::data::augment::batches_per_epoch;
use crate::data::fingerprint::DataFingerprint;
use crate::data::placement::{EvalSplit, PlacedSplit};
use crate::data::split::hold_out;
use crate::data::{Dataset, load_cifar10, source::train_subset};
use crate::events::{Event, Observer, RunStart, Silent};
use crate::models::{Model, trainable_params};
use crate::noise::{Decision, NoiseScheduler, Observation};
use crate::rng::{Purpose, derived_seed, with_seeded_device};
use crate::schedule::CosineRestarts;
use crate::tensorboard::TensorBoardObserver;
use anyhow::{Context, Result, bail};
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Options of a `train` invocation that are not part of the run's config.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Continue the run in the directory instead of starting one.
    pub resume: bool,
    /// Refuse to download the dataset when the data folder is empty.
    pub offline: bool,
    /// Stop (as if interrupted) once this many epochs are recorded; the run stays resumable.
    pub stop_after: Option<u64>,
    /// Stop (as a signal would) after this global optimiser step; for tests.
    pub stop_at_step: Option<u64>,
    /// Also write TensorBoard event files into this directory.
    pub tensorboard: Option<PathBuf>,
    /// Steps between two TensorBoard points of the running loss and the LR
    /// ([`DEFAULT_TENSORBOARD_EVERY`] when unset).
    pub tensorboard_every: Option<u64>,
}

/// Steps between two TensorBoard points of the running loss and the LR, by default.
pub const DEFAULT_TENSORBOARD_EVERY: u64 = 50;

/// How a call to [`train`] ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The run's summary, as written to `summary.json`.
    pub summary: Summary,
    /// Every recorded epoch.
    pub history: Vec<EpochMetrics>,
    /// Stopped by a signal (or `stop_at_step`) after writing a checkpoint.
    pub interrupted: bool,
}

/// Runs (or resumes) a training run into `out`, silently.
pub fn train(config: &TrainConfig, out: &Path, options: &RunOptions) -> Result<Outcome> {
    train_with(config, out, options, &mut Silent)
}

/// Runs (or resumes) a training run into `out`, reporting to `observer`.
pub fn train_with(
    config: &TrainConfig,
    out: &Path,
    options: &RunOptions,
    observer: &mut dyn Observer,
) -> Result<Outcome> {
    train_locked(config, out, options, observer, None)
}

/// [`train_with`] for a caller that already holds the run directory's lock (a sweep's
/// cell, which takes it before deciding anything about the cell).
pub fn train_holding(
    config: &TrainConfig,
    out: &Path,
    options: &RunOptions,
    observer: &mut dyn Observer,
    lock: RunLock,
) -> Result<Outcome> {
    train_locked(config, out, options, observer, Some(lock))
}

fn train_locked(
    config: &TrainConfig,
    out: &Path,
    options: &RunOptions,
    observer: &mut dyn Observer,
    lock: Option<RunLock>,
) -> Result<Outcome> {
    let setup = Setup::prepare(config, options, observer)?;
    let resuming_a_run = options.resume && out.join(super::run_dir::CONFIG_FILE).is_file();
    let (mut run, mut model) = match Run::open(config, out, options, &setup, lock)? {
        Opening::Finished(outcome) => {
            let epochs = outcome.summary.epochs_done;
            observer.on(&Event::AlreadyFinished { dir: out, epochs });
            return Ok(*outcome);
        }
        Opening::Ready(run, model) => (*run, *model),
    };
    if resuming_a_run && run.history.is_empty() && run.resume_epoch.is_none() {
        observer.on(&Event::Notice(&format!(
            "{} holds no checkpoint yet (it stopped before its first one was complete): training from the start",
            out.display()
        )));
    }
    let every = options
        .tensorboard_every
        .unwrap_or(DEFAULT_TENSORBOARD_EVERY)
        .max(1);
    let mut tensorboard;
    let observer: &mut dyn Observer = match &options.tensorboard {
        Some(dir) => {
            let resumed_from = run.opt.schedule.current_step();
            tensorboard = TensorBoardObserver::new(dir, resumed_from, every, observer)?;
            &mut tensorboard
        }
        None => observer,
    };
    // The running sums are read back for the log at least as often as TensorBoard wants them.
    let read_every = if options.tensorboard.is_some() {
        READ_EVERY.min(every)
    } else {
        READ_EVERY
    };
    observer.on(&Event::RunStarted(&run.start(&setup, &model)));
    let data = setup.place(config);
    let lock_lost = run.lock.lost_flag();
    let should_stop = |step: u64| {
        interrupt::requested()
            || options.stop_at_step.is_some_and(|s| step >= s)
            || lock_lost.load(std::sync::atomic::Ordering::SeqCst)
    };
    let last = options
        .stop_after
        .map_or(config.epochs, |n| n.min(config.epochs));
    for epoch in run.history.len() as u64 + 1..=last {
        let noise = run.noise_for_next_epoch();
        let steps = run.steps_per_epoch;
        let mut ctx = epoch_context(config, epoch, steps, noise, &data, &should_stop);
        ctx.read_every = read_every;
        let resume = run.resume_epoch.take();
        match run_epoch(&ctx, model, &mut run.opt, resume, observer) {
            EpochEnd::Finished(next, metrics) => {
                model = *next;
                run.record_epoch(&model, metrics, observer)?;
            }
            EpochEnd::Stopped(now, start, partial) => {
                return run.stop_in_epoch(&now, &start, partial, observer);
            }
            EpochEnd::Diverged(message) => return Err(run.diverged(message)),
        }
        if epoch < config.epochs && should_stop(run.opt.schedule.current_step()) {
            observer.on(&Event::Stopped { epoch, step: None });
            return run.outcome(RunStatus::Running, None, true);
        }
    }
    let status = RunStatus::of_progress(run.history.len() as u64, config.epochs);
    run.outcome(status, None, false)
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

/// Loads the dataset a config names, with its validation split and training subset
/// applied.
pub fn load_data(
    config: &TrainConfig,
    offline: bool,
    observer: &mut dyn Observer,
) -> Result<Dataset> {
    Ok(load_fingerprinted(config, offline, observer)?.0)
}

/// [`load_data`], and the fingerprint of the data as loaded (before split and subset).
fn load_fingerprinted(
    config: &TrainConfig,
    offline: bool,
    observer: &mut dyn Observer,
) -> Result<(Dataset, DataFingerprint)> {
    let mut data = load_cifar10(&config.data_dir, !offline, observer)?;
    let fingerprint = DataFingerprint::of(&data);
    hold_out(&mut data, config.val_split, config.split_seed)?;
    if let Some(n) = config.train_subset {
        train_subset(&mut data, n)?;
    }
    Ok((data, fingerprint))
}

/// Phase 1: what a run needs before its directory is touched.
struct Setup {
    device: Device,
    train_device: Device,
    data: Dataset,
    fingerprint: DataFingerprint,
    steps_per_epoch: u64,
}

/// The run's data, placed where its batches are assembled.
struct PlacedData {
    /// The autodiff device the model trains on.
    device: Device,
    train: PlacedSplit,
    val: EvalSplit,
    /// The test set, when a validation split is held out (else it is `val`).
    test: Option<EvalSplit>,
}

impl Setup {
    fn prepare(
        config: &TrainConfig,
        options: &RunOptions,
        observer: &mut dyn Observer,
    ) -> Result<Setup> {
        config.validate()?;
        if !options.resume {
            config.check_injects()?;
        }
        if let Some(dir) = &options.tensorboard {
            crate::tensorboard::check_dir(dir)?;
        }
        crate::device::set_cpu_threads(config.threads);
        let device = config.device.device()?;
        config
            .precision
            .check_device(&device, config.device.name())?;
        let (data, fingerprint) = load_fingerprinted(config, options.offline, observer)?;
        let steps_per_epoch = batches_per_epoch(data.train.len(), config.batch_size) as u64;
        CosineRestarts::new(config.lr_schedule(steps_per_epoch))?;
        Ok(Setup {
            train_device: device.clone().autodiff(),
            device,
            data,
            fingerprint,
            steps_per_epoch,
        })
    }

    fn place(self, config: &TrainConfig) -> PlacedData {
        let on_device = config.data_placement.on_device(config.device);
        let place = |split: Split| {
            PlacedSplit::new(Arc::new(split), on_device, &self.device).for_eval(config.batch_size)
        };
        let (val, test) = match self.data.val {
            Some(val) => (place(val), Some(place(self.data.test))),
            None => (place(self.data.test), None),
        };
        let train = PlacedSplit::new(Arc::new(self.data.train), on_device, &self.device);
        PlacedData {
            device: self.train_device,
            train,
            val,
            test,
        }
    }
}

/// What epoch `epoch` reads.
fn epoch_context<'c>(
    config: &'c TrainConfig,
    epoch: u64,
    steps: u64,
    noise: NoisePlan,
    data: &'c PlacedData,
    should_stop: &'c dyn Fn(u64) -> bool,
) -> EpochContext<'c> {
    EpochContext {
        config,
        epoch,
        steps,
        device: &data.device,
        noise,
        train_data: &data.train,
        val_data: &data.val,
        test_data: data.test.as_ref(),
        should_stop,
        read_every: READ_EVERY,
    }
}

/// Phase 2's result: a finished run, or one ready to train with its model.
enum Opening<'a> {
    Finished(Box<Outcome>),
    Ready(Box<Run<'a>>, Box<Model>),
}

/// A run being trained: its directory and everything that changes from epoch to epoch.
struct Run<'a> {
    config: &'a TrainConfig,
    dir: RunDir,
    /// Keeps other processes out of the run directory while this one trains it; checked
    /// before every write.
    lock: RunLock,
    fingerprint: DataFingerprint,
    opt: Optimization,
    noise: NoiseState,
    history: Vec<EpochMetrics>,
    /// A stopped epoch to go on with, and the model at its start.
    resume_epoch: Option<(PartialEpoch, Model)>,
    steps_per_epoch: u64,
}

impl<'a> Run<'a> {
    /// Phase 2: opens `out` fresh, or resumes the run it holds.
    fn open(
        config: &'a TrainConfig,
        out: &Path,
        options: &RunOptions,
        setup: &Setup,
        lock: Option<RunLock>,
    ) -> Result<Opening<'a>> {
        let (opened, lock) = RunDir::open(out, config, &setup.fingerprint, options.resume, lock)?;
        if let Opened::AlreadyFinished(dir, summary) = opened {
            let history = dir.read_metrics()?;
            let summary = *summary;
            return Ok(Opening::Finished(Box::new(Outcome {
                summary,
                history,
                interrupted: false,
            })));
        }
        let template = init_model(config, setup.data.num_classes(), &setup.train_device);
        let steps_per_epoch = setup.steps_per_epoch;
        let mut run = Run {
            config,
            dir: opened.dir().clone(),
            lock,
            fingerprint: setup.fingerprint.clone(),
            opt: Optimization {
                optim: config.optimizer.build(config.weight_decay),
                schedule: CosineRestarts::new(config.lr_schedule(steps_per_epoch))?,
                precision: StepPrecision::new(config.precision),
            },
            noise: NoiseState {
                scheduler: NoiseScheduler::new(config.noise_scheduler, config.schedule_length())?,
                next: Decision::quiet(0),
            },
            history: Vec::new(),
            resume_epoch: None,
            steps_per_epoch,
        };
        let model = match opened {
            Opened::Resumed(_, ckpt, history) => {
                run.history = history;
                run.restore(*ckpt, template)?
            }
            _ => template,
        };
        Ok(Opening::Ready(Box::new(run), Box::new(model)))
    }

    /// Continues from a checkpoint: model, optimiser, schedule, noise state and, for a stop
    /// in the middle of an epoch, that epoch's sums and starting weights.
    fn restore(&mut self, ckpt: super::checkpoint::Checkpoint, template: Model) -> Result<Model> {
        let extra: ExtraState = serde_json::from_value(ckpt.state.extra.clone())
            .context("the checkpoint's noise scheduler state is unreadable; delete the run directory and train again")?;
        if let Some(seed) = extra.seed.filter(|s| *s != self.config.seed) {
            bail!(
                "{} was written by a run with seed {seed}, but this run's seed is {}: it belongs to another run; restore this run's own checkpoint.bin or start a new run",
                self.dir.checkpoint_path().display(),
                self.config.seed
            );
        }
        if let Some(data) = &extra.data {
            let diffs = data.differences(&self.fingerprint);
            if !diffs.is_empty() {
                bail!(
                    "{} was written for other data ({}): it belongs to another run; restore this run's own checkpoint.bin or start a new run",
                    self.dir.checkpoint_path().display(),
                    diffs.join("; ")
                );
            }
        }
        let model = load_model(template.clone(), ckpt.model)?;
        let optim = std::mem::replace(&mut self.opt.optim, self.config.optimizer.build(0.0));
        self.opt.optim = optim.load_record(optimizer_record(ckpt.optimizer)?);
        self.opt.schedule.set_step(ckpt.state.step);
        self.opt.precision =
            StepPrecision::with_loss_scale(self.config.precision, extra.loss_scale);
        self.noise = extra.noise;
        if let (Some(partial), Some(bytes)) = (extra.partial, ckpt.epoch_start_model) {
            self.resume_epoch = Some((partial, load_model(template, bytes)?));
        }
        Ok(model)
    }

    /// What the run tells its observer before training.
    fn start(&self, setup: &Setup, model: &Model) -> RunStart<'_> {
        let c = self.config;
        let resumed = (!self.history.is_empty() || self.resume_epoch.is_some()).then(|| {
            let step = self.resume_epoch.as_ref().map(|(p, _)| p.steps_done);
            (self.history.len() as u64, step)
        });
        RunStart {
            dir: &self.dir.path,
            what: format!(
                "{} ({} trainable parameters) with {} lr {} on {}",
                c.model,
                trainable_params(model),
                c.optimizer,
                c.lr,
                c.device
            ),
            images: (
                setup.data.train.len(),
                setup.data.validation().len(),
                setup.data.val.as_ref().map(|_| setup.data.test.len()),
            ),
            steps_per_epoch: self.steps_per_epoch,
            resumed,
            epochs: c.epochs,
            earlier_seconds: self.history.iter().map(|m| m.seconds).sum::<f64>()
                + self
                    .resume_epoch
                    .as_ref()
                    .map_or(0.0, |(p, _)| p.train_seconds),
        }
    }

    /// The noise the next epoch receives: the policy's, following the decision in force.
    fn noise_for_next_epoch(&self) -> NoisePlan {
        NoisePlan {
            kind: self.config.noise,
            policy: self.config.policy(),
            decided_grad_sigma: self.noise.next.grad_sigma,
            decided_weight_sigma: self.noise.next.weight_sigma,
        }
    }

    /// Phase 4: the decision, the metrics line, the checkpoint and the summary of an epoch.
    fn record_epoch(
        &mut self,
        model: &Model,
        mut metrics: EpochMetrics,
        observer: &mut dyn Observer,
    ) -> Result<()> {
        let decision = self.noise.scheduler.observe(Observation {
            epoch: metrics.epoch,
            train_loss: metrics.train_loss,
            val_loss: metrics.val_loss,
            grad_norm: metrics.grad_norm,
            weight_update: metrics.weight_update,
        })?;
        metrics.decision = Some(decision.clone());
        self.noise.next = decision;
        self.lock.check()?;
        // The metrics line first: a kill before the checkpoint redoes this epoch on resume.
        self.dir.append_metrics(&metrics)?;
        self.checkpoint(metrics.epoch, model, None, None)?;
        observer.on(&Event::EpochEnded {
            metrics: &metrics,
            epochs: self.config.epochs,
            noise: self.config.noise,
            policy: self.config.policy(),
        });
        let epoch = metrics.epoch;
        self.history.push(metrics);
        let status = RunStatus::of_progress(epoch, self.config.epochs);
        let summary = Summary::from_history(&self.history, self.config.epochs, status, None);
        self.dir.write_summary(&summary)
    }

    fn checkpoint(
        &self,
        epochs_done: u64,
        model: &Model,
        partial: Option<PartialEpoch>,
        epoch_start: Option<&Model>,
    ) -> Result<()> {
        let extra = ExtraState {
            noise: self.noise.clone(),
            partial,
            loss_scale: self.opt.precision.loss_scale,
            seed: Some(self.config.seed),
            data: Some(self.fingerprint.clone()),
        };
        self.lock.check()?;
        let path = self.dir.checkpoint_path();
        let saved = record::save(&path, epochs_done, model, &self.opt, &extra, epoch_start);
        saved.map_err(|e| {
            let e = e.context(format!(
                "could not write the checkpoint {}: fix the cause below (a full disk: free space), then `adanoise train --resume --out {}` continues from the last complete checkpoint",
                path.display(),
                self.dir.path.display()
            ));
            // Best effort: the disk may be full for the summary too.
            let summary = Summary::from_history(
                &self.history,
                self.config.epochs,
                RunStatus::Running,
                Some(format!("stopped: {e:#}")),
            );
            let _ = self.dir.write_summary(&summary);
            e
        })
    }

    /// Phase 5, in the middle of an epoch: the checkpoint keeps the epoch's sums and the
    /// weights at its start.
    fn stop_in_epoch(
        self,
        now: &Model,
        start: &Model,
        partial: PartialEpoch,
        observer: &mut dyn Observer,
    ) -> Result<Outcome> {
        let (epoch, step) = (partial.epoch, partial.steps_done);
        self.checkpoint(epoch - 1, now, Some(partial), Some(start))?;
        observer.on(&Event::Stopped {
            epoch,
            step: Some((step, self.steps_per_epoch)),
        });
        self.outcome(RunStatus::Running, None, true)
    }

    /// The error of a run whose loss became NaN or infinite; its summary says `diverged`.
    fn diverged(self, message: String) -> anyhow::Error {
        let recorded = self.history.len();
        let path = self.dir.path.clone();
        if let Err(e) = self.outcome(RunStatus::Diverged, Some(message.clone()), false) {
            return e;
        }
        anyhow::anyhow!(
            "{message}. The {recorded} epochs recorded before stay in {}",
            path.display()
        )
    }

    /// Writes the summary and hands the run's record back.
    fn outcome(
        self,
        status: RunStatus,
        message: Option<String>,
        interrupted: bool,
    ) -> Result<Outcome> {
        let summary = Summary::from_history(&self.history, self.config.epochs, status, message);
        self.lock.check()?;
        self.dir.write_summary(&summary)?;
        Ok(Outcome {
            summary,
            history: self.history,
            interrupted,
        })
    }
}
