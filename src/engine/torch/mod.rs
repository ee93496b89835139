//! The LibTorch engine: a run's model, optimiser and data on libtorch, driven
//! from Rust through the `tch` crate with torch's own autograd, so that every
//! operation (cuDNN's convolutions, batch norm and their fused backward passes)
//! is libtorch's, with no layer of ours between them. Channels-last activations
//! and weights everywhere; on CUDA also cuDNN in benchmark mode, TF32 as
//! PyTorch's defaults have it, `--precision bf16` as autocast, f16 as autocast
//! with a loss scale, the training split resident on the GPU and batches cut out
//! there. The epoch's sums
//! stay on the device; the host reads them when the run asks (and, for f16, one
//! flag per step, as PyTorch's `GradScaler` does).

mod data;
pub mod libtorch;
mod models;
mod noise;
mod optim;
mod record;

use super::{
    Engine, EngineData, EngineRecord, EngineSpec, EpochSums, EvalSet, Perturbation, Relabel, Step,
    WeightNoise,
};
use crate::device::DeviceKind;
use crate::train::precision::{LossScale, Precision, initial_loss_scale};
use anyhow::{Context, Result, bail};
use data::{DeviceBatch, TorchData};
use models::TorchModel;
use optim::Optimizer;
use tch::{Device, Kind, Reduction, Tensor};

/// Whether convolutions run on channels-last (NHWC) tensors.
const CHANNELS_LAST: bool = true;

/// The LibTorch device of a backend.
fn torch_device(kind: DeviceKind) -> Device {
    match kind {
        DeviceKind::Libtorch => Device::Cuda(0),
        _ => Device::Cpu,
    }
}

/// Refuses another libtorch than the build's, a GPU that LibTorch does not see, and a
/// precision it cannot compute in; sets the CPU threads.
pub fn check(spec: &EngineSpec) -> Result<()> {
    libtorch::check_version()?;
    if let Some(threads) = spec.threads.filter(|&n| n > 0) {
        tch::set_num_threads(threads as i32);
    }
    match spec.device {
        DeviceKind::Libtorch if !tch::Cuda::is_available() => bail!(
            "no usable libtorch device was found: LibTorch sees no CUDA GPU; check that an NVIDIA GPU and its driver are present (`nvidia-smi`) and that the libtorch in use is a CUDA build (PyTorch's default Linux wheel is), or train on the CPU with --device libtorch-cpu"
        ),
        DeviceKind::LibtorchCpu if spec.precision != Precision::F32 => bail!(
            "--precision {} needs a GPU on LibTorch (its autocast is CUDA-only): use --precision f32 with --device libtorch-cpu, or --device libtorch",
            spec.precision.name()
        ),
        _ => Ok(()),
    }
}

/// The epoch's running sums, on the device.
struct DeviceSums {
    loss: Tensor,
    correct: Tensor,
    grad_norm: Tensor,
}

impl DeviceSums {
    fn new(sums: EpochSums, device: Device) -> Result<Self> {
        let scalar = |v: f64| -> Result<Tensor> {
            Ok(Tensor::f_from_slice(&[v as f32])?.f_to_device(device)?)
        };
        Ok(Self {
            loss: scalar(sums.loss)?,
            correct: Tensor::f_from_slice(&[sums.correct])?.f_to_device(device)?,
            grad_norm: scalar(sums.grad_norm)?,
        })
    }
}

/// A run's model, optimiser and data on libtorch.
pub struct TorchEngine {
    device: Device,
    model: TorchModel,
    optim: Optimizer,
    data: TorchData,
    precision: Precision,
    loss_scale: Option<LossScale>,
    sums: DeviceSums,
    /// The trainable weights at the epoch's start.
    epoch_start: Option<Vec<Tensor>>,
    /// Label smoothing of the training loss.
    label_smoothing: f64,
    /// The last step's global gradient norm, on the device.
    last_norm: Option<Tensor>,
}

impl TorchEngine {
    /// The engine for `spec`, on `data`, with the initial weights of the Burn model of the
    /// same seed (so both engines start alike).
    pub fn new(spec: &EngineSpec, data: EngineData) -> Result<Self> {
        let device = torch_device(spec.device);
        let cuda = device.is_cuda();
        if cuda {
            tch::Cuda::cudnn_set_benchmark(true);
            libtorch::set_pytorch_tf32_defaults()?;
            if spec.precision != Precision::F32 {
                libtorch::set_autocast_bf16(spec.precision == Precision::Bf16)?;
            }
        }
        let host = burn::tensor::Device::flex().autodiff();
        let initial = super::burn::init_model(spec.model, spec.seed, data.classes, &host);
        // Channels-last activations and weights on every device: oneDNN on the CPU and cuDNN
        // on a GPU convolve NHWC without reordering (measured on the CPU with PyTorch
        // itself: 7-40 % faster steps than its default NCHW layout).
        let model = TorchModel::from_burn(spec.model, &initial, device, CHANNELS_LAST)?;
        let optim = Optimizer::new(spec.optimizer, spec.weight_decay);
        let on_device = spec.data_placement.on_device(spec.device);
        let data = TorchData::new(data, spec.batch_size, spec.seed, device, on_device)?
            .channels_last(CHANNELS_LAST)?;
        Ok(Self {
            sums: DeviceSums::new(EpochSums::default(), device)?,
            device,
            model,
            optim,
            data,
            precision: spec.precision,
            loss_scale: initial_loss_scale(spec.precision),
            epoch_start: None,
            label_smoothing: spec.label_smoothing,
            last_norm: None,
        })
    }

