//! The four models on LibTorch, as plain tensors and libtorch's own functional
//! ops (cuDNN's on a GPU), with the weights of the Burn model of the same seed,
//! so that both engines start from identical weights (PyTorch's initialisation,
//! `crate::models`). BatchNorm follows PyTorch: running variance from the
//! unbiased batch variance, momentum 0.1, eps 1e-5.

use crate::models::{Model, ModelKind};
use anyhow::{Context, Result, bail};
use burn::module::{Module, ModuleVisitor, Param};
use tch::{Device, Tensor};

/// BatchNorm's momentum and eps (PyTorch's).
const BN_MOMENTUM: f64 = 0.1;
const BN_EPS: f64 = 1e-5;

/// A convolution: weight `[out, in, k, k]`, optional bias, stride and padding.
struct Conv {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: i64,
    padding: i64,
}

impl Conv {
    fn forward(&self, x: &Tensor) -> Tensor {
        x.conv2d(
            &self.weight,
            self.bias.as_ref(),
            [self.stride, self.stride],
            [self.padding, self.padding],
            [1, 1],
            1,
        )
    }
}

/// A linear layer in PyTorch's layout: weight `[out, in]`, bias `[out]`.
struct Linear {
    weight: Tensor,
    bias: Tensor,
}

/// BatchNorm's affine parameters and running statistics.
struct BatchNorm {
    weight: Tensor,
    bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
}

impl BatchNorm {
    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        x.batch_norm(
            Some(&self.weight),
            Some(&self.bias),
            Some(&self.running_mean),
            Some(&self.running_var),
            train,
            BN_MOMENTUM,
            BN_EPS,
            true,
        )
    }
}

/// A ResNet BasicBlock.
struct Block {
    conv1: Conv,
    bn1: BatchNorm,
    conv2: Conv,
    bn2: BatchNorm,
    downsample: Option<(Conv, BatchNorm)>,
}

enum Layers {
    /// baby-cnn, tiny-cnn, simple-cnn: conv + ReLU + 2x2 max-pool stages, then linears.
    Plain {
        convs: Vec<Conv>,
        linears: Vec<Linear>,
    },
    /// The CIFAR ResNet-18.
    Resnet {
        stem: Conv,
        stem_bn: BatchNorm,
        blocks: Vec<Block>,
        fc: Linear,
    },
}

/// One of the four models on a LibTorch device.
pub struct TorchModel {
    layers: Layers,
    /// The trainable tensors, in the Burn model's order (shared with `layers`).
    params: Vec<Tensor>,
    /// The BatchNorm running statistics (shared with `layers`).
    buffers: Vec<Tensor>,
}

/// Every float tensor of a Burn model in its visiting order: values, shape, and whether it
/// is trained (BatchNorm running statistics are not).
struct HostTensors(Vec<(Vec<f32>, Vec<i64>, bool)>);

impl ModuleVisitor for HostTensors {
    fn visit_float<const D: usize>(&mut self, param: &Param<burn::tensor::Tensor<D>>) {
        let tensor = param.val();
        let tensor = if tensor.is_autodiff() {
            tensor.inner()
        } else {
            tensor
        };
        let shape = tensor.dims().iter().map(|&d| d as i64).collect();
        let values = tensor
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap_or_default();
        self.0.push((values, shape, param.is_require_grad()));
    }
}

/// Takes the Burn model's tensors one by one, in order, onto the device.
struct Source {
    tensors: std::vec::IntoIter<(Vec<f32>, Vec<i64>, bool)>,
    device: Device,
    channels_last: bool,
    params: Vec<Tensor>,
    buffers: Vec<Tensor>,
}

impl Source {
    fn next(&mut self, trained: bool) -> Result<Tensor> {
        let (values, shape, is_trained) = self
            .tensors
            .next()
            .context("the Burn model has fewer tensors than the LibTorch one")?;
        if is_trained != trained {
            bail!("the Burn and LibTorch models list their tensors differently");
        }
        let mut tensor = Tensor::f_from_slice(&values)?
            .f_reshape(&shape)?
            .f_to_device(self.device)?;
        if self.channels_last && shape.len() == 4 {
            tensor = channels_last(&tensor)?;
        }
        if trained {
            let tensor = tensor.set_requires_grad(true);
            self.params.push(tensor.shallow_clone());
            Ok(tensor)
        } else {
            self.buffers.push(tensor.shallow_clone());
            Ok(tensor)
        }
    }

    fn conv(&mut self, bias: bool, stride: i64, padding: i64) -> Result<Conv> {
        let weight = self.next(true)?;
        let bias = if bias { Some(self.next(true)?) } else { None };
        Ok(Conv {
            weight,
            bias,
            stride,
            padding,
        })
    }

    /// Burn keeps a linear weight as `[in, out]`; PyTorch as `[out, in]`.
    fn linear(&mut self) -> Result<Linear> {
        let weight = self.next(true)?;
        let weight = weight
            .detach()
            .f_transpose(0, 1)?
            .f_contiguous()?
            .set_requires_grad(true);
        let last = self.params.len() - 1;
        self.params[last] = weight.shallow_clone();
        Ok(Linear {
            weight,
            bias: self.next(true)?,
        })
    }

