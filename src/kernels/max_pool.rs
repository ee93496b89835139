//! 2x2 max pooling with stride 2 (the plain CNNs' `MaxPool2d(2)`) on the CPU, with its
//! own backward. Burn's flex backend pools through a general 3-D kernel that stores an
//! `i64` index per output and scatters through it; this one keeps a one-byte window
//! position per output and writes each input gradient once (the windows do not overlap).
//! It picks the same element as PyTorch: the first maximum in the window, or the last NaN.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::flex::FlexTensor;
use burn::backend::ops::ModuleOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, backend_extension};
use burn::tensor::ops::MaxPoolOptions;
use burn::tensor::{DType, Device, Shape, Tensor, TensorData};
use rayon::prelude::*;
use std::sync::Arc;

#[backend_extension(Flex, Autodiff)]
pub trait MaxPool2x2: Backend {
    /// `[n, c, h, w]` with `h` and `w` even to `[n, c, h / 2, w / 2]`.
    fn max_pool_2x2(x: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// The pooled tensor and, per output, which of the four window elements it came from.
fn forward(x: FlexTensor) -> (FlexTensor, Vec<u8>) {
    let x = x.to_contiguous();
    let dims = x.layout().shape().to_vec();
    let [n, c, h, w] = [dims[0], dims[1], dims[2], dims[3]];
    let (oh, ow) = (h / 2, w / 2);
    let input: &[f32] = x.storage();
    let mut output = vec![0f32; n * c * oh * ow];
    let mut argmax = vec![0u8; n * c * oh * ow];
    output
        .par_chunks_mut(oh * ow)
        .zip(argmax.par_chunks_mut(oh * ow))
        .enumerate()
        .for_each(|(plane, (out, arg))| {
            let src = &input[plane * h * w..(plane + 1) * h * w];
            for i in 0..oh {
                let top = &src[2 * i * w..(2 * i + 1) * w];
                let bottom = &src[(2 * i + 1) * w..(2 * i + 2) * w];
                let (out, arg) = (&mut out[i * ow..][..ow], &mut arg[i * ow..][..ow]);
                for j in 0..ow {
                    let window = [top[2 * j], top[2 * j + 1], bottom[2 * j], bottom[2 * j + 1]];
                    // Selects rather than branches, so the loop vectorises.
                    let (mut best, mut at) = (window[0], 0u8);
                    for (k, &v) in window.iter().enumerate().skip(1) {
                        let take = v > best || v.is_nan();
                        best = if take { v } else { best };
                        at = if take { k as u8 } else { at };
                    }
                    out[j] = best;
                    arg[j] = at;
                }
            }
        });
    let pooled = FlexTensor::from_data(TensorData::new(output, [n, c, oh, ow]));
    (pooled, argmax)
}

/// The input gradient: each output's gradient goes to the element it was taken from.
fn backward(grad: FlexTensor, argmax: &[u8], input_shape: &Shape) -> FlexTensor {
    let grad = grad.to_contiguous();
    let [n, c, h, w] = [
        input_shape[0],
        input_shape[1],
        input_shape[2],
        input_shape[3],
    ];
    let (oh, ow) = (h / 2, w / 2);
    let dy: &[f32] = grad.storage();
    let mut dx = vec![0f32; n * c * h * w];
    dx.par_chunks_mut(h * w)
        .enumerate()
        .for_each(|(plane, dst)| {
            let g = &dy[plane * oh * ow..(plane + 1) * oh * ow];
            let a = &argmax[plane * oh * ow..(plane + 1) * oh * ow];
            for i in 0..oh {
                for j in 0..ow {
                    let k = a[i * ow + j] as usize;
                    dst[(2 * i + k / 2) * w + 2 * j + k % 2] = g[i * ow + j];
                }
            }
        });
    FlexTensor::from_data(TensorData::new(dx, [n, c, h, w]))
}

fn supported(x: &FlexTensor) -> bool {
    let dims = x.layout().shape();
    x.dtype() == DType::F32
        && dims.num_dims() == 4
        && dims[2].is_multiple_of(2)
        && dims[3].is_multiple_of(2)
}

impl MaxPool2x2 for Flex {
    fn max_pool_2x2(x: FloatTensor<Self>) -> FloatTensor<Self> {
        if supported(&x) {
            forward(x).0
        } else {
            Flex::max_pool2d(x, [2, 2], [2, 2], [0, 0], [1, 1], false)
        }
    }
}

#[derive(Debug)]
struct MaxPool2x2Backward;

impl Backward<Flex, 1> for MaxPool2x2Backward {
    type State = (Arc<Vec<u8>>, Shape);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (argmax, shape) = ops.state;
        unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
            backward(grad, &argmax, &shape)
        });
    }
}