    /// The logits of `batch` (f32): training steps compute in the run's precision,
    /// evaluation in f32 (as on the Burn engine), so that a bf16 or f16 run's accuracies
    /// and losses are measured as an f32 run's are.
    fn logits(&self, batch: &DeviceBatch, train: bool) -> Result<Tensor> {
        let forward = || self.model.forward(&batch.images, train);
        let logits = match self.precision {
            Precision::Bf16 | Precision::F16 if train => tch::autocast(true, forward),
            _ => forward(),
        };
        Ok(logits.f_to_kind(Kind::Float)?)
    }

    /// For f16: whether the (unscaled) gradients, whose global norm is `norm`, are all
    /// finite (one value read back per step, as `GradScaler` does); the scale is updated.
    fn gradients_finite(&mut self, norm: &Tensor) -> Result<bool> {
        let Some(scale) = self.loss_scale.as_mut() else {
            return Ok(true);
        };
        let finite = norm.f_double_value(&[])?.is_finite();
        scale.update(finite);
        Ok(finite)
    }
}

impl Engine for TorchEngine {
    fn trainable_params(&self) -> usize {
        self.model.trainable_params()
    }

    fn start_epoch(&mut self, noise: Option<WeightNoise>) -> Result<()> {
        let snapshot = self
            .model
            .params()
            .iter()
            .map(Tensor::f_detach_copy)
            .collect::<Result<Vec<_>, _>>()?;
        self.epoch_start = Some(snapshot);
        if let Some(n) = noise {
            noise::shrink_weights(self.model.params(), n.shrink)?;
            noise::add_to_weights(self.model.params(), &n.draw, n.scale)?;
        }
        Ok(())
    }

    fn perturb_weights(&mut self, perturbation: &Perturbation) -> Result<()> {
        let params = self.model.params();
        match *perturbation {
            Perturbation::Noise(draw) => {
                noise::add_to_weights(params, &draw, adanoise_core::WeightNoiseScale::Absolute)
            }
            Perturbation::Difference { next, previous } => {
                noise::add_difference(params, &next, &previous)
            }
            Perturbation::Ball { kind, radius, seed } => {
                noise::add_ball(params, kind, radius, seed, self.model.trainable_params())
            }
        }
    }

    fn last_grad_norm(&mut self) -> Result<f64> {
        let norm = self
            .last_norm
            .as_ref()
            .context("no step measured a gradient norm yet")?;
        Ok(norm.f_double_value(&[])?)
    }

    fn step(&mut self, step: &Step) -> Result<bool> {
        let batch = self.data.batch(step)?;
        let logits = self.logits(&batch, true)?;
        let targets = match &step.relabel {
            Some(relabel) => relabelled(&batch.labels, relabel, self.device)?,
            None => batch.labels.shallow_clone(),
        };
        let loss = smoothed_cross_entropy(&logits, &targets, self.label_smoothing)?;
        let scaled = match self.loss_scale {
            Some(s) => loss.f_mul_scalar(s.scale)?,
            None => loss.shallow_clone(),
        };
        let grads = Tensor::f_run_backward(&[&scaled], self.model.params(), false, false)?;
        let _guard = tch::no_grad_guard();
        if let Some(s) = self.loss_scale {
            for grad in &grads {
                let _ = grad.shallow_clone().f_mul_scalar_(1.0 / s.scale)?;
            }
        }
        let norm = if step.measure_norm || self.loss_scale.is_some() {
            Some(libtorch::global_norm(&grads)?)
        } else {
            None
        };
        if let Some(norm) = &norm
            && !self.gradients_finite(norm)?
        {
            self.last_norm = None;
            return Ok(false);
        }
        self.last_norm = norm.as_ref().map(Tensor::shallow_clone);
        if let Some(draw) = &step.grad_noise {
            noise::add_to_gradients(&grads, draw)?;
        }
        self.optim.step(self.model.params(), &grads, step.lr)?;
        let n = step.samples.len() as f64;
        let hits = logits
            .f_argmax(1, false)?
            .f_eq_tensor(&batch.labels)?
            .f_sum(Kind::Int64)?;
        // The recorded loss is plain cross-entropy on the true labels, whatever was trained.
        let recorded = if self.label_smoothing > 0.0 || step.relabel.is_some() {
            cross_entropy(&logits.f_detach()?, &batch.labels)?
        } else {
            loss.f_detach()?
        };
        let _ = self.sums.loss.f_add_(&recorded.f_mul_scalar(n)?)?;
        let _ = self.sums.correct.f_add_(&hits)?;
        if let Some(norm) = norm.filter(|_| step.measure_norm) {
            let _ = self.sums.grad_norm.f_add_(&norm)?;
        }
        Ok(true)
    }

