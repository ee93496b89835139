//! `adanoise bench`: times whole training steps (forward, loss, backward,
//! optimiser) on a fixed random batch after a warm-up, and reports the median.
//! Several step variants (plain, + gradient norm, + gradient noise) can be timed
//! in one run, interleaved step by step, so that a busy machine slows them alike
//! and their ratio stays meaningful.

use crate::data::device_data::{DeviceSplit, byte_storage};
use crate::data::placement::{BatchTensors, batch_tensors};
use crate::data::plan::{SamplePlan, epoch_plan};
use crate::data::{Batch, BatchStream, IMAGE_BYTES, Normalization, Split};
use crate::device::{DeviceKind, set_cpu_threads};
use crate::models::ModelKind;
use crate::noise::NoiseKind;
use crate::optim::OptimizerKind;
use crate::train::precision::{Precision, StepPrecision};
use crate::train::step::{GradNoise, StepInput, train_step};
use anyhow::{Result, bail};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::{Device, Tensor};
use rand::{RngExt, SeedableRng};
use serde::Serialize;
use std::sync::Arc;
use std::time::Instant;

/// What one timed step does besides forward, backward and the optimiser.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StepKind {
    /// A step with forward, loss, backward and the optimiser only.
    Plain,
    /// The global gradient norm, as training computes it every step.
    GradNorm,
    /// The gradient norm and Gaussian gradient noise of this standard deviation.
    GradNoise(f64),
}

impl StepKind {
    /// The variant's name in the results.
    pub fn name(self) -> String {
        match self {
            Self::Plain => "plain".into(),
            Self::GradNorm => "grad-norm".into(),
            Self::GradNoise(s) => format!("grad-norm+grad-noise({s})"),
        }
    }
}

/// What `adanoise bench` times.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The model.
    pub model: ModelKind,
    /// The optimiser.
    pub optimizer: OptimizerKind,
    /// Images per step.
    pub batch_size: usize,
    /// Timed steps per variant.
    pub steps: usize,
    /// Untimed steps first.
    pub warmup: usize,
    /// The backend.
    pub device: DeviceKind,
    /// CPU threads (all cores when absent).
    pub threads: Option<usize>,
    /// Variants timed in turn at every step; the first is the reference of the ratios.
    pub variants: Vec<StepKind>,
    /// Cut each step's batch out of a dataset on the device instead of uploading it.
    pub device_data: bool,
    /// What each step computes in.
    pub precision: Precision,
}

/// The timing of one step variant.
#[derive(Debug, Clone, Serialize)]
pub struct VariantResult {
    /// Its name.
    pub variant: String,
    /// Images per second at the median step time.
    pub images_per_s: f64,
    /// Median step time.
    pub median_step_ms: f64,
    /// Fastest step.
    pub min_step_ms: f64,
    /// Slowest step.
    pub max_step_ms: f64,
    /// Median over steps of this variant's step time over the first variant's, same step.
    pub ratio_to_first: f64,
}

/// What `adanoise bench` measured (printed as JSON with `--json`).
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    /// The model.
    pub model: String,
    /// The optimiser.
    pub optimizer: String,
    /// Images per step.
    pub batch_size: usize,
    /// The backend.
    pub device: String,
    /// CPU threads used.
    pub threads: usize,
    /// Timed steps per variant.
    pub steps: usize,
    /// Of the first variant: batch size over its median step time.
    pub images_per_s: f64,
    /// The first variant's median step time.
    pub median_step_ms: f64,
    /// Every variant's timing.
    pub variants: Vec<VariantResult>,
    /// Whether the step included assembling its batch on the device.
    pub device_data: bool,
    /// What each step computed in.
    pub precision: String,
    /// f16: timed steps whose update was skipped (non-finite gradients at the loss scale).
    pub skipped_steps: usize,
    /// Images/s of the host data pipeline (one thread: shuffle, crop, flip, normalise), to set
    /// against the training images/s: above it, the model never waits for data.
    pub host_data_images_per_s: f64,
}

/// Images in the synthetic dataset the data measurements draw from.
const DATA_IMAGES: usize = 4096;

fn synthetic_split(rng: &mut impl RngExt) -> Split {
    Split {
        images: (0..DATA_IMAGES * IMAGE_BYTES)
            .map(|_| rng.random())
            .collect(),
        labels: (0..DATA_IMAGES)
            .map(|_| rng.random_range(0..10u8))
            .collect(),
    }
}

/// Images/s of one epoch of the host pipeline over `split`, consumed as fast as it comes.
fn host_data_rate(split: Arc<Split>, batch_size: usize) -> f64 {
    let started = Instant::now();
    let images: usize = BatchStream::start(split, batch_size, Normalization::CIFAR10, 1, 1)
        .map(|b| b.len())
        .sum();
    images as f64 / started.elapsed().as_secs_f64()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        0.5 * (values[n / 2 - 1] + values[n / 2])
    }
}

/// The batches the timed steps train on: one fixed host batch uploaded every step, or
/// (with `device_data`) batches cut on the device from a synthetic split by endless epoch
/// plans, as training does.
struct StepBatches {
    host: Batch,
    on_device: Option<(DeviceSplit, Plans)>,
}

/// The sample plans of full batches, epoch after epoch, without end.
type Plans = Box<dyn Iterator<Item = Vec<SamplePlan>>>;

