//! Training batches assembled on the host, for an engine that uploads them: a
//! background thread augments an epoch's batches ahead of the steps that use them,
//! following the epoch's plan from where the run is in it; a step off that plan
//! is assembled on the spot.

use super::Step;
use crate::data::Split;
use crate::data::augment::{Batch, BatchStream, Normalization, materialize};
use std::sync::Arc;

/// The background stream of one epoch, at the batch it gives next.
struct Stream {
    epoch: u64,
    next: usize,
    batches: BatchStream,
}

/// A training split's batches, made on the host.
pub struct HostBatches {
    split: Arc<Split>,
    batch_size: usize,
    seed: u64,
    stream: Option<Stream>,
}

impl HostBatches {
    /// The batches of `split` for a run with this batch size and seed.
    pub fn new(split: Arc<Split>, batch_size: usize, seed: u64) -> Self {
        Self {
            split,
            batch_size,
            seed,
            stream: None,
        }
    }

    /// The batch of `step`'s samples.
    pub fn batch(&mut self, step: &Step) -> Batch {
        match self.streamed(step) {
            Some(batch) => batch,
            None => materialize(&self.split, step.samples, &Normalization::CIFAR10.table()),
        }
    }

    /// The stream's batch for `step`, (re)starting the stream where the step is in the
    /// epoch's plan; `None` when the step's samples are not the plan's.
    fn streamed(&mut self, step: &Step) -> Option<Batch> {
        let at_step = self
            .stream
            .as_ref()
            .is_some_and(|s| s.epoch == step.epoch && s.next == step.index);
        if !at_step {
            self.stream = Some(Stream {
                epoch: step.epoch,
                next: step.index,
                batches: BatchStream::start_at(
                    self.split.clone(),
                    self.batch_size,
                    Normalization::CIFAR10,
                    self.seed,
                    step.epoch,
                    step.index,
                ),
            });
        }
        let stream = self.stream.as_mut().expect("started just above");
        let (samples, batch) = stream.batches.next()?;
        stream.next += 1;
        if samples.as_slice() == step.samples {
            Some(batch)
        } else {
            self.stream = None;
            None
        }
    }
}
