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
use super::epoch::{EpochContext, EpochEnd, NoisePlan, PartialEpoch, run_epoch};
use super::interrupt;
use super::lock::RunLock;
use super::metrics::{EpochMetrics, RunStatus, Summary};
use super::record::{self, ExtraState, NoiseState};
use super::run_dir::{Opened, RunDir};
use crate::data::augment::batches_per_epoch;
use crate::data::fingerprint::DataFingerprint;
use crate::data::split::hold_out;
use crate::data::{Dataset, load_cifar10, source::train_subset};
use crate::engine::{self, Engine, EngineData, EngineRecord};
use crate::events::{Event, Observer, RunStart, Silent};
use crate::noise::{Decision, NoiseScheduler, Observation};
use crate::schedule::CosineRestarts;
use crate::tensorboard::TensorBoardObserver;
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

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
    let mut run = match Run::open(config, out, options, setup, lock)? {
        Opening::Finished(outcome) => {
            let epochs = outcome.summary.epochs_done;
            observer.on(&Event::AlreadyFinished { dir: out, epochs });
            return Ok(*outcome);
        }
        Opening::Ready(run) => *run,
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
            let resumed_from = run.schedule.current_step();
            tensorboard = TensorBoardObserver::new(dir, resumed_from, every, observer)?;
            &mut tensorboard
        }
        None => observer,
    };
    observer.on(&Event::RunStarted(&run.start()));
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
        let ctx = EpochContext {
            config,
            epoch,
            steps: run.steps_per_epoch,
            train_images: run.train_images,
            has_test: run.has_test,
            noise: run.noise_for_next_epoch(),
            should_stop: &should_stop,
            read_every: options.tensorboard.is_some().then_some(every),
            classes: run.classes,
        };
        let resume = run.resume_epoch.take();
        match run_epoch(
            &ctx,
            run.engine.as_mut(),
            &mut run.schedule,
            resume,
            &mut run.noise.last_perturbation,
            observer,
        )? {
            EpochEnd::Finished(metrics) => run.record_epoch(*metrics, observer)?,
            EpochEnd::Stopped(partial) => return run.stop_in_epoch(partial, observer),
            EpochEnd::Diverged(message) => return Err(run.diverged(message)),
        }
        if epoch < config.epochs && should_stop(run.schedule.current_step()) {
            observer.on(&Event::Stopped { epoch, step: None });
            return run.outcome(RunStatus::Running, None, true);
        }
    }
    let status = RunStatus::of_progress(run.history.len() as u64, config.epochs);
    run.outcome(status, None, false)
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
    data: Dataset,
    fingerprint: DataFingerprint,
    steps_per_epoch: u64,
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
        engine::check(&config.engine_spec())?;
        let (data, fingerprint) = load_fingerprinted(config, options.offline, observer)?;
        let steps_per_epoch = batches_per_epoch(data.train.len(), config.batch_size) as u64;
        CosineRestarts::new(config.lr_schedule(steps_per_epoch))?;
        Ok(Setup {
            data,
            fingerprint,
            steps_per_epoch,
        })
    }
}

/// Phase 2's result: a finished run, or one ready to train.
enum Opening<'a> {
    Finished(Box<Outcome>),
    Ready(Box<Run<'a>>),
}

/// A run being trained: its directory, its engine, and everything that changes from
/// epoch to epoch.
struct Run<'a> {
    config: &'a TrainConfig,
    dir: RunDir,
    /// Keeps other processes out of the run directory while this one trains it; checked
    /// before every write.
    lock: RunLock,
    fingerprint: DataFingerprint,
    engine: Box<dyn Engine>,
    schedule: CosineRestarts,
    noise: NoiseState,
    history: Vec<EpochMetrics>,
    /// A stopped epoch to go on with (the engine holds the weights at its start).
    resume_epoch: Option<PartialEpoch>,
    steps_per_epoch: u64,
    train_images: usize,
    /// Training, validation and (with a held-out split) test images.
    images: (usize, usize, Option<usize>),
    has_test: bool,
    /// How many classes the labels take.
    classes: usize,
}

