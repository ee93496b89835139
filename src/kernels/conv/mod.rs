//! 2-D convolution (square kernel, one stride, symmetric zero padding, no groups or
//! dilation: every convolution of the paper's models) on the CPU, with its own backward.
//!
//! The backward pass is where flex lost most to PyTorch: Burn
//! computes the weight gradient as a convolution of the batch-transposed input with the
//! output gradient as its kernel, which on flex becomes an im2col over a 32x32 "kernel"
//! (hundreds of MB) feeding a matrix product only 9 columns wide. Here both gradients are
//! one well-shaped matrix product per chunk of images, as in PyTorch's CPU path:
//! `dW += dY_c * rows(x_c)` and `dx_c = col2im(W^T * dY_c)`; the forward pass is
//! `y_c = W * col(x_c)` the same way, which also beats flex's tiled im2col.
//!
//! - `geometry`: the sizes of one convolution and the choices they imply;
//! - `lowering`: im2col, im2row, col2im;
//! - `forward`: the forward product (bias and ReLU fused);
//! - `gradients`: the weight and input gradients;
//! - `backend`: the Burn backend extension and its autodiff node.

mod backend;
mod forward;
mod geometry;
mod gradients;
mod lowering;
#[cfg(test)]
mod tests;

use backend::Conv2dKernel;
use burn::backend::Dispatch;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::tensor::activation::relu;
use burn::tensor::{DType, Device, Tensor};

/// The padding of `conv` when this kernel covers it for `x` (square kernel and stride,
/// symmetric padding, no dilation or groups, `f32` on the CPU backend).
fn kernel_padding(conv: &Conv2d, x: &Tensor<4>) -> Option<usize> {
    let [kh, kw] = conv.kernel_size;
    let padding = match conv.padding {
        PaddingConfig2d::Explicit(t, l, b, r) if t == l && l == b && b == r => Some(t),
        PaddingConfig2d::Valid => Some(0),
        _ => None,
    };
    let covered = kh == kw
        && conv.stride[0] == conv.stride[1]
        && conv.dilation == [1, 1]
        && conv.groups == 1
        && x.dtype() == DType::F32
        && x.device().inner() == Device::flex();
    padding.filter(|_| covered)
}

/// `conv.forward(x)`: with this kernel's backward on the CPU backend for the convolutions
/// it covers, Burn's convolution otherwise.
pub fn conv2d(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    let Some(padding) = kernel_padding(conv, &x) else {
        return conv.forward(x);
    };
    let weight = conv.weight.val();
    let out = Tensor::from_dispatch(<Dispatch as Conv2dKernel>::conv2d_no_bias(
        x.into_dispatch(),
        weight.into_dispatch(),
        conv.stride[0],
        padding,
    ));
    match &conv.bias {
        Some(bias) => {
            let c = bias.dims()[0];
            out + bias.val().reshape([1, c, 1, 1])
        }
        None => out,
    }
}

/// `relu(conv.forward(x))`: on the CPU backend, for a convolution with a bias that this
/// kernel covers, the bias and the ReLU are applied as the output is written (and their
/// gradients taken in one pass); elsewhere Burn's convolution, then ReLU.
pub fn conv2d_relu(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    match (kernel_padding(conv, &x), &conv.bias) {
        (Some(padding), Some(bias)) => {
            Tensor::from_dispatch(<Dispatch as Conv2dKernel>::conv2d_bias_relu(
                x.into_dispatch(),
                conv.weight.val().into_dispatch(),
                bias.val().into_dispatch(),
                conv.stride[0],
                padding,
            ))
        }
        _ => relu(conv2d(conv, x)),
    }
}
