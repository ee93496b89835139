//! The one reporting interface of the library: training, data loading and sweeps
//! describe what they do as [`Event`]s sent to an [`Observer`]. The library
//! never prints; the command line renders the events (progress bars on a
//! terminal, log lines in files), tests and embedding programs may ignore them.

use crate::train::metrics::{EpochMetrics, NoiseApplied};
use adanoise_core::{NoiseKind, PolicyConfig};
use std::path::Path;

/// What a run, a data load or a sweep reports as it goes.
#[derive(Debug)]
pub enum Event<'a> {
    /// Something worth a line in the log: images being decoded, a sweep's plan.
    Notice(&'a str),
    /// Something the user should know went wrong without stopping the work: a cache that
    /// could not be written, a run directory a report skips.
    Warning(&'a str),
    /// A download progressed: `done` bytes of `total` (when the server said).
    Download {
        /// What is downloaded.
        url: &'a str,
        /// Bytes received so far.
        done: u64,
        /// Bytes expected, when known.
        total: Option<u64>,
    },
    /// A run is about to train its first (or next) epoch.
    RunStarted(&'a RunStart<'a>),
    /// The run directory holds a finished run: nothing to do.
    AlreadyFinished {
        /// The run directory.
        dir: &'a Path,
        /// Epochs it recorded.
        epochs: u64,
    },
    /// An epoch begins.
    EpochStarted {
        /// The epoch, from 1.
        epoch: u64,
        /// Epochs of the run.
        epochs: u64,
        /// Optimiser steps in the epoch.
        steps: u64,
        /// The noise this epoch receives.
        noise: &'a NoiseApplied,
    },
    /// Steps of the current epoch are done (sent every few steps).
    Progress(&'a Progress),
    /// An epoch is recorded (metrics line, decision, checkpoint).
    EpochEnded {
        /// What it measured and decided.
        metrics: &'a EpochMetrics,
        /// Epochs of the run.
        epochs: u64,
        /// The run's noise distribution (`none`: decisions are only recorded).
        noise: NoiseKind,
        /// The run's noise policy (a baseline one follows no decision).
        policy: PolicyConfig,
    },
    /// The run stopped on request after writing a checkpoint; `--resume` continues it.
    Stopped {
        /// The epoch it stopped in or after.
        epoch: u64,
        /// Steps of that epoch done, when it stopped in the middle of it.
        step: Option<(u64, u64)>,
    },
    /// A sweep cell started in its own process.
    CellStarted {
        /// How many cells this invocation started so far, this one included.
        started: usize,
        /// Cells it will start in all.
        total: usize,
        /// The cell's directory name.
        name: &'a str,
        /// Its grid values, `key=value, ...`.
        values: &'a str,
    },
    /// A sweep cell's process ended.
    CellEnded {
        /// The cell's directory name.
        name: &'a str,
        /// How it ended.
        outcome: &'a CellOutcome,
        /// Where the whole sweep stands now.
        sweep: SweepProgress,
    },
}

/// How a sweep cell's process ended, as a sweep reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum CellOutcome {
    /// Finished all its epochs.
    Done {
        /// Wall time of this process.
        seconds: f64,
        /// Final validation accuracy.
        val_acc: Option<f64>,
    },
    /// Stopped by a signal after writing a checkpoint.
    Interrupted,
    /// Another process holds the cell.
    Busy,
    /// Failed; the message is also in the cell's `failed.json`.
    Failed(String),
}

/// Where a sweep stands: cells done of all, and an estimate of the time left.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SweepProgress {
    /// Cells done (before this invocation or by it).
    pub done: usize,
    /// Cells of the sweep (after `--only`).
    pub total: usize,
    /// Seconds this invocation has run.
    pub elapsed_s: f64,
    /// Estimated seconds until the cells still to run are done, from the cells this
    /// invocation finished (none before the first).
    pub left_s: Option<f64>,
}

/// What a run says when it starts or resumes.
#[derive(Debug)]
pub struct RunStart<'a> {
    /// The run directory.
    pub dir: &'a Path,
    /// `"training tiny-cnn (545,098 trainable parameters) with sgd lr 0.05 on cpu"`-style
    /// description of what trains.
    pub what: String,
    /// Training, validation and test images.
    pub images: (usize, usize, Option<usize>),
    /// Optimiser steps per epoch.
    pub steps_per_epoch: u64,
    /// Where a resumed run continues: after epoch `.0`, at step `.1` of the next one.
    pub resumed: Option<(u64, Option<u64>)>,
    /// Epochs the run trains.
    pub epochs: u64,
    /// Seconds spent on it by earlier processes (a resumed run).
    pub earlier_seconds: f64,
}

/// The running figures of the current epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// The epoch, from 1.
    pub epoch: u64,
    /// Steps done in it.
    pub step: u64,
    /// Steps it has.
    pub steps: u64,
    /// Optimiser steps of the whole run so far.
    pub global_step: u64,
    /// Mean training loss so far.
    pub loss: f64,
    /// Training accuracy so far.
    pub acc: f64,
    /// Learning rate of the last step.
    pub lr: f64,
    /// Training images per second in this epoch.
    pub images_per_s: f64,
}

/// Receives the events of a run, a data load or a sweep.
pub trait Observer {
    /// Called for every event, in order.
    fn on(&mut self, event: &Event);
}

/// Ignores every event (tests, programs with their own display).
#[derive(Debug, Default, Clone, Copy)]
pub struct Silent;

impl Observer for Silent {
    fn on(&mut self, _event: &Event) {}
}

/// Collects notices and warnings (and nothing else), for tests that check what was
/// reported.
#[derive(Debug, Default, Clone)]
pub struct Notices(pub Vec<String>);

impl Observer for Notices {
    fn on(&mut self, event: &Event) {
        if let Event::Notice(text) | Event::Warning(text) = event {
            self.0.push(text.to_string());
        }
    }
}
