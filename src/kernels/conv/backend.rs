//! The convolution as a Burn backend extension: the operation on flex tensors
//! (this crate's kernel for `f32`, flex's otherwise), and its autodiff node with
//! the backward pass of `conv` and of `relu(conv + bias)`.

use super::forward::forward;
use super::geometry::Geometry;
use super::gradients::{input_grad, weight_grad};
use crate::kernels::fixed_order_sum;
use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::ops::{ActivationOps, ModuleOps};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Flex, backend_extension};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, TensorData};
use rayon::prelude::*;

#[backend_extension(Flex, Autodiff)]
pub trait Conv2dKernel: Backend {
    /// `x [n, c_in, h, w]` convolved with `weight [c_out, c_in, k, k]`, no bias.
    fn conv2d_no_bias(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        stride: usize,
        padding: usize,
    ) -> FloatTensor<Self>;

    /// `relu(conv(x, weight) + bias)`, the bias `[c_out]` and the ReLU applied as the
    /// product's result is written out.
    fn conv2d_bias_relu(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        stride: usize,
        padding: usize,
    ) -> FloatTensor<Self>;
}

pub(super) fn options(stride: usize, padding: usize) -> ConvOptions<2> {
    ConvOptions::new([stride, stride], [padding, padding], [1, 1], 1)
}

/// The forward pass on flex tensors (then `+ bias` and ReLU when given a bias): this kernel
/// for `f32`, flex's convolution otherwise.
pub(super) fn conv_forward(
    x: FlexTensor,
    weight: FlexTensor,
    bias: Option<&FlexTensor>,
    stride: usize,
    padding: usize,
) -> FlexTensor {
    if x.dtype() != DType::F32 || weight.dtype() != DType::F32 {
        let y = Flex::conv2d(x, weight, bias.cloned(), options(stride, padding));
        return match bias {
            Some(_) => Flex::relu(y),
            None => y,
        };
    }
    let bias = bias.map(|b| b.to_contiguous());
    let (x, weight) = (x.to_contiguous(), weight.to_contiguous());
    let g = Geometry::new(
        &x.layout().shape().to_vec(),
        &weight.layout().shape().to_vec(),
        stride,
        padding,
    );
    let y = forward(
        &g,
        x.storage(),
        weight.storage(),
        bias.as_ref().map(|b| b.storage()),
    );
    FlexTensor::from_data(TensorData::new(y, [g.n, g.c_out, g.oh, g.ow]))
}

impl Conv2dKernel for Flex {
    fn conv2d_no_bias(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        stride: usize,
        padding: usize,
    ) -> FloatTensor<Self> {
        conv_forward(x, weight, None, stride, padding)
    }

    fn conv2d_bias_relu(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        stride: usize,
        padding: usize,
    ) -> FloatTensor<Self> {
        conv_forward(x, weight, Some(&bias), stride, padding)
    }
}

/// Registers the gradients of the convolution's input and weight, for the parents that
/// want them, from the gradient `dy` of its (pre-bias) output.
pub(super) fn register_grads(
    (x, weight): (&FlexTensor, &FlexTensor),
    (x_node, weight_node): (Option<NodeId>, Option<NodeId>),
    (stride, padding): (usize, usize),
    dy: &[f32],
    grads: &mut Gradients,
) {
    let g = Geometry::new(
        &x.layout().shape().to_vec(),
        &weight.layout().shape().to_vec(),
        stride,
        padding,
    );
    if let Some(node) = x_node {
        let weight = weight.to_contiguous();
        let dx = input_grad(&g, weight.storage(), dy);
        let dx = FlexTensor::from_data(TensorData::new(dx, [g.n, g.c_in, g.h, g.w]));
        grads.register::<Flex>(node, dx);
    }
    if let Some(node) = weight_node {
        let x = x.to_contiguous();
        let dw = weight_grad(&g, x.storage(), dy);
        let dw = FlexTensor::from_data(TensorData::new(dw, [g.c_out, g.c_in, g.k, g.k]));
        grads.register::<Flex>(node, dw);
    }
}

