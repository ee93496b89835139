//! Training-mode batch normalisation of `[n, c, h, w]` with the batch's statistics, and the
//! ReLU that follows it where asked, on the CPU with its own backward. Burn's default builds
//! the statistics, the normalisation and their gradients out of a dozen whole-tensor passes,
//! two of them transposing copies; here the forward pass reads each channel twice for its
//! statistics (in cache) and once more to write the output, and the backward pass reads the
//! output gradient twice. Sums run in a fixed order (per plane in 16 lanes, then over planes
//! in `f64`), so results do not depend on the number of threads.

use super::{fixed_order_sum, fixed_order_sum_pair, vectorized};
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, AutodiffBackend, Backend, Dispatch, Flex, backend_extension};
use burn::tensor::activation::relu;
use burn::tensor::module::batch_norm_train;
use burn::tensor::{DType, Device, Tensor, TensorData};
use rayon::prelude::*;

/// Training-mode batch normalisation (then ReLU) as a backend operation.
#[backend_extension(Flex, Autodiff)]
pub trait BatchNormKernel: Backend {
    /// `x [n, c, h, w]` normalised with its batch statistics per channel, scaled by `gamma`,
    /// shifted by `beta`, then clamped at zero when `relu`; returns the output, the batch
    /// mean and the biased batch variance (each `[c]`).
    fn batch_norm_train_relu(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
        relu: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

/// Sizes of one batch normalisation: images, channels, values per channel plane.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    n: usize,
    c: usize,
    plane: usize,
}

impl Geometry {
    fn of(x: &FlexTensor) -> Self {
        let dims = x.layout().shape();
        Self {
            n: dims[0],
            c: dims[1],
            plane: dims[2] * dims[3],
        }
    }

    /// Values each channel's statistics run over.
    fn count(&self) -> f64 {
        (self.n * self.plane) as f64
    }

    /// The planes of channel `ch`, image by image.
    fn planes<'a>(&self, values: &'a [f32], ch: usize) -> impl Iterator<Item = &'a [f32]> {
        (0..self.n).map(move |img| &values[(img * self.c + ch) * self.plane..][..self.plane])
    }
}

/// What the backward pass needs: per channel, the mean, `1 / sqrt(var + eps)`, and the
/// output's scale and shift (`y = x * scale + shift`, recomputed for the ReLU's mask).
#[derive(Debug, Clone)]
struct Statistics {
    mean: Vec<f32>,
    inv_std: Vec<f32>,
    scale: Vec<f32>,
    shift: Vec<f32>,
}

/// Output, statistics and the biased variance.
fn forward(
    x: &FlexTensor,
    gamma: &FlexTensor,
    beta: &FlexTensor,
    epsilon: f64,
    relu: bool,
) -> (Vec<f32>, Statistics, Vec<f32>) {
    let g = Geometry::of(x);
    let (x, gamma, beta): (&[f32], &[f32], &[f32]) = (x.storage(), gamma.storage(), beta.storage());
    let per_channel: Vec<(f32, f32)> = (0..g.c)
        .into_par_iter()
        .map(|ch| {
            vectorized!({
                // Plain loops, not `map().sum()`: the iterator's fold would not be
                // inlined, and so not compiled for AVX-512.
                let mut sum = 0f64;
                for p in g.planes(x, ch) {
                    sum += fixed_order_sum(p, p, |v, _| v);
                }
                let m = (sum / g.count()) as f32;
                let mut squares = 0f64;
                for p in g.planes(x, ch) {
                    squares += fixed_order_sum(p, p, |v, _| (v - m) * (v - m));
                }
                (m, (squares / g.count()) as f32)
            })
        })
        .collect();
    let (mean, var): (Vec<f32>, Vec<f32>) = per_channel.into_iter().unzip();
    let inv_std: Vec<f32> = var
        .iter()
        .map(|&v| (1.0 / (v as f64 + epsilon).sqrt()) as f32)
        .collect();
    let scale: Vec<f32> = gamma.iter().zip(&inv_std).map(|(g, s)| g * s).collect();
    let shift: Vec<f32> = (0..g.c).map(|ch| beta[ch] - mean[ch] * scale[ch]).collect();
    let mut y = vec![0f32; x.len()];
    y.par_chunks_mut(g.plane)
        .zip(x.par_chunks(g.plane))
        .enumerate()
        .for_each(|(p, (y, x))| {
            let (a, b) = (scale[p % g.c], shift[p % g.c]);
            vectorized!({
                if relu {
                    y.iter_mut()
                        .zip(x)
                        .for_each(|(y, &x)| *y = (x * a + b).max(0.0));
                } else {
                    y.iter_mut().zip(x).for_each(|(y, &x)| *y = x * a + b);
                }
            })
        });
    let stats = Statistics {
        mean,
        inv_std,
        scale,
        shift,
    };
    (y, stats, var)
}

