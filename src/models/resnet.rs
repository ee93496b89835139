//! The CIFAR ResNet-18 of the PyTorch_CIFAR10 repository the paper built on:
//! 3x3 stem without bias, BN, ReLU, 3x3/2 max-pool, four stages of two
//! BasicBlocks (64/128/256/512), global average pooling, linear 512 -> classes.

use super::batch_norm::BatchNorm2d;
use super::layers::{linear, resnet_conv};
use crate::kernels::{conv2d, max_pool2d};
use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig, MaxPool2d, MaxPool2dConfig};
use burn::nn::{Linear, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};

/// The 1x1 convolution and BatchNorm of a block's shortcut that changes shape.
#[derive(Module, Debug)]
pub struct Downsample {
    conv: Conv2d,
    bn: BatchNorm2d,
}

/// Two 3x3 convolutions with BatchNorm and ReLU, plus the shortcut.
#[derive(Module, Debug)]
pub struct BasicBlock {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    conv2: Conv2d,
    bn2: BatchNorm2d,
    downsample: Option<Downsample>,
}

impl BasicBlock {
    fn new(input: usize, output: usize, stride: usize, device: &Device) -> Self {
        let downsample = (stride != 1 || input != output).then(|| Downsample {
            conv: resnet_conv(input, output, 1, stride, device),
            bn: BatchNorm2d::new(output, device),
        });
        Self {
            conv1: resnet_conv(input, output, 3, stride, device),
            bn1: BatchNorm2d::new(output, device),
            conv2: resnet_conv(output, output, 3, 1, device),
            bn2: BatchNorm2d::new(output, device),
            downsample,
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let identity = match &self.downsample {
            Some(d) => d.bn.forward(conv2d(&d.conv, x.clone())),
            None => x.clone(),
        };
        let out = self.bn1.forward_relu(conv2d(&self.conv1, x));
        let out = self.bn2.forward(conv2d(&self.conv2, out));
        relu(out + identity)
    }
}

/// The stem's max pool: kernel, stride, padding.
const STEM_POOL: (usize, usize, usize) = (3, 2, 1);

/// The CIFAR ResNet-18 of the PyTorch_CIFAR10 repository.
#[derive(Module, Debug)]
pub struct ResNet18 {
    stem: Conv2d,
    stem_bn: BatchNorm2d,
    /// Kept for the checkpoints' record format; the forward pass pools with
    /// [`max_pool2d`] and [`STEM_POOL`], the same settings.
    stem_pool: MaxPool2d,
    blocks: Vec<BasicBlock>,
    pool: AdaptiveAvgPool2d,
    fc: Linear,
}

impl ResNet18 {
    /// The network, initialised as PyTorch does (Kaiming-normal fan-out convolutions).
    pub fn new(classes: usize, device: &Device) -> Self {
        let mut blocks = Vec::new();
        let mut input = 64;
        for (stage, width) in [64, 128, 256, 512].into_iter().enumerate() {
            let stride = if stage == 0 { 1 } else { 2 };
            blocks.push(BasicBlock::new(input, width, stride, device));
            blocks.push(BasicBlock::new(width, width, 1, device));
            input = width;
        }
        Self {
            stem: resnet_conv(3, 64, 3, 1, device),
            stem_bn: BatchNorm2d::new(64, device),
            stem_pool: {
                let (kernel, stride, padding) = STEM_POOL;
                MaxPool2dConfig::new([kernel, kernel])
                    .with_strides([stride, stride])
                    .with_padding(PaddingConfig2d::Explicit(
                        padding, padding, padding, padding,
                    ))
                    .init()
            },
            blocks,
            pool: AdaptiveAvgPool2dConfig::new([1, 1]).init(),
            fc: linear(512, classes, device),
        }
    }

    /// The logits of `x` `[n, 3, 32, 32]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let (kernel, stride, padding) = STEM_POOL;
        let stem = self.stem_bn.forward_relu(conv2d(&self.stem, x));
        let mut x = max_pool2d(stem, kernel, stride, padding);
        for block in &self.blocks {
            x = block.forward(x);
        }
        self.fc.forward(self.pool.forward(x).flatten(1, 3))
    }
}
