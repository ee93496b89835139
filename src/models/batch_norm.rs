//! 2-D batch normalisation with PyTorch's semantics: the running variance is
//! updated with the *unbiased* batch variance (`n / (n - 1)`), where Burn's own
//! `BatchNorm` uses the biased one. Momentum 0.1 and eps 1e-5 as in PyTorch. A ReLU that
//! follows it can be fused into it ([`BatchNorm2d::forward_relu`]). Half-precision inputs
//! are normalised in f32 and come back in their own type.

use crate::kernels::batch_norm_train_relu;
use burn::module::{Flag, Module, Param, RunningState};
use burn::tensor::Tensor;
use burn::tensor::activation::relu;
use burn::tensor::module::batch_norm;
use burn::tensor::{DType, Device, FloatDType};

/// PyTorch's momentum convention: `running = 0.9 running + 0.1 batch`.
pub const MOMENTUM: f64 = 0.1;
/// Added to the variance before the square root.
pub const EPSILON: f64 = 1e-5;

/// Batch normalisation with PyTorch's semantics (unbiased running variance).
#[derive(Module, Debug)]
pub struct BatchNorm2d {
    /// Per-channel scale.
    pub gamma: Param<Tensor<1>>,
    /// Per-channel shift.
    pub beta: Param<Tensor<1>>,
    training: Param<Flag>,
    running_mean: RunningState<Tensor<1>>,
    running_var: RunningState<Tensor<1>>,
}

impl BatchNorm2d {
    /// Weight 1, bias 0, running mean 0 and variance 1.
    pub fn new(channels: usize, device: &Device) -> Self {
        Self {
            gamma: Param::from_tensor(Tensor::ones([channels], device)),
            beta: Param::from_tensor(Tensor::zeros([channels], device)),
            training: Param::from_bool(true),
            running_mean: RunningState::new(Tensor::zeros([channels], device)),
            running_var: RunningState::new(Tensor::ones([channels], device)),
        }
    }

    /// Normalises `input` `[n, c, h, w]` (batch statistics when training, running ones otherwise).
    pub fn forward(&self, input: Tensor<4>) -> Tensor<4> {
        self.normalize(input, false)
    }

    /// `relu(self.forward(input))`, in one pass on the CPU.
    pub fn forward_relu(&self, input: Tensor<4>) -> Tensor<4> {
        self.normalize(input, true)
    }

    fn normalize(&self, input: Tensor<4>, relu_after: bool) -> Tensor<4> {
        // Mixed precision normalises in f32, as PyTorch's autocast does: half-precision
        // batch statistics would lose the small variances.
        let dtype = input.dtype();
        if dtype != DType::F32 {
            return self
                .normalize(input.cast(FloatDType::F32), relu_after)
                .cast(FloatDType::from(dtype));
        }
        let device = input.device();
        if !(device.is_autodiff() && self.training.is_enabled()) {
            let mean = self.running_mean.value().to_device(&device);
            let var = self.running_var.value().to_device(&device);
            let out = batch_norm(input, self.gamma.val(), self.beta.val(), mean, var, EPSILON);
            return if relu_after { relu(out) } else { out };
        }
        let [batch, _, height, width] = input.dims();
        let n = (batch * height * width) as f64;
        let (output, batch_mean, batch_var) = batch_norm_train_relu(
            input,
            self.gamma.val(),
            self.beta.val(),
            EPSILON,
            relu_after,
        );
        let unbiased = if n > 1.0 { n / (n - 1.0) } else { 1.0 };
        let mean = self
            .running_mean
            .value_sync()
            .to_device(&device)
            .mul_scalar(1.0 - MOMENTUM)
            .add(batch_mean.detach().mul_scalar(MOMENTUM));
        let var = self
            .running_var
            .value_sync()
            .to_device(&device)
            .mul_scalar(1.0 - MOMENTUM)
            .add(batch_var.detach().mul_scalar(MOMENTUM * unbiased));
        self.running_mean.update(mean.detach());
        self.running_var.update(var.detach());
        output
    }

    /// The running statistics (mean, variance), for tests and inspection.
    pub fn running_stats(&self) -> (Tensor<1>, Tensor<1>) {
        (
            self.running_mean.value_sync(),
            self.running_var.value_sync(),
        )
    }
}
