//! The engine: what owns a run's tensors and computes on them. The run itself
//! (open or resume, epochs, the scheduler's decisions, records, checkpoints'
//! bookkeeping, sweeps, reports) is one implementation in [`crate::train`],
//! written against the [`Engine`] trait; an engine builds the model, runs one
//! step in the method's order, evaluates, adds weight noise, measures the weight
//! update, keeps the epoch's sums on its device, and saves and restores its state.
//!
//! - [`burn`]: Burn's backends (flex with adanoise's CPU kernels, wgpu, cuda);
//! - `torch` (with the `tch` feature): LibTorch, driven through torch's own
//!   autograd from Rust.
//!
//! The run hands an engine the plan of each batch (which images, their crop and
//! flip: [`SamplePlan`]), so that every engine trains on the same batches, and the
//! seed of every noise draw, so that noise depends on the run, the step and the
//! parameter only. A later engine (several sweep cells trained as one packed
//! model, say) fits the same trait without any change to the run.

pub mod burn;
mod host;
#[cfg(feature = "tch")]
pub mod torch;

use crate::data::placement::DataPlacement;
use crate::data::plan::SamplePlan;
use crate::data::{Dataset, Split};
use crate::device::DeviceKind;
use crate::models::ModelKind;
use crate::optim::OptimizerKind;
use crate::train::precision::{LossScale, Precision};
use adanoise_core::{NoiseKind, WeightNoiseScale};
use anyhow::Result;
use serde::{Deserialize, Serialize};

/// One noise draw: its distribution, standard deviation and seed (per global step for
/// gradient noise, per epoch for weight noise; each parameter derives its own from it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NoiseDraw {
    /// The distribution.
    pub kind: NoiseKind,
    /// Its standard deviation (under a relative weight scale, the factor of each tensor's
    /// root mean square).
    pub sigma: f64,
    /// The seed of this draw.
    pub seed: u64,
}

/// What an epoch's start does to the weights: `w <- shrink w + noise`, the noise of the
/// draw scaled with each tensor as `scale` says (the adaptive weight noise has no shrink;
/// shrink and perturb has both).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WeightNoise {
    /// The draw (of sigma 0: no noise).
    pub draw: NoiseDraw,
    /// Absolute, relative to each tensor's root mean square, or none.
    pub scale: WeightNoiseScale,
    /// The factor the weights are multiplied by before the noise (1: none).
    pub shrink: f64,
}

/// What a policy adds to the weights right after a step's update.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Perturbation {
    /// The draw's noise, per element (Langevin dynamics).
    Noise(NoiseDraw),
    /// `next - previous`, two draws of the same distribution per element (anti-PGD's
    /// `xi_{n+1} - xi_n`, each `xi` drawn again from its own seed rather than kept).
    Difference {
        /// `xi_{n+1}`.
        next: NoiseDraw,
        /// `xi_n`.
        previous: NoiseDraw,
    },
    /// A vector over all trainable weights together, of radius `radius`: uniform in the
    /// ball (`uniform`), or Gaussian with `radius^2 / d` per element for `d` weights, whose
    /// norm is then about `radius` (`gaussian`). Perturbed gradient descent.
    Ball {
        /// The distribution.
        kind: NoiseKind,
        /// The radius.
        radius: f64,
        /// The seed of the draw.
        seed: u64,
    },
}

/// Label noise of one step: the batch positions whose label is replaced, and by which
/// class (drawn by the run, so that every engine trains on the same labels).
#[derive(Debug, Clone, Copy)]
pub struct Relabel<'a> {
    /// Whether each position's label is replaced.
    pub replaced: &'a [bool],
    /// The class each position takes where replaced (its own label elsewhere).
    pub classes: &'a [i64],
}

/// One training step as the run asks for it.
#[derive(Debug, Clone, Copy)]
pub struct Step<'a> {
    /// The epoch (from 1) the batch belongs to.
    pub epoch: u64,
    /// The batch's position in the epoch's plan.
    pub index: usize,
    /// Which training images, cropped and flipped how.
    pub samples: &'a [SamplePlan],
    /// The learning rate of this step.
    pub lr: f64,
    /// Gradient noise, if this step gets any.
    pub grad_noise: Option<NoiseDraw>,
    /// Whether to compute the global gradient norm (always, in training).
    pub measure_norm: bool,
    /// Label noise: the labels the loss takes instead of the true ones at some positions
    /// (accuracy and the recorded loss stay on the true labels).
    pub relabel: Option<Relabel<'a>>,
}

/// The sums an epoch's steps add up on the engine's device, read back on request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochSums {
    /// Sum over the steps of the batch's mean loss times its size: the cross-entropy
    /// against the true labels, without smoothing, whatever the loss trained on.
    pub loss: f64,
    /// Correct predictions.
    pub correct: i64,
    /// Sum over the steps of the global gradient norm.
    pub grad_norm: f64,
}

/// Which held-out images to evaluate on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvalSet {
    /// The validation split (the test set when none is held out).
    Validation,
    /// The test set, when a validation split is held out.
    Test,
}

/// An engine's state for a checkpoint, as opaque bytes in its own format.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineRecord {
    /// The model's weights and BatchNorm statistics.
    pub model: Vec<u8>,
    /// The optimiser's state.
    pub optimizer: Vec<u8>,
    /// The weights at the start of the epoch, for a checkpoint in its middle.
    pub epoch_start: Option<Vec<u8>>,
}

