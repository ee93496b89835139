//! The Burn engine: a run's model, optimiser and data on one of Burn's backends
//! (flex on the CPU with adanoise's kernels, wgpu, cuda). Batches are assembled on
//! the host by a background thread or cut out of a dataset uploaded once to the
//! device ([`DataPlacement`](crate::data::placement::DataPlacement)); the epoch's
//! sums stay on the device until the run reads them.

pub mod param_stats;
pub mod precision;
mod record;
pub mod step;

use super::host::HostBatches;
use super::{
    Engine, EngineData, EngineRecord, EngineSpec, EpochSums, EvalSet, Perturbation, Relabel, Step,
    WeightNoise,
};
use crate::data::placement::{BatchTensors, EvalSplit, PlacedSplit, batch_tensors};
use crate::data::plan::SamplePlan;
use crate::models::{Model, ModelKind, trainable_params};
use crate::noise::add_weight_noise;
use crate::noise::perturb::{add_weight_ball, add_weight_difference, shrink_weights};
use crate::optim::OptimizerKind;
use crate::rng::{Purpose, derived_seed, with_seeded_device};
use crate::train::precision::LossScale;
use anyhow::{Context, Result};
use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::loss::{CrossEntropyLoss, CrossEntropyLossConfig};
use burn::optim::ModuleOptimizer;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use param_stats::WeightSnapshot;
use precision::StepPrecision;
use std::sync::Arc;
use step::{StepInput, StepOutput, train_step};

/// Refuses a backend this binary lacks or cannot reach, and a precision it cannot compute
/// in; sets the CPU threads (before anything computes).
pub fn check(spec: &EngineSpec) -> Result<()> {
    crate::device::set_cpu_threads(spec.threads);
    let device = spec.device.device()?;
    precision::check_device(spec.precision, &device, spec.device)
}

/// Draws every lazily initialised parameter now, while the device RNG is freshly seeded.
pub(crate) struct Materialize;

impl ModuleVisitor for Materialize {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let _ = param.val();
    }
}

/// Builds `kind` for `classes` classes, initialised from the run's `seed`, on `device`.
pub fn init_model(kind: ModelKind, seed: u64, classes: usize, device: &Device) -> Model {
    // Drawn on the CPU whatever the device (as PyTorch users do before `.to(device)`), so a
    // seed gives the same initial weights on every backend and engine.
    let host = Device::flex().autodiff();
    let model = with_seeded_device(&host, derived_seed(seed, Purpose::ModelInit, 0), || {
        let model = kind.build(classes, &host);
        model.visit(&mut Materialize);
        model
    });
    // `fork` keeps which parameters require gradients; `to_device` would drop it.
    model.fork(device)
}

/// The epoch's running sums, on the plain device.
struct DeviceSums {
    loss: Tensor<1>,
    correct: Tensor<1, Int>,
    grad_norm: Tensor<1>,
}

impl DeviceSums {
    fn new(sums: EpochSums, plain: &Device) -> Self {
        let scalar = |v: f64| Tensor::<1>::from_data(TensorData::new(vec![v as f32], [1]), plain);
        Self {
            loss: scalar(sums.loss),
            correct: Tensor::<1, Int>::from_data(TensorData::new(vec![sums.correct], [1]), plain),
            grad_norm: scalar(sums.grad_norm),
        }
    }

    /// Adds a step: its loss (`loss`, the recorded one) and its hits against `labels`.
    fn add(&mut self, out: &StepOutput, loss: Tensor<1>, labels: Tensor<1, Int>, n: usize) {
        let hits = out
            .logits
            .clone()
            .inner()
            .argmax(1)
            .reshape([n])
            .equal(labels)
            .int()
            .sum();
        self.loss = self.loss.clone() + loss.mul_scalar(n as f64);
        self.correct = self.correct.clone() + hits;
        if let Some(norm) = &out.grad_norm {
            self.grad_norm = self.grad_norm.clone() + norm.clone();
        }
    }
}