    fn sums(&mut self) -> Result<EpochSums> {
        Ok(EpochSums {
            loss: self.sums.loss.f_double_value(&[0])?,
            correct: self.sums.correct.f_int64_value(&[0])?,
            grad_norm: self.sums.grad_norm.f_double_value(&[0])?,
        })
    }

    fn set_sums(&mut self, sums: EpochSums) -> Result<()> {
        self.sums = DeviceSums::new(sums, self.device)?;
        Ok(())
    }

    fn weight_update(&mut self) -> Result<f64> {
        let start = self
            .epoch_start
            .as_ref()
            .context("the weight update needs the epoch's start: start_epoch() first")?;
        let _guard = tch::no_grad_guard();
        let mut diff = Tensor::f_zeros([], (Kind::Float, self.device))?;
        let mut base = Tensor::f_zeros([], (Kind::Float, self.device))?;
        for (now, then) in self.model.params().iter().zip(start) {
            let _ = diff.f_add_(&now.f_sub(then)?.f_square()?.f_sum(Kind::Float)?)?;
            let _ = base.f_add_(&then.f_square()?.f_sum(Kind::Float)?)?;
        }
        let base = base.f_double_value(&[])?;
        Ok(if base == 0.0 {
            f64::INFINITY
        } else {
            (diff.f_double_value(&[])? / base).sqrt()
        })
    }

    fn evaluate(&mut self, set: EvalSet) -> Result<(f64, f64)> {
        let images = match set {
            EvalSet::Validation => &self.data.val,
            EvalSet::Test => self
                .data
                .test
                .as_ref()
                .context("this run holds out no test set")?,
        };
        let _guard = tch::no_grad_guard();
        let mut loss_sum = Tensor::f_zeros([], (Kind::Float, self.device))?;
        let mut correct = Tensor::f_zeros([], (Kind::Int64, self.device))?;
        let mut seen = 0i64;
        for batch in images.batches()? {
            let n = batch.labels.size()[0];
            let logits = self.logits(&batch, false)?;
            let loss = cross_entropy(&logits, &batch.labels)?;
            let _ = loss_sum.f_add_(&loss.f_mul_scalar(n as f64)?)?;
            let _ = correct.f_add_(
                &logits
                    .f_argmax(1, false)?
                    .f_eq_tensor(&batch.labels)?
                    .f_sum(Kind::Int64)?,
            )?;
            seen += n;
        }
        Ok((
            loss_sum.f_double_value(&[])? / seen as f64,
            correct.f_int64_value(&[])? as f64 / seen as f64,
        ))
    }

    fn loss_scale(&self) -> Option<LossScale> {
        self.loss_scale
    }

    fn synchronize(&mut self) -> Result<()> {
        if let Device::Cuda(index) = self.device {
            tch::Cuda::synchronize(index as i64);
        }
        Ok(())
    }

    fn save(&mut self, epoch_start: bool) -> Result<EngineRecord> {
        let epoch_start = match (epoch_start, &self.epoch_start) {
            (true, Some(start)) => Some(record::to_bytes(&record::named("param", start)?)?),
            _ => None,
        };
        Ok(EngineRecord {
            model: record::model_bytes(&self.model)?,
            optimizer: record::to_bytes(&self.optim.state()?)?,
            epoch_start,
        })
    }

    fn restore(&mut self, saved: EngineRecord, loss_scale: Option<LossScale>) -> Result<()> {
        record::load_model(&self.model, &saved.model)?;
        let state = record::from_bytes(&saved.optimizer)?;
        self.optim.load(state, self.model.params())?;
        if self.loss_scale.is_some() {
            self.loss_scale = loss_scale.or(self.loss_scale);
        }
        self.epoch_start = match saved.epoch_start {
            Some(bytes) => Some(record::load_epoch_start(&self.model, &bytes)?),
            None => None,
        };
        Ok(())
    }
}

/// The mean cross-entropy of `logits` against `labels`, as PyTorch's
/// `F.cross_entropy` with its defaults (no class weights, no ignored index, no smoothing).
fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    smoothed_cross_entropy(logits, labels, 0.0)
}

/// [`cross_entropy`] with PyTorch's `label_smoothing`.
fn smoothed_cross_entropy(logits: &Tensor, labels: &Tensor, smoothing: f64) -> Result<Tensor> {
    Ok(logits.f_cross_entropy_loss(labels, None::<Tensor>, Reduction::Mean, -100, smoothing)?)
}

/// The labels a step trains on: `labels`, with the replaced positions of `relabel` taking
/// their drawn class.
fn relabelled(labels: &Tensor, relabel: &Relabel, device: Device) -> Result<Tensor> {
    let mask = Tensor::f_from_slice(relabel.replaced)?.f_to_device(device)?;
    let classes = Tensor::f_from_slice(relabel.classes)?
        .f_to_device(device)?
        .f_to_kind(labels.kind())?;
    Ok(classes.f_where_self(&mask, labels)?)
}