/// What owns a run's tensors: the model, its optimiser, the data on the device.
pub trait Engine {
    /// The model's trainable parameter count (BatchNorm statistics excluded).
    fn trainable_params(&self) -> usize;

    /// Begins an epoch: remembers the weights as its start (for its weight update), then
    /// shrinks them and adds the weight noise, if any.
    fn start_epoch(&mut self, noise: Option<WeightNoise>) -> Result<()>;

    /// Adds a policy's perturbation to the trainable weights, after a step's update.
    fn perturb_weights(&mut self, perturbation: &Perturbation) -> Result<()>;

    /// The global gradient norm of the last step (before noise), read back from the
    /// device: for a policy that decides at every step.
    fn last_grad_norm(&mut self) -> Result<f64>;

    /// One optimiser step, in the method's order: forward, cross-entropy (against the
    /// step's labels, smoothed as the spec says), backward, the global gradient norm
    /// (before noise and weight decay), gradient noise, the optimiser.
    /// Adds the batch's loss, correct predictions and gradient norm to the epoch's sums.
    /// Returns false when the update was skipped (f16 gradients that were not finite).
    fn step(&mut self, step: &Step) -> Result<bool>;

    /// The epoch's sums so far (waits for the device).
    fn sums(&mut self) -> Result<EpochSums>;

    /// Sets the epoch's sums: zero at an epoch's start, or a stopped epoch's going on.
    fn set_sums(&mut self, sums: EpochSums) -> Result<()>;

    /// `||w - w_start|| / ||w_start||` over every trainable parameter, `w_start` the
    /// weights at the epoch's start (before its weight noise).
    fn weight_update(&mut self) -> Result<f64>;

    /// Mean cross-entropy and accuracy over a held-out split, in evaluation mode.
    fn evaluate(&mut self, set: EvalSet) -> Result<(f64, f64)>;

    /// The f16 loss scale, for f16 runs.
    fn loss_scale(&self) -> Option<LossScale>;

    /// Waits for the device to finish what it was given (for timing).
    fn synchronize(&mut self) -> Result<()>;

    /// The state a checkpoint keeps; with `epoch_start`, the weights at the epoch's start
    /// too (a checkpoint in the middle of an epoch).
    fn save(&mut self, epoch_start: bool) -> Result<EngineRecord>;

    /// Continues from a checkpoint's state (and its loss scale).
    fn restore(&mut self, record: EngineRecord, loss_scale: Option<LossScale>) -> Result<()>;
}

/// What an engine is built for: the settings that decide what it computes and where.
#[derive(Debug, Clone)]
pub struct EngineSpec {
    /// The architecture.
    pub model: ModelKind,
    /// The optimiser.
    pub optimizer: OptimizerKind,
    /// L2 weight decay added to the gradient.
    pub weight_decay: f64,
    /// The backend.
    pub device: DeviceKind,
    /// What the step computes in.
    pub precision: Precision,
    /// Where batches are assembled (Burn's backends).
    pub data_placement: DataPlacement,
    /// Images per training batch (and per evaluation batch).
    pub batch_size: usize,
    /// The run's seed: initial weights, and the order and augmentation of the host
    /// pipeline's batches.
    pub seed: u64,
    /// CPU threads (all cores when absent).
    pub threads: Option<usize>,
    /// Label smoothing of the training loss (PyTorch's definition; 0: none).
    pub label_smoothing: f64,
}

/// The images an engine trains and evaluates on.
#[derive(Debug, Clone)]
pub struct EngineData {
    /// The training images.
    pub train: Split,
    /// The validation images (the test set when none are held out).
    pub val: Split,
    /// The test images, when a validation split is held out.
    pub test: Option<Split>,
    /// How many classes.
    pub classes: usize,
}

impl EngineData {
    /// A dataset's splits, as a run uses them.
    pub fn of(data: Dataset) -> Self {
        let classes = data.num_classes();
        match data.val {
            Some(val) => Self {
                train: data.train,
                val,
                test: Some(data.test),
                classes,
            },
            None => Self {
                train: data.train,
                val: data.test,
                test: None,
                classes,
            },
        }
    }
}

/// The engine that trains on `device`, by name: its checkpoints hold tensors in its own
/// format, which the other engine cannot read.
pub fn engine_name(device: DeviceKind) -> &'static str {
    match device {
        DeviceKind::Libtorch | DeviceKind::LibtorchCpu => "LibTorch",
        _ => "Burn",
    }
}

/// Refuses, before anything is built or written, a backend this binary lacks or cannot
/// reach and a precision it cannot compute in.
pub fn check(spec: &EngineSpec) -> Result<()> {
    spec.model.check_trainable()?;
    match spec.device {
        #[cfg(feature = "tch")]
        DeviceKind::Libtorch | DeviceKind::LibtorchCpu => torch::check(spec),
        _ => self::burn::check(spec),
    }
}

/// Builds the engine `spec` names, with its initial weights drawn from the seed.
pub fn build(spec: &EngineSpec, data: EngineData) -> Result<Box<dyn Engine>> {
    match spec.device {
        #[cfg(feature = "tch")]
        DeviceKind::Libtorch | DeviceKind::LibtorchCpu => {
            Ok(Box::new(torch::TorchEngine::new(spec, data)?))
        }
        _ => Ok(Box::new(self::burn::BurnEngine::new(spec, data)?)),
    }
}