#[derive(Debug)]
pub(super) struct Conv2dBackward;

impl Backward<Flex, 2> for Conv2dBackward {
    /// The input, the weight, the stride and the padding.
    type State = (FlexTensor, FlexTensor, usize, usize);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [x_node, weight_node] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node).to_contiguous();
        let (x, weight, stride, padding) = ops.state;
        let nodes = (x_node.map(|n| n.id), weight_node.map(|n| n.id));
        register_grads((&x, &weight), nodes, (stride, padding), dy.storage(), grads);
    }
}

/// The gradient of `relu(y + bias)` with respect to `y` (`dy` where the output `out`
/// `[images, channels, plane]` is positive, else zero) and to `bias` (its sum over images
/// and positions, in a fixed order).
pub(super) fn through_bias_relu(
    out: &[f32],
    dy: &[f32],
    [images, channels, plane]: [usize; 3],
) -> (Vec<f32>, Vec<f32>) {
    let mut dz = vec![0f32; dy.len()];
    dz.par_chunks_mut(plane)
        .zip(out.par_chunks(plane).zip(dy.par_chunks(plane)))
        .for_each(|(dz, (out, dy))| {
            for ((dz, &o), &d) in dz.iter_mut().zip(out).zip(dy) {
                *dz = if o > 0.0 { d } else { 0.0 };
            }
        });
    let bias_grad = (0..channels)
        .into_par_iter()
        .map(|c| {
            (0..images)
                .map(|n| {
                    let dz = &dz[(n * channels + c) * plane..][..plane];
                    fixed_order_sum(dz, dz, |v, _| v)
                })
                .sum::<f64>() as f32
        })
        .collect();
    (dz, bias_grad)
}

#[derive(Debug)]
pub(super) struct Conv2dBiasReluBackward;

impl Backward<Flex, 3> for Conv2dBiasReluBackward {
    /// The input, the weight, the output (whose sign is the ReLU's mask), stride, padding.
    type State = (FlexTensor, FlexTensor, FlexTensor, usize, usize);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [x_node, weight_node, bias_node] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node).to_contiguous();
        let (x, weight, out, stride, padding) = ops.state;
        let shape = out.layout().shape();
        let (channels, plane) = (shape[1], shape[2] * shape[3]);
        let sizes = [shape[0], channels, plane];
        let (dz, bias_grad) = through_bias_relu(out.storage(), dy.storage(), sizes);
        if let Some(node) = bias_node {
            let db = FlexTensor::from_data(TensorData::new(bias_grad, [channels]));
            grads.register::<Flex>(node.id, db);
        }
        let nodes = (x_node.map(|n| n.id), weight_node.map(|n| n.id));
        register_grads((&x, &weight), nodes, (stride, padding), &dz, grads);
    }
}

impl<C: CheckpointStrategy> Conv2dKernel for Autodiff<Flex, C> {
    fn conv2d_no_bias(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        stride: usize,
        padding: usize,
    ) -> FloatTensor<Self> {
        let prepared = Conv2dBackward
            .prepare::<C>([x.node(), weight.node()])
            .compute_bound()
            .stateful();
        let (x, weight) = (x.into_primitive(), weight.into_primitive());
        let out = conv_forward(x.clone(), weight.clone(), None, stride, padding);
        match prepared {
            OpsKind::Tracked(prep) => prep.finish((x, weight, stride, padding), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }

    fn conv2d_bias_relu(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        stride: usize,
        padding: usize,
    ) -> FloatTensor<Self> {
        let prepared = Conv2dBiasReluBackward
            .prepare::<C>([x.node(), weight.node(), bias.node()])
            .compute_bound()
            .stateful();
        let (x, weight, bias) = (
            x.into_primitive(),
            weight.into_primitive(),
            bias.into_primitive(),
        );
        let out = conv_forward(x.clone(), weight.clone(), Some(&bias), stride, padding);
        match prepared {
            OpsKind::Tracked(prep) => {
                let out = out.to_contiguous();
                prep.finish((x, weight, out.clone(), stride, padding), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }
}
