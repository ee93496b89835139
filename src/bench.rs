//! `adanoise bench`: times whole training steps (forward, loss, backward,
//! optimiser) of an engine on one fixed batch after a warm-up, and reports the
//! median; with `--device-data`, on the batches of endless epoch plans assembled
//! on the device, as training does. Several step variants (plain, + gradient
//! norm, + gradient noise) can be timed in one run, interleaved step by step, so
//! that a busy machine slows them alike and their ratio stays meaningful.

use crate::data::placement::DataPlacement;
use crate::data::plan::{SamplePlan, epoch_plan};
use crate::data::{BatchStream, IMAGE_BYTES, Normalization, Split};
use crate::device::DeviceKind;
use crate::engine::{self, Engine, EngineData, EngineSpec, NoiseDraw, Step};
use crate::models::ModelKind;
use crate::noise::NoiseKind;
use crate::optim::OptimizerKind;
use crate::train::precision::Precision;
use anyhow::{Result, bail};
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
        .map(|(_, b)| b.len())
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

/// The batches the timed steps train on: the first images of the split, centred, every
/// step (the engine assembles it once), or (with `device_data`) the full batches of epoch
/// plans, epoch after epoch, as training cuts them out on the device.
fn step_batches(options: &BenchOptions) -> Box<dyn Iterator<Item = Vec<SamplePlan>>> {
    let n = options.batch_size;
    if options.device_data {
        Box::new(
            (1..)
                .flat_map(move |epoch| epoch_plan(DATA_IMAGES, n, 0, epoch))
                .filter(move |samples| samples.len() == n),
        )
    } else {
        let fixed: Vec<SamplePlan> = (0..n).map(SamplePlan::centred).collect();
        Box::new(std::iter::repeat(fixed))
    }
}

/// The gradient noise a step of `variant` adds, each with its own seed.
fn grad_noise(variant: StepKind, seed: &mut u64) -> Option<NoiseDraw> {
    let StepKind::GradNoise(sigma) = variant else {
        return None;
    };
    *seed += 1;
    Some(NoiseDraw {
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

/// The engine a benchmark times, on a synthetic split.
fn bench_engine(options: &BenchOptions, split: &Split) -> Result<Box<dyn Engine>> {
    let spec = EngineSpec {
        model: options.model,
        optimizer: options.optimizer,
        weight_decay: adanoise_core::defaults::WEIGHT_DECAY,
        device: options.device,
        precision: options.precision,
        data_placement: if options.device_data {
            DataPlacement::Device
        } else {
            DataPlacement::Host
        },
        batch_size: options.batch_size,
        seed: 0,
        threads: options.threads,
        label_smoothing: 0.0,
    };
    engine::check(&spec)?;
    let data = EngineData {
        train: split.clone(),
        val: split.select(&[0]),
        test: None,
        classes: 10,
    };
    let mut engine = engine::build(&spec, data)?;
    engine.start_epoch(None)?;
    Ok(engine)
}

/// Times training steps as `options` say (variants interleaved step by step).
pub fn run(options: &BenchOptions) -> Result<BenchResult> {
    if options.steps == 0 || options.batch_size == 0 {
        bail!("--steps and --batch-size must be at least 1");
    }
    if options.batch_size > DATA_IMAGES {
        bail!("--batch-size must be at most {DATA_IMAGES}, the benchmark's synthetic images");
    }
    let variants = if options.variants.is_empty() {
        vec![StepKind::Plain]
    } else {
        options.variants.clone()
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let split = synthetic_split(&mut rng);
    let mut engine = bench_engine(options, &split)?;
    let host_data_images_per_s = host_data_rate(Arc::new(split), options.batch_size);
    let mut batches = step_batches(options);
    let mut times: Vec<Vec<f64>> = vec![Vec::with_capacity(options.steps); variants.len()];
    let (mut seed, mut skipped_steps) = (0u64, 0);
    for step in 0..options.warmup + options.steps {
        for (v, variant) in variants.iter().enumerate() {
            let samples = batches.next().expect("the batches never end");
            let started = Instant::now();
            let applied = engine.step(&Step {
                epoch: 1,
                index: step * variants.len() + v,
                samples: &samples,
                lr: 1e-3,
                grad_noise: grad_noise(*variant, &mut seed),
                relabel: None,
                measure_norm: *variant != StepKind::Plain,
            })?;
            engine.synchronize()?;
            if step >= options.warmup {
                times[v].push(started.elapsed().as_secs_f64());
                skipped_steps += usize::from(!applied);
            }
        }
    }
    // The sums stay on the device during the steps, as in training: read them once.
    engine.sums()?;
    let results = variant_results(&variants, &times, options.batch_size);
    Ok(BenchResult {
        model: options.model.name().into(),
        optimizer: options.optimizer.name().into(),
        batch_size: options.batch_size,
        device: options.device.name().into(),
        threads: options.threads.unwrap_or_else(rayon::current_num_threads),
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