impl<'a> Run<'a> {
    /// Phase 2: opens `out` fresh, or resumes the run it holds.
    fn open(
        config: &'a TrainConfig,
        out: &Path,
        options: &RunOptions,
        setup: Setup,
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
        let data = setup.data;
        let images = (
            data.train.len(),
            data.validation().len(),
            data.val.as_ref().map(|_| data.test.len()),
        );
        let has_test = data.val.is_some();
        let train_images = data.train.len();
        let classes = data.num_classes();
        let engine = engine::build(&config.engine_spec(), EngineData::of(data))?;
        let mut run = Run {
            config,
            dir: opened.dir().clone(),
            lock,
            fingerprint: setup.fingerprint,
            engine,
            schedule: CosineRestarts::new(config.lr_schedule(setup.steps_per_epoch))?,
            noise: NoiseState {
                scheduler: NoiseScheduler::new(config.noise_scheduler, config.schedule_length())?,
                next: Decision::quiet(0),
                last_perturbation: None,
            },
            history: Vec::new(),
            resume_epoch: None,
            steps_per_epoch: setup.steps_per_epoch,
            train_images,
            images,
            has_test,
            classes,
        };
        if let Opened::Resumed(_, ckpt, history) = opened {
            run.history = history;
            run.restore(*ckpt)?;
        }
        Ok(Opening::Ready(Box::new(run)))
    }

    /// Continues from a checkpoint: engine (model, optimiser, and for a stop in the middle
    /// of an epoch the weights at its start), schedule, noise state and that epoch's sums.
    fn restore(&mut self, ckpt: super::checkpoint::Checkpoint) -> Result<()> {
        let extra: ExtraState = serde_json::from_value(ckpt.state.extra.clone())
            .context("the checkpoint's noise scheduler state is unreadable; delete the run directory and train again")?;
        extra.noise.scheduler.validate_state().with_context(|| {
            format!(
                "{} holds a noise scheduler state the run cannot go on from; restore this run's own checkpoint.bin or start a new run",
                self.dir.checkpoint_path().display()
            )
        })?;
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
        let engine = engine::engine_name(self.config.device);
        if let Some(writer) = extra.engine.as_deref().filter(|w| *w != engine) {
            bail!(
                "{} was written by the {writer} engine, but this run trains on the {engine} engine (--device {}): it belongs to another run; restore this run's own checkpoint.bin or start a new run",
                self.dir.checkpoint_path().display(),
                self.config.device
            );
        }
        let record = EngineRecord {
            model: ckpt.model,
            optimizer: ckpt.optimizer,
            epoch_start: ckpt.epoch_start_model,
        };
        self.engine.restore(record, extra.loss_scale).with_context(|| {
            format!(
                "the {engine} engine cannot read the tensors of {} (written by another engine, or damaged); restore this run's own checkpoint.bin or start a new run",
                self.dir.checkpoint_path().display()
            )
        })?;
        self.schedule.set_step(ckpt.state.step);
        self.noise = extra.noise;
        self.resume_epoch = extra.partial;
        Ok(())
    }

    /// What the run tells its observer before training.
    fn start(&self) -> RunStart<'_> {
        let c = self.config;
        let resumed = (!self.history.is_empty() || self.resume_epoch.is_some()).then(|| {
            let step = self.resume_epoch.as_ref().map(|p| p.steps_done);
            (self.history.len() as u64, step)
        });
        RunStart {
            dir: &self.dir.path,
            what: format!(
                "{} ({} trainable parameters) with {} lr {} on {}",
                c.model,
                self.engine.trainable_params(),
                c.optimizer,
                c.lr,
                c.device
            ),
            images: self.images,
            steps_per_epoch: self.steps_per_epoch,
            resumed,
            epochs: c.epochs,
            earlier_seconds: self.history.iter().map(|m| m.seconds).sum::<f64>()
                + self.resume_epoch.as_ref().map_or(0.0, |p| p.train_seconds),
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
        self.checkpoint(metrics.epoch, None)?;
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

    /// Writes the checkpoint after `epochs_done` whole epochs, with the sums of a stopped
    /// epoch (and the engine's weights at its start) when there is one.
    fn checkpoint(&mut self, epochs_done: u64, partial: Option<PartialEpoch>) -> Result<()> {
        let engine = self.engine.save(partial.is_some())?;
        let extra = ExtraState {
            noise: self.noise.clone(),
            partial,
            loss_scale: self.engine.loss_scale(),
            seed: Some(self.config.seed),
            data: Some(self.fingerprint.clone()),
            engine: Some(engine::engine_name(self.config.device).to_string()),
        };
        self.lock.check()?;
        let path = self.dir.checkpoint_path();
        let step = self.schedule.current_step();
        let saved = record::save(&path, epochs_done, step, engine, &extra);
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
        mut self,
        partial: PartialEpoch,
        observer: &mut dyn Observer,
    ) -> Result<Outcome> {
        let (epoch, step) = (partial.epoch, partial.steps_done);
        self.checkpoint(epoch - 1, Some(partial))?;
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