/// Gradients of the input, `gamma` and `beta`.
fn backward(
    x: &[f32],
    g: Geometry,
    stats: &Statistics,
    gamma: &[f32],
    relu: bool,
    dy: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    // The gradient reaching the normalisation: dy where the ReLU passed (`x * scale + shift
    // > 0`), else zero.
    // (`&`, not `&&`: no branch, so the loops over it vectorise.)
    let through = move |x: f32, dy: f32, (scale, shift): (f32, f32)| {
        if relu & (x * scale + shift <= 0.0) {
            0.0
        } else {
            dy
        }
    };
    let affine = |ch: usize| (stats.scale[ch], stats.shift[ch]);
    let sums: Vec<(f64, f64)> = (0..g.c)
        .into_par_iter()
        .map(|ch| {
            vectorized!({
                let (m, s, ab) = (stats.mean[ch], stats.inv_std[ch], affine(ch));
                let (mut sum_dz, mut sum_dz_xhat) = (0f64, 0f64);
                for (xp, dyp) in g.planes(x, ch).zip(g.planes(dy, ch)) {
                    let (dz, dz_xhat) = fixed_order_sum_pair(xp, dyp, |x, d| {
                        let dz = through(x, d, ab);
                        (dz, dz * (x - m) * s)
                    });
                    sum_dz += dz;
                    sum_dz_xhat += dz_xhat;
                }
                (sum_dz, sum_dz_xhat)
            })
        })
        .collect();
    let beta_grad: Vec<f32> = sums.iter().map(|s| s.0 as f32).collect();
    let gamma_grad: Vec<f32> = sums.iter().map(|s| s.1 as f32).collect();
    // dx = gamma * inv_std * (dz - mean(dz) - xhat * mean(dz * xhat)), as k1 dz + k2 x + k3.
    let coefficients: Vec<(f32, f32, f32)> = (0..g.c)
        .map(|ch| {
            let s = stats.inv_std[ch] as f64;
            let k1 = gamma[ch] as f64 * s;
            let k2 = -k1 * s * sums[ch].1 / g.count();
            let k3 = -k1 * sums[ch].0 / g.count() - k2 * stats.mean[ch] as f64;
            (k1 as f32, k2 as f32, k3 as f32)
        })
        .collect();
    let mut dx = vec![0f32; x.len()];
    dx.par_chunks_mut(g.plane)
        .zip(x.par_chunks(g.plane).zip(dy.par_chunks(g.plane)))
        .enumerate()
        .for_each(|(p, (dx, (x, dy)))| {
            let ch = p % g.c;
            let ((k1, k2, k3), ab) = (coefficients[ch], affine(ch));
            vectorized!({
                // Copies in locals: read through the closure's references, they would be
                // loaded again at every element (the stores might alias them).
                let (k1, k2, k3, ab) = (k1, k2, k3, ab);
                for ((dx, &x), &d) in dx.iter_mut().zip(x).zip(dy) {
                    *dx = k1 * through(x, d, ab) + k2 * x + k3;
                }
            })
        });
    (dx, gamma_grad, beta_grad)
}

fn supported(x: &FlexTensor) -> bool {
    x.dtype() == DType::F32 && x.layout().shape().num_dims() == 4
}

fn tensor(values: Vec<f32>, shape: &[usize]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape.to_vec()))
}

/// Burn's own batch normalisation on backend `B`, then its ReLU: for what this kernel does
/// not cover.
fn fallback<B: Backend>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    beta: FloatTensor<B>,
    epsilon: f64,
    relu: bool,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let out = B::batch_norm_train(x, gamma, beta, epsilon);
    let output = if relu {
        B::relu(out.output)
    } else {
        out.output
    };
    (output, out.mean, out.variance)
}

/// This kernel's forward pass on flex tensors: the contiguous input and `gamma` (which the
/// backward pass keeps), the output, the statistics, and the batch mean and variance `[c]`.
fn normalize(
    x: FlexTensor,
    gamma: FlexTensor,
    beta: FlexTensor,
    epsilon: f64,
    relu: bool,
) -> (
    FlexTensor,
    FlexTensor,
    FlexTensor,
    Statistics,
    FlexTensor,
    FlexTensor,
) {
    let (x, gamma, beta) = (
        x.to_contiguous(),
        gamma.to_contiguous(),
        beta.to_contiguous(),
    );
    let (y, stats, var) = forward(&x, &gamma, &beta, epsilon, relu);
    let c = stats.mean.len();
    let y = tensor(y, &x.layout().shape().to_vec());
    let (mean, var) = (tensor(stats.mean.clone(), &[c]), tensor(var, &[c]));
    (x, gamma, y, stats, mean, var)
}

