//! One optimiser step on a Burn model, in the order the method fixes: forward,
//! cross-entropy, backward, the global gradient norm (before noise and weight
//! decay), gradient noise, then the optimiser (which adds weight decay and
//! momentum). Training and `adanoise bench` both run exactly this.

use super::param_stats::grad_norm;
use super::precision::StepPrecision;
use crate::engine::NoiseDraw;
use crate::models::Model;
use crate::noise::add_gradient_noise;
use burn::nn::loss::CrossEntropyLoss;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{Int, Tensor};

/// What one step trains on and how.
pub struct StepInput {
    /// The batch's images, `[n, 3, 32, 32]`, normalised (and augmented).
    pub images: Tensor<4>,
    /// Their labels.
    pub labels: Tensor<1, Int>,
    /// The learning rate of this step.
    pub lr: f64,
    /// Whether to compute the global gradient norm.
    pub measure_norm: bool,
    /// Gradient noise, if this step gets any.
    pub grad_noise: Option<NoiseDraw>,
}

/// What a step gives back besides the updated model (all detached, on the device).
pub struct StepOutput {
    /// The model after the update.
    pub model: Model,
    /// The batch's mean loss.
    pub loss: Tensor<1>,
    /// The batch's logits.
    pub logits: Tensor<2>,
    /// The global L2 norm of the clean loss gradient, when asked for.
    pub grad_norm: Option<Tensor<1>>,
    /// Whether the update was skipped: f16 gradients that were not finite (the loss scale
    /// was halved instead).
    pub skipped: bool,
}

/// Runs one training step of `model` on `input`, computed in `precision`.
pub fn train_step(
    model: Model,
    optim: &mut ModuleOptimizer,
    loss_fn: &CrossEntropyLoss,
    input: StepInput,
    precision: &mut StepPrecision,
) -> StepOutput {
    let logits = precision.forward(&model, input.images);
    let loss = loss_fn.forward(logits.clone(), input.labels);
    let scaled = precision.backward_loss(loss.clone());
    let mut grads = GradientsParams::from_grads(scaled.backward(), &model);
    precision.unscale(&model, &mut grads);
    let norm = if input.measure_norm || precision.loss_scale.is_some() {
        grad_norm(&model, &grads)
    } else {
        None
    };
    if let Some(scale) = precision.loss_scale.as_mut() {
        // One value read back per step, as PyTorch's GradScaler does.
        let finite = norm
            .as_ref()
            .is_none_or(|n| n.clone().into_scalar::<f64>().is_finite());
        scale.update(finite);
        if !finite {
            return StepOutput {
                model,
                loss: loss.detach(),
                logits: logits.detach(),
                grad_norm: None,
                skipped: true,
            };
        }
    }
    if let Some(noise) = input.grad_noise {
        add_gradient_noise(&model, &mut grads, noise.kind, noise.sigma, noise.seed);
    }
    let model = optim.step(input.lr, model, grads);
    StepOutput {
        model,
        loss: loss.detach(),
        logits: logits.detach(),
        grad_norm: norm.filter(|_| input.measure_norm),
        skipped: false,
    }
}
