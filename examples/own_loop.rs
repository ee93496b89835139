//! Adaptive noise in a plain Burn training loop: your own model and data, with
//! adanoise's LR schedule, noise scheduler, noise injection and the two
//! measurements the scheduler reads. Nothing here uses adanoise's trainer.
//!
//!     cargo run --release --example own_loop
//!
//! The model is a small MLP on a synthetic two-class problem; the thresholds are
//! scaled to the example's 12 epochs so that noise fires.

use adanoise::engine::burn::param_stats::{WeightSnapshot, grad_norm};
use adanoise::noise::{
    NoiseKind, NoiseScheduler, NoiseSchedulerConfig, Observation, WeightNoiseScale,
    add_gradient_noise, add_weight_noise,
};
use adanoise::schedule::{CosineRestarts, CosineRestartsConfig};
use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, LinearConfig, Relu};
use burn::optim::lr_scheduler::LrScheduler;
use burn::optim::{GradientsParams, SgdConfig};
use burn::tensor::{Device, Distribution, Int, Tensor};

const EPOCHS: u64 = 12;
const STEPS_PER_EPOCH: u64 = 20;
const BATCH: usize = 64;

#[derive(Module, Debug)]
struct Mlp {
    hidden: Linear,
    out: Linear,
    relu: Relu,
}

impl Mlp {
    fn new(device: &Device) -> Self {
        Self {
            hidden: LinearConfig::new(16, 32).init(device),
            out: LinearConfig::new(32, 2).init(device),
            relu: Relu::new(),
        }
    }

    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.out.forward(self.relu.forward(self.hidden.forward(x)))
    }
}

/// A batch of a noisy two-class problem: the label is the sign of the first feature.
fn batch(device: &Device) -> (Tensor<2>, Tensor<1, Int>) {
    let x = Tensor::<2>::random([BATCH, 16], Distribution::Normal(0.0, 1.0), device);
    let noisy = x.clone() + Tensor::random([BATCH, 16], Distribution::Normal(0.0, 0.5), device);
    let y = noisy
        .slice([0..BATCH, 0..1])
        .greater_elem(0.0)
        .int()
        .reshape([BATCH]);
    (x, y)
}

fn main() -> anyhow::Result<()> {
    let device = Device::flex().autodiff();
    let mut model = Mlp::new(&device);
    let mut optim = SgdConfig::new().init();
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let mut lr = CosineRestarts::new(CosineRestartsConfig {
        restart_epochs: 4,
        ..CosineRestartsConfig::paper(0.1, EPOCHS, STEPS_PER_EPOCH)
    })?;
    let thresholds = NoiseSchedulerConfig {
        min_epochs_before_flag: 3,
        flag_window: 2,
        consecutive_trigger: 3,
        cooldown_min: 1.0,
        cooldown_max: 2.0,
        ..Default::default()
    };
    let mut scheduler = NoiseScheduler::new(thresholds, EPOCHS)?;
    let (mut grad_sigma, mut weight_sigma) = (0.0, 0.0);
    for epoch in 1..=EPOCHS {
        // w_{e-1} is taken before this epoch's weight noise.
        let start = WeightSnapshot::take(&model);
        model = add_weight_noise(
            model,
            NoiseKind::Gaussian,
            weight_sigma,
            WeightNoiseScale::Absolute,
            epoch,
        );
        let (mut loss_sum, mut norm_sum) = (0.0, 0.0);
        for step in 0..STEPS_PER_EPOCH {
            let (x, y) = batch(&device);
            let loss = loss_fn.forward(model.forward(x), y);
            let mut grads = GradientsParams::from_grads(loss.backward(), &model);
            // The norm the scheduler reads: before noise and before weight decay.
            norm_sum += grad_norm(&model, &grads).map_or(0.0, |n| n.into_scalar::<f64>());
            let seed = (epoch - 1) * STEPS_PER_EPOCH + step;
            add_gradient_noise(&model, &mut grads, NoiseKind::Gaussian, grad_sigma, seed);
            model = optim.step(lr.step(), model, grads);
            loss_sum += loss.into_scalar::<f64>();
        }
        let train_loss = loss_sum / STEPS_PER_EPOCH as f64;
        let val_loss = {
            let (x, y) = batch(&device);
            loss_fn
                .forward(model.valid().forward(x.inner()), y.inner())
                .into_scalar::<f64>()
        };
        let decision = scheduler.observe(Observation {
            epoch,
            train_loss,
            val_loss,
            grad_norm: norm_sum / STEPS_PER_EPOCH as f64,
            weight_update: WeightSnapshot::take(&model).relative_change(&start),
        })?;
        println!(
            "epoch {epoch:2}: train loss {train_loss:.4} val loss {val_loss:.4} | {}",
            if decision.flags.is_empty() {
                "no flags".to_string()
            } else {
                decision.describe(NoiseKind::Gaussian, &adanoise_core::PolicyConfig::default())
            }
        );
        (grad_sigma, weight_sigma) = (decision.grad_sigma, decision.weight_sigma);
    }
    Ok(())
}