    fn batch_norm(&mut self) -> Result<BatchNorm> {
        Ok(BatchNorm {
            weight: self.next(true)?,
            bias: self.next(true)?,
            running_mean: self.next(false)?,
            running_var: self.next(false)?,
        })
    }

    fn block(&mut self, stride: i64, downsample: bool) -> Result<Block> {
        let conv1 = self.conv(false, stride, 1)?;
        let bn1 = self.batch_norm()?;
        let conv2 = self.conv(false, 1, 1)?;
        let bn2 = self.batch_norm()?;
        let downsample = if downsample {
            Some((self.conv(false, stride, 0)?, self.batch_norm()?))
        } else {
            None
        };
        Ok(Block {
            conv1,
            bn1,
            conv2,
            bn2,
            downsample,
        })
    }
}

/// `x` with channels-last (NHWC) strides and the same shape and values.
pub fn channels_last(x: &Tensor) -> Result<Tensor> {
    Ok(x.f_permute([0, 2, 3, 1])?
        .f_contiguous()?
        .f_permute([0, 3, 1, 2])?)
}

/// Conv stages of the three plain CNNs: input channels, then each stage's width.
fn plain_channels(kind: ModelKind) -> &'static [usize] {
    match kind {
        ModelKind::BabyCnn => &[3, 8],
        ModelKind::TinyCnn => &[3, 32, 64],
        _ => &[3, 256, 512, 512],
    }
}

impl TorchModel {
    /// `kind` on `device` with the weights of `burn_model` (a model of the same kind),
    /// with channels-last weights when asked (for cuDNN).
    pub fn from_burn(
        kind: ModelKind,
        burn_model: &Model,
        device: Device,
        channels_last: bool,
    ) -> Result<Self> {
        let mut host = HostTensors(Vec::new());
        burn_model.visit(&mut host);
        let mut source = Source {
            tensors: host.0.into_iter(),
            device,
            channels_last,
            params: Vec::new(),
            buffers: Vec::new(),
        };
        let layers = match kind {
            ModelKind::Resnet18 => {
                let stem = source.conv(false, 1, 1)?;
                let stem_bn = source.batch_norm()?;
                let mut blocks = Vec::new();
                let mut input = 64;
                for (stage, width) in [64, 128, 256, 512].into_iter().enumerate() {
                    let stride = if stage == 0 { 1 } else { 2 };
                    blocks.push(source.block(stride, stride != 1 || input != width)?);
                    blocks.push(source.block(1, false)?);
                    input = width;
                }
                let fc = source.linear()?;
                Layers::Resnet {
                    stem,
                    stem_bn,
                    blocks,
                    fc,
                }
            }
            plain => {
                let stages = plain_channels(plain).len() - 1;
                let convs = (0..stages)
                    .map(|_| source.conv(true, 1, 1))
                    .collect::<Result<_>>()?;
                let mut linears = Vec::new();
                while source.tensors.len() > 0 {
                    linears.push(source.linear()?);
                }
                Layers::Plain { convs, linears }
            }
        };
        if source.tensors.len() > 0 {
            bail!("the Burn model has more tensors than the LibTorch one");
        }
        Ok(Self {
            layers,
            params: source.params,
            buffers: source.buffers,
        })
    }

    /// The trainable tensors, in a fixed order.
    pub fn params(&self) -> &[Tensor] {
        &self.params
    }

    /// The BatchNorm running statistics, in a fixed order.
    pub fn buffers(&self) -> &[Tensor] {
        &self.buffers
    }

    /// Trainable scalars.
    pub fn trainable_params(&self) -> usize {
        self.params.iter().map(Tensor::numel).sum()
    }

    /// Logits `[n, classes]` of `x` `[n, 3, 32, 32]`; `train` uses and updates BatchNorm's
    /// batch statistics.
    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        match &self.layers {
            Layers::Plain { convs, linears } => {
                let mut x = x.shallow_clone();
                for conv in convs {
                    x = conv
                        .forward(&x)
                        .relu()
                        .max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false);
                }
                let mut x = x.flatten(1, -1);
                let last = linears.len() - 1;
                for (i, layer) in linears.iter().enumerate() {
                    x = x.linear(&layer.weight, Some(&layer.bias));
                    if i < last {
                        x = x.relu();
                    }
                }
                x
            }
            Layers::Resnet {
                stem,
                stem_bn,
                blocks,
                fc,
            } => {
                let x = stem_bn.forward(&stem.forward(x), train).relu();
                let mut x = x.max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
                for block in blocks {
                    let identity = match &block.downsample {
                        Some((conv, bn)) => bn.forward(&conv.forward(&x), train),
                        None => x.shallow_clone(),
                    };
                    let out = block.bn1.forward(&block.conv1.forward(&x), train).relu();
                    let out = block.bn2.forward(&block.conv2.forward(&out), train);
                    x = (out + identity).relu();
                }
                x.adaptive_avg_pool2d([1, 1])
                    .flatten(1, -1)
                    .linear(&fc.weight, Some(&fc.bias))
            }
        }
    }
}