/// A run's model, optimiser and data on a Burn backend.
pub struct BurnEngine {
    /// The autodiff device the model trains on.
    device: Device,
    /// The same device without autodiff, where batches and sums live.
    plain: Device,
    /// The model; taken out for the length of a step, which consumes and returns it.
    model: Option<Model>,
    /// A model of the same shape, for loading records into.
    template: Model,
    optim: ModuleOptimizer,
    optimizer: OptimizerKind,
    weight_decay: f64,
    precision: StepPrecision,
    /// The training loss (label smoothing included).
    loss_fn: CrossEntropyLoss,
    /// Whether the recorded loss differs from the trained one (label smoothing or label
    /// noise): the recorded one is always plain cross-entropy on the true labels.
    smoothing: bool,
    /// The last step's global gradient norm, on the device.
    last_norm: Option<Tensor<1>>,
    /// The training images on the device, or assembled on the host.
    train: Result<Arc<crate::data::device_data::DeviceSplit>, HostBatches>,
    val: EvalSplit,
    test: Option<EvalSplit>,
    /// The last batch assembled, with the samples it was made of.
    last_batch: Option<(Vec<SamplePlan>, BatchTensors)>,
    sums: DeviceSums,
    /// The weights at the epoch's start.
    epoch_start: Option<Model>,
    trainable: usize,
}

impl BurnEngine {
    /// The engine for `spec`, on `data`.
    pub fn new(spec: &EngineSpec, data: EngineData) -> Result<Self> {
        let plain = spec.device.device()?;
        let device = plain.clone().autodiff();
        let model = init_model(spec.model, spec.seed, data.classes, &device);
        let on_device = spec.data_placement.on_device(spec.device);
        let place = |split| PlacedSplit::new(Arc::new(split), on_device, &plain);
        let val = place(data.val).for_eval(spec.batch_size);
        let test = data.test.map(|t| place(t).for_eval(spec.batch_size));
        let train = match place(data.train) {
            PlacedSplit::Device(split) => Ok(split),
            PlacedSplit::Host(split) => Err(HostBatches::new(split, spec.batch_size, spec.seed)),
        };
        let smoothing = (spec.label_smoothing > 0.0).then_some(spec.label_smoothing as f32);
        Ok(Self {
            loss_fn: CrossEntropyLossConfig::new()
                .with_smoothing(smoothing)
                .init(&device),
            smoothing: smoothing.is_some(),
            last_norm: None,
            trainable: trainable_params(&model),
            template: model.clone(),
            model: Some(model),
            optim: spec.optimizer.build(spec.weight_decay),
            optimizer: spec.optimizer,
            weight_decay: spec.weight_decay,
            precision: StepPrecision::new(spec.precision),
            sums: DeviceSums::new(EpochSums::default(), &plain),
            train,
            val,
            test,
            last_batch: None,
            epoch_start: None,
            device,
            plain,
        })
    }

    fn model(&self) -> &Model {
        self.model
            .as_ref()
            .expect("a step returns the model it took")
    }

    /// The batch `step` names, on the device: the last one again when the same samples are
    /// asked for twice in a row (a benchmark's fixed batch), else cut out on the device, or
    /// made on the host and uploaded.
    fn batch(&mut self, step: &Step) -> BatchTensors {
        if let Some((samples, batch)) = &self.last_batch
            && samples.as_slice() == step.samples
        {
            return batch.clone();
        }
        let batch = match &mut self.train {
            Ok(split) => split.batch(step.samples),
            Err(host) => batch_tensors(host.batch(step), &self.plain),
        };
        self.last_batch = Some((step.samples.to_vec(), batch.clone()));
        batch
    }
}

impl Engine for BurnEngine {
    fn trainable_params(&self) -> usize {
        self.trainable
    }

    fn start_epoch(&mut self, noise: Option<WeightNoise>) -> Result<()> {
        let model = self.model.take().expect("a step returns the model it took");
        self.epoch_start = Some(model.clone());
        self.model = Some(match noise {
            Some(n) => {
                let shrunk = shrink_weights(model, n.shrink);
                add_weight_noise(shrunk, n.draw.kind, n.draw.sigma, n.scale, n.draw.seed)
            }
            None => model,
        });
        Ok(())
    }

    fn perturb_weights(&mut self, perturbation: &Perturbation) -> Result<()> {
        let model = self.model.take().expect("a step returns the model it took");
        self.model = Some(match *perturbation {
            Perturbation::Noise(d) => add_weight_noise(
                model,
                d.kind,
                d.sigma,
                adanoise_core::WeightNoiseScale::Absolute,
                d.seed,
            ),
            Perturbation::Difference { next, previous } => {
                add_weight_difference(model, next.kind, next.sigma, next.seed, previous.seed)
            }
            Perturbation::Ball { kind, radius, seed } => {
                add_weight_ball(model, kind, radius, seed, self.trainable)
            }
        });
        Ok(())
    }