impl BatchNormKernel for Flex {
    fn batch_norm_train_relu(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
        relu: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        if !supported(&x) {
            return fallback::<Self>(x, gamma, beta, epsilon, relu);
        }
        let (_, _, y, _, mean, var) = normalize(x, gamma, beta, epsilon, relu);
        (y, mean, var)
    }
}

#[derive(Debug)]
struct BatchNormBackward;

/// The input and `gamma` (contiguous), the statistics, and whether a ReLU followed.
type BatchNormState = (FlexTensor, FlexTensor, Statistics, bool);

impl Backward<Flex, 3> for BatchNormBackward {
    type State = BatchNormState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [x_node, gamma_node, beta_node] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node).to_contiguous();
        let (x, gamma, stats, relu) = ops.state;
        let g = Geometry::of(&x);
        let shape = x.layout().shape().to_vec();
        let (dx, dgamma, dbeta) =
            backward(x.storage(), g, &stats, gamma.storage(), relu, dy.storage());
        if let Some(node) = x_node {
            grads.register::<Flex>(node.id, tensor(dx, &shape));
        }
        if let Some(node) = gamma_node {
            grads.register::<Flex>(node.id, tensor(dgamma, &[g.c]));
        }
        if let Some(node) = beta_node {
            grads.register::<Flex>(node.id, tensor(dbeta, &[g.c]));
        }
    }
}

