//! Layer constructors with PyTorch's default initialisation written out, so that
//! no model depends on a Burn default that might differ from PyTorch's.

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Initializer, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::Device;

/// PyTorch's default for conv and linear layers: Kaiming-uniform with `a = sqrt(5)`,
/// i.e. `U(-1/sqrt(fan_in), 1/sqrt(fan_in))`, for weights and biases alike.
pub fn torch_default_init() -> Initializer {
    Initializer::KaimingUniform {
        gain: 1.0 / 3f64.sqrt(),
        fan_out_only: false,
    }
}

/// `kaiming_normal_(mode="fan_out", nonlinearity="relu")`: `N(0, 2 / fan_out)`.
pub fn kaiming_normal_fan_out() -> Initializer {
    Initializer::KaimingNormal {
        gain: 2f64.sqrt(),
        fan_out_only: true,
    }
}

/// A 3x3 convolution with padding 1 and a bias, PyTorch-default initialised.
pub fn conv3x3(input: usize, output: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new([input, output], [3, 3])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .with_initializer(torch_default_init())
        .init(device)
}

/// A bias-free convolution as used inside the ResNet (Kaiming-normal, fan-out).
pub fn resnet_conv(
    input: usize,
    output: usize,
    kernel: usize,
    stride: usize,
    device: &Device,
) -> Conv2d {
    let pad = kernel / 2;
    Conv2dConfig::new([input, output], [kernel, kernel])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
        .with_bias(false)
        .with_initializer(kaiming_normal_fan_out())
        .init(device)
}

pub fn linear(input: usize, output: usize, device: &Device) -> Linear {
    LinearConfig::new(input, output)
        .with_initializer(torch_default_init())
        .init(device)
}