impl<C: CheckpointStrategy> MaxPool2x2 for Autodiff<Flex, C> {
    fn max_pool_2x2(x: FloatTensor<Self>) -> FloatTensor<Self> {
        if !supported(x.primitive()) {
            return Autodiff::<Flex, C>::max_pool2d(x, [2, 2], [2, 2], [0, 0], [1, 1], false);
        }
        match MaxPool2x2Backward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let shape = x.primitive().layout().shape().clone();
                let (pooled, argmax) = forward(x.into_primitive());
                prep.finish((Arc::new(argmax), shape), pooled)
            }
            OpsKind::UnTracked(prep) => prep.finish(forward(x.into_primitive()).0),
        }
    }
}

/// `MaxPool2d(2)`: this kernel on the CPU backend, Burn's pooling elsewhere.
pub fn max_pool_2x2(x: Tensor<4>) -> Tensor<4> {
    if x.device().inner() == Device::flex() {
        Tensor::from_dispatch(<Dispatch as MaxPool2x2>::max_pool_2x2(x.into_dispatch()))
    } else {
        burn::tensor::module::max_pool2d(x, MaxPoolOptions::new([2, 2]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Tolerance;

    fn reference(x: Tensor<4>) -> Tensor<4> {
        burn::tensor::module::max_pool2d(x, MaxPoolOptions::new([2, 2]))
    }

    /// Forward and gradient equal Burn's pooling, ties included (first maximum wins).
    #[test]
    fn matches_burn_forward_and_gradient() {
        let device = Device::flex().autodiff();
        // Small integers make ties frequent.
        let values: Vec<f32> = (0..2 * 3 * 6 * 8)
            .map(|i| ((i * 7919) % 5) as f32)
            .collect();
        let x = Tensor::<4>::from_data(TensorData::new(values, [2, 3, 6, 8]), &device);
        let weights = Tensor::<4>::from_data(
            TensorData::new((0..2 * 3 * 3 * 4).map(|i| i as f32).collect(), [2, 3, 3, 4]),
            &device,
        );
        let run = |pool: fn(Tensor<4>) -> Tensor<4>| {
            let x = x.clone().require_grad();
            let y = pool(x.clone());
            let grads = (y.clone() * weights.clone()).sum().backward();
            (y.inner().into_data(), x.grad(&grads).unwrap().into_data())
        };
        let (y, dx) = run(max_pool_2x2);
        let (y_ref, dx_ref) = run(reference);
        y.assert_approx_eq::<f32>(&y_ref, Tolerance::absolute(0.0));
        dx.assert_approx_eq::<f32>(&dx_ref, Tolerance::absolute(0.0));
    }

    #[test]
    fn nan_propagates_and_odd_sizes_fall_back() {
        let device = Device::flex();
        let x = Tensor::<4>::from_data(
            TensorData::new(vec![1.0, f32::NAN, 3.0, 2.0], [1, 1, 2, 2]),
            &device,
        );
        let y: Vec<f32> = max_pool_2x2(x).into_data().iter::<f32>().collect();
        assert!(y[0].is_nan());
        let odd = Tensor::<4>::ones([1, 2, 5, 5], &device);
        assert_eq!(max_pool_2x2(odd).dims(), [1, 2, 2, 2]);
    }
}