impl<C: CheckpointStrategy> BatchNormKernel for Autodiff<Flex, C> {
    fn batch_norm_train_relu(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
        relu: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        if !supported(x.primitive()) {
            return fallback::<Self>(x, gamma, beta, epsilon, relu);
        }
        let prepared = BatchNormBackward
            .prepare::<C>([x.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful();
        let (x, gamma, y, stats, mean, var) = normalize(
            x.into_primitive(),
            gamma.into_primitive(),
            beta.into_primitive(),
            epsilon,
            relu,
        );
        let output = match prepared {
            OpsKind::Tracked(prep) => prep.finish((x, gamma, stats, relu), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        };
        let (mean, var) = (Self::from_inner(mean), Self::from_inner(var));
        (output, mean, var)
    }
}

/// Training-mode batch normalisation (then ReLU when `relu`): this kernel on the CPU
/// backend, Burn's `batch_norm_train` elsewhere. Returns the output, the batch mean and the
/// biased batch variance.
pub fn batch_norm_train_relu(
    x: Tensor<4>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
    relu_after: bool,
) -> (Tensor<4>, Tensor<1>, Tensor<1>) {
    if x.device().inner() != Device::flex() {
        let out = batch_norm_train(x, gamma, beta, epsilon);
        let output = if relu_after {
            relu(out.output)
        } else {
            out.output
        };
        return (output, out.mean, out.variance);
    }
    let (y, mean, var) = <Dispatch as BatchNormKernel>::batch_norm_train_relu(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        epsilon,
        relu_after,
    );
    (
        Tensor::from_dispatch(y),
        Tensor::from_dispatch(mean),
        Tensor::from_dispatch(var),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Tolerance;

    fn values(count: usize, salt: usize) -> Vec<f32> {
        (0..count)
            .map(|i| (((i * 7919 + salt * 104_729) % 1000) as f32 / 250.0) - 1.7)
            .collect()
    }

    /// Output, statistics, and the gradients of input, gamma and beta, from `norm` on
    /// `[n, c, h, w]` with the output weighted by a fixed tensor (so every gradient differs).
    fn run(
        norm: impl Fn(Tensor<4>, Tensor<1>, Tensor<1>) -> (Tensor<4>, Tensor<1>, Tensor<1>),
        shape: [usize; 4],
    ) -> [TensorData; 6] {
        let device = Device::flex().autodiff();
        let count = shape.iter().product();
        let x = Tensor::<4>::from_data(TensorData::new(values(count, 1), shape), &device)
            .require_grad();
        let c = shape[1];
        let gamma =
            Tensor::<1>::from_data(TensorData::new(values(c, 2), [c]), &device).require_grad();
        let beta =
            Tensor::<1>::from_data(TensorData::new(values(c, 3), [c]), &device).require_grad();
        let weights = Tensor::<4>::from_data(TensorData::new(values(count, 4), shape), &device);
        let (y, mean, var) = norm(x.clone(), gamma.clone(), beta.clone());
        let grads = (y.clone() * weights).sum().backward();
        [
            y.inner().into_data(),
            mean.inner().into_data(),
            var.inner().into_data(),
            x.grad(&grads).unwrap().into_data(),
            gamma.grad(&grads).unwrap().into_data(),
            beta.grad(&grads).unwrap().into_data(),
        ]
    }

    fn reference(
        relu_after: bool,
    ) -> impl Fn(Tensor<4>, Tensor<1>, Tensor<1>) -> (Tensor<4>, Tensor<1>, Tensor<1>) {
        move |x, gamma, beta| {
            let out = batch_norm_train(x, gamma, beta, 1e-5);
            let y = if relu_after {
                relu(out.output)
            } else {
                out.output
            };
            (y, out.mean, out.variance)
        }
    }

    /// Equal to Burn's `batch_norm_train` (then `relu`) and its gradients, with and without
    /// the ReLU, for planes of several sizes (1x1 included).
    #[test]
    fn matches_burn_forward_and_gradients() {
        for shape in [[4, 3, 5, 6], [2, 5, 1, 1], [3, 2, 7, 3]] {
            for relu_after in [false, true] {
                let ours = run(
                    |x, g, b| batch_norm_train_relu(x, g, b, 1e-5, relu_after),
                    shape,
                );
                let theirs = run(reference(relu_after), shape);
                for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
                    let tolerance = Tolerance::absolute(2e-5).set_relative(2e-4);
                    a.assert_approx_eq::<f32>(b, tolerance);
                    assert_eq!(
                        a.shape(),
                        b.shape(),
                        "output {i} of {shape:?}, relu {relu_after}"
                    );
                }
            }
        }
    }

    /// A ReLU after the normalisation passes gradient only where its output is positive.
    #[test]
    fn relu_blocks_the_gradient_of_clamped_outputs() {
        let [y, _, _, dx, _, dbeta] = run(
            |x, g, b| batch_norm_train_relu(x, g, b, 1e-5, true),
            [2, 1, 2, 2],
        );
        let y: Vec<f32> = y.iter::<f32>().collect();
        assert!(y.iter().all(|&v| v >= 0.0) && y.contains(&0.0));
        // beta's gradient sums the output gradient (the weights) where the output is positive.
        let weights = values(8, 4);
        let expected: f32 = y
            .iter()
            .zip(&weights)
            .filter(|(y, _)| **y > 0.0)
            .map(|(_, w)| w)
            .sum();
        let dbeta: Vec<f32> = dbeta.iter::<f32>().collect();
        assert!(
            (dbeta[0] - expected).abs() < 1e-5,
            "{dbeta:?} vs {expected}"
        );
        assert_eq!(dx.shape().to_vec(), vec![2, 1, 2, 2]);
    }

    /// The same numbers, to the bit, on 1, 2 and 3 threads.
    #[test]
    fn results_do_not_depend_on_threads() {
        let on = |threads| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| {
                    run(
                        |x, g, b| batch_norm_train_relu(x, g, b, 1e-5, true),
                        [8, 6, 9, 9],
                    )
                })
        };
        let one = on(1);
        for threads in [2, 3] {
            for (a, b) in one.iter().zip(&on(threads)) {
                assert_eq!(a, b, "{threads} threads");
            }
        }
    }

    /// Without autodiff (the plain device) the kernel gives the same output and statistics.
    #[test]
    fn plain_device_forward_matches() {
        let device = Device::flex();
        let x = Tensor::<4>::from_data(
            TensorData::new(values(2 * 3 * 4 * 4, 1), [2, 3, 4, 4]),
            &device,
        );
        let gamma = Tensor::<1>::ones([3], &device);
        let beta = Tensor::<1>::zeros([3], &device);
        let (y, mean, var) =
            batch_norm_train_relu(x.clone(), gamma.clone(), beta.clone(), 1e-5, false);
        let reference = batch_norm_train(x, gamma, beta, 1e-5);
        let tolerance = Tolerance::absolute(1e-5);
        y.into_data()
            .assert_approx_eq::<f32>(&reference.output.into_data(), tolerance);
        mean.into_data()
            .assert_approx_eq::<f32>(&reference.mean.into_data(), tolerance);
        var.into_data()
            .assert_approx_eq::<f32>(&reference.variance.into_data(), tolerance);
    }
}