impl StepBatches {
    fn new(options: &BenchOptions, split: &Split, rng: &mut impl RngExt, plain: &Device) -> Self {
        let n = options.batch_size;
        let host = Batch {
            images: (0..n * IMAGE_BYTES)
                .map(|_| rng.random_range(-2.0f32..2.0))
                .collect(),
            labels: (0..n).map(|_| rng.random_range(0..10i64)).collect(),
        };
        let on_device = options.device_data.then(|| {
            let split =
                DeviceSplit::upload(split, Normalization::CIFAR10, plain, byte_storage(plain));
            let plans = (1..)
                .flat_map(move |epoch| epoch_plan(DATA_IMAGES, n, 0, epoch))
                .filter(move |samples| samples.len() == n);
            let plans: Plans = Box::new(plans);
            (split, plans)
        });
        StepBatches { host, on_device }
    }

    fn next(&mut self, device: &Device) -> BatchTensors {
        match &mut self.on_device {
            Some((split, plans)) => {
                let samples = plans.next().expect("the plan never ends");
                let (images, labels) = split.batch(&samples);
                (Tensor::from_inner(images), Tensor::from_inner(labels))
            }
            None => batch_tensors(self.host.clone(), device),
        }
    }
}

/// The gradient noise a step of `variant` adds, each with its own seed.
fn grad_noise(variant: StepKind, seed: &mut u64) -> Option<GradNoise> {
    let StepKind::GradNoise(sigma) = variant else {
        return None;
    };
    *seed += 1;
    Some(GradNoise {
        kind: NoiseKind::Gaussian,
        sigma,
        seed: *seed,
    })
}

/// Each variant's step times summarised, with ratios to the first variant's same step.
fn variant_results(variants: &[StepKind], times: &[Vec<f64>], n: usize) -> Vec<VariantResult> {
    let reference = &times[0];
    variants
        .iter()
        .zip(times)
        .map(|(variant, t)| {
            let mut ratios: Vec<f64> = t.iter().zip(reference).map(|(a, b)| a / b).collect();
            let mut sorted = t.clone();
            let med = median(&mut sorted);
            VariantResult {
                variant: variant.name(),
                images_per_s: n as f64 / med,
                median_step_ms: med * 1e3,
                min_step_ms: sorted[0] * 1e3,
                max_step_ms: sorted[sorted.len() - 1] * 1e3,
                ratio_to_first: median(&mut ratios),
            }
        })
        .collect()
}

/// Times training steps as `options` say (variants interleaved step by step).
pub fn run(options: &BenchOptions) -> Result<BenchResult> {
    if options.steps == 0 || options.batch_size == 0 {
        bail!("--steps and --batch-size must be at least 1");
    }
    let variants = if options.variants.is_empty() {
        vec![StepKind::Plain]
    } else {
        options.variants.clone()
    };
    set_cpu_threads(options.threads);
    let device = options.device.device()?;
    options
        .precision
        .check_device(&device, options.device.name())?;
    let device = device.autodiff();
    let mut precision = StepPrecision::new(options.precision);
    let mut model = options.model.build(10, &device);
    let mut optim = options
        .optimizer
        .build(adanoise_core::defaults::WEIGHT_DECAY);
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let split = Arc::new(synthetic_split(&mut rng));
    let host_data_images_per_s = host_data_rate(split.clone(), options.batch_size);
    let plain = device.clone().inner();
    let mut batches = StepBatches::new(options, &split, &mut rng, &plain);
    let mut norm_sum = Tensor::<1>::zeros([1], &plain);
    let mut times: Vec<Vec<f64>> = vec![Vec::with_capacity(options.steps); variants.len()];
    let (mut seed, mut skipped_steps) = (0u64, 0);
    for step in 0..options.warmup + options.steps {
        for (v, variant) in variants.iter().enumerate() {
            let started = Instant::now();
            let (images, labels) = batches.next(&device);
            let input = StepInput {
                images,
                labels,
                lr: 1e-3,
                measure_norm: *variant != StepKind::Plain,
                grad_noise: grad_noise(*variant, &mut seed),
            };
            let out = train_step(model, &mut optim, &loss_fn, input, &mut precision);
            model = out.model;
            if let Some(norm) = out.grad_norm {
                // Kept on the device, as in training: read back once at the end.
                norm_sum = norm_sum + norm;
            }
            device
                .sync()
                .map_err(|e| anyhow::anyhow!("the device failed: {e:?}"))?;
            if step >= options.warmup {
                times[v].push(started.elapsed().as_secs_f64());
                skipped_steps += usize::from(out.skipped);
            }
        }
    }
    let _ = norm_sum.into_scalar::<f64>();
    let results = variant_results(&variants, &times, options.batch_size);
    Ok(BenchResult {
        model: options.model.name().into(),
        optimizer: options.optimizer.name().into(),
        batch_size: options.batch_size,
        device: options.device.name().into(),
        threads: rayon::current_num_threads(),
        steps: options.steps,
        images_per_s: results[0].images_per_s,
        median_step_ms: results[0].median_step_ms,
        variants: results,
        device_data: options.device_data,
        precision: options.precision.name().into(),
        skipped_steps,
        host_data_images_per_s,
    })
}
