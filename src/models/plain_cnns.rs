//! The paper's three custom CNNs: baby-cnn, tiny-cnn and simple-cnn
//! (conv 3x3 + ReLU + max-pool stages, then fully connected layers).

use super::layers::{conv3x3, linear};
use crate::kernels::{conv2d_relu, max_pool2d};
use burn::module::Module;
use burn::nn::Linear;
use burn::nn::conv::Conv2d;
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};

/// Conv stages followed by a ReLU MLP; the last linear layer has no activation.
#[derive(Module, Debug)]
pub struct PlainCnn {
    convs: Vec<Conv2d>,
    linears: Vec<Linear>,
}

impl PlainCnn {
    /// `channels`: input channels then the width of each conv stage (each halves the image);
    /// `widths`: the fully connected layers' sizes after flattening, ending with the classes.
    pub fn new(channels: &[usize], widths: &[usize], device: &Device) -> Self {
        let convs = channels
            .windows(2)
            .map(|w| conv3x3(w[0], w[1], device))
            .collect();
        let side = 32 >> (channels.len() - 1);
        let flat = channels[channels.len() - 1] * side * side;
        let mut sizes = vec![flat];
        sizes.extend_from_slice(widths);
        let linears = sizes
            .windows(2)
            .map(|w| linear(w[0], w[1], device))
            .collect();
        Self { convs, linears }
    }

    /// The logits of `x` `[n, 3, 32, 32]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let mut x = x;
        for conv in &self.convs {
            x = max_pool2d(conv2d_relu(conv, x), 2, 2, 0);
        }
        let mut x: Tensor<2> = x.flatten(1, 3);
        let last = self.linears.len() - 1;
        for (i, layer) in self.linears.iter().enumerate() {
            x = layer.forward(x);
            if i < last {
                x = relu(x);
            }
        }
        x
    }
}

/// baby-cnn: conv 3->8, ReLU, pool; linear 2048->classes.
pub fn baby_cnn(classes: usize, device: &Device) -> PlainCnn {
    PlainCnn::new(&[3, 8], &[classes], device)
}

/// tiny-cnn: conv 3->32->64 with ReLU and pools; linear 4096->128->classes.
pub fn tiny_cnn(classes: usize, device: &Device) -> PlainCnn {
    PlainCnn::new(&[3, 32, 64], &[128, classes], device)
}

/// simple-cnn: conv 3->256->512->512 with ReLU and pools; linear 8192->2048->1024->512->classes.
pub fn simple_cnn(classes: usize, device: &Device) -> PlainCnn {
    PlainCnn::new(&[3, 256, 512, 512], &[2048, 1024, 512, classes], device)
}