    fn last_grad_norm(&mut self) -> Result<f64> {
        let norm = self
            .last_norm
            .clone()
            .context("no step measured a gradient norm yet")?;
        Ok(norm.into_scalar::<f64>())
    }

    fn step(&mut self, step: &Step) -> Result<bool> {
        let (images, labels) = self.batch(step);
        let n = labels.dims()[0];
        let targets = match &step.relabel {
            Some(relabel) => relabelled(labels.clone(), relabel, &self.plain),
            None => labels.clone(),
        };
        let input = StepInput {
            images: Tensor::from_inner(images),
            labels: Tensor::from_inner(targets),
            lr: step.lr,
            measure_norm: step.measure_norm,
            grad_noise: step.grad_noise,
        };
        let model = self.model.take().expect("a step returns the model it took");
        let out = train_step(
            model,
            &mut self.optim,
            &self.loss_fn,
            input,
            &mut self.precision,
        );
        let applied = !out.skipped;
        if applied {
            let loss = if self.smoothing || step.relabel.is_some() {
                let plain = CrossEntropyLossConfig::new().init(&self.plain);
                plain.forward(out.logits.clone().inner(), labels.clone())
            } else {
                out.loss.clone().inner()
            };
            self.sums.add(&out, loss, labels, n);
        }
        self.last_norm = out.grad_norm.clone();
        self.model = Some(out.model);
        Ok(applied)
    }

    fn sums(&mut self) -> Result<EpochSums> {
        Ok(EpochSums {
            loss: self.sums.loss.clone().into_scalar::<f64>(),
            correct: self.sums.correct.clone().into_scalar::<i64>(),
            grad_norm: self.sums.grad_norm.clone().into_scalar::<f64>(),
        })
    }

    fn set_sums(&mut self, sums: EpochSums) -> Result<()> {
        self.sums = DeviceSums::new(sums, &self.plain);
        Ok(())
    }

    fn weight_update(&mut self) -> Result<f64> {
        let start = self
            .epoch_start
            .as_ref()
            .context("the weight update needs the epoch's start: start_epoch() first")?;
        Ok(WeightSnapshot::take(self.model()).relative_change(&WeightSnapshot::take(start)))
    }

    fn evaluate(&mut self, set: EvalSet) -> Result<(f64, f64)> {
        let data = match set {
            EvalSet::Validation => &self.val,
            EvalSet::Test => self
                .test
                .as_ref()
                .context("this run holds out no test set")?,
        };
        Ok(evaluate(self.model(), data, &self.plain))
    }

    fn loss_scale(&self) -> Option<LossScale> {
        self.precision.loss_scale
    }

    fn synchronize(&mut self) -> Result<()> {
        self.device
            .sync()
            .map_err(|e| anyhow::anyhow!("the device failed: {e:?}"))
    }

    fn save(&mut self, epoch_start: bool) -> Result<EngineRecord> {
        let epoch_start = match (epoch_start, &self.epoch_start) {
            (true, Some(start)) => Some(record::model_bytes(start)?),
            _ => None,
        };
        Ok(EngineRecord {
            model: record::model_bytes(self.model())?,
            optimizer: record::optimizer_bytes(&self.optim)?,
            epoch_start,
        })
    }

    fn restore(&mut self, saved: EngineRecord, loss_scale: Option<LossScale>) -> Result<()> {
        self.model = Some(record::load_model(self.template.clone(), saved.model)?);
        let fresh = self.optimizer.build(self.weight_decay);
        self.optim = fresh.load_record(record::optimizer_record(saved.optimizer)?);
        self.precision = StepPrecision::with_loss_scale(self.precision.precision, loss_scale);
        self.epoch_start = match saved.epoch_start {
            Some(bytes) => Some(record::load_model(self.template.clone(), bytes)?),
            None => None,
        };
        Ok(())
    }
}

/// The labels a step trains on: `labels`, with the replaced positions of `relabel` taking
/// their drawn class.
fn relabelled(labels: Tensor<1, Int>, relabel: &Relabel, plain: &Device) -> Tensor<1, Int> {
    let n = relabel.replaced.len();
    let mask = Tensor::<1, Bool>::from_data(TensorData::new(relabel.replaced.to_vec(), [n]), plain);
    let classes =
        Tensor::<1, Int>::from_data(TensorData::new(relabel.classes.to_vec(), [n]), plain);
    labels.mask_where(mask, classes)
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
