//! `adanoise bench`: times whole training steps (forward, loss, backward,
//! optimiser) on a fixed random batch after a warm-up, and reports the median.

use crate::device::{DeviceKind, set_cpu_threads};
use crate::models::ModelKind;
use crate::noise::{NoiseKind, add_gradient_noise};
use crate::optim::OptimizerKind;
use crate::train::param_stats::grad_norm;
use crate::train::trainer::batch_tensors;
use anyhow::{Result, bail};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::GradientsParams;
use rand::{RngExt, SeedableRng};
use serde::Serialize;
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub model: ModelKind,
    pub optimizer: OptimizerKind,
    pub batch_size: usize,
    pub steps: usize,
    pub warmup: usize,
    pub device: DeviceKind,
    pub threads: Option<usize>,
    /// Compute the global gradient norm every step, as training does.
    pub grad_norm: bool,
    /// Add Gaussian gradient noise of this standard deviation every step.
    pub grad_noise: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub model: String,
    pub optimizer: String,
    pub batch_size: usize,
    pub device: String,
    pub threads: usize,
    pub steps: usize,
    pub grad_norm: bool,
    pub grad_noise: Option<f64>,
    /// Batch size over the median step time.
    pub images_per_s: f64,
    pub median_step_ms: f64,
    pub min_step_ms: f64,
    pub max_step_ms: f64,
}

pub fn run(options: &BenchOptions) -> Result<BenchResult> {
    if options.steps == 0 || options.batch_size == 0 {
        bail!("--steps and --batch-size must be at least 1");
    }
    set_cpu_threads(options.threads);
    let device = options.device.device()?.autodiff();
    let mut model = options.model.build(10, &device);
    let mut optim = options.optimizer.build(crate::optim::WEIGHT_DECAY);
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let n = options.batch_size;
    let batch = crate::data::Batch {
        images: (0..n * crate::data::IMAGE_BYTES)
            .map(|_| rng.random_range(-2.0f32..2.0))
            .collect(),
        labels: (0..n).map(|_| rng.random_range(0..10i64)).collect(),
    };
    let plain = device.clone().inner();
    let mut norm_sum = burn::tensor::Tensor::<1>::zeros([1], &plain);
    let mut times = Vec::with_capacity(options.steps);
    for step in 0..options.warmup + options.steps {
        let started = Instant::now();
        let (images, labels) = batch_tensors(batch.clone(), &device);
        let loss = loss_fn.forward(model.forward(images), labels);
        let mut grads = GradientsParams::from_grads(loss.backward(), &model);
        if options.grad_norm || options.grad_noise.is_some() {
            // Kept on the device, as in training: the norm is read back once per epoch.
            norm_sum = norm_sum + grad_norm(&model, &grads).expect("the model has parameters");
        }
        if let Some(sigma) = options.grad_noise {
            add_gradient_noise(&model, &mut grads, NoiseKind::Gaussian, sigma, step as u64);
        }
        model = optim.step(1e-3, model, grads);
        device
            .sync()
            .map_err(|e| anyhow::anyhow!("the device failed: {e:?}"))?;
        if step >= options.warmup {
            times.push(started.elapsed().as_secs_f64());
        }
    }
    let _ = norm_sum.into_scalar::<f64>();
    times.sort_by(f64::total_cmp);
    let median = if times.len() % 2 == 1 {
        times[times.len() / 2]
    } else {
        0.5 * (times[times.len() / 2 - 1] + times[times.len() / 2])
    };
    Ok(BenchResult {
        model: options.model.name().into(),
        optimizer: options.optimizer.name().into(),
        batch_size: n,
        device: options.device.name().into(),
        threads: rayon::current_num_threads(),
        steps: options.steps,
        grad_norm: options.grad_norm || options.grad_noise.is_some(),
        grad_noise: options.grad_noise,
        images_per_s: n as f64 / median,
        median_step_ms: median * 1e3,
        min_step_ms: times[0] * 1e3,
        max_step_ms: times[times.len() - 1] * 1e3,
    })
}
