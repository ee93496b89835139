//! The convolution against Burn's and against direct sums, on 1, 2 and 3 threads.

use super::forward::*;
use super::geometry::*;
use super::gradients::*;
use super::*;
use crate::engine::burn::Materialize;
use crate::rng::with_seeded_device;
use burn::module::Module;
use burn::nn::conv::Conv2dConfig;
use burn::tensor::TensorData;
use burn::tensor::Tolerance;

/// Output and the gradients of input, weight and bias equal Burn's convolution, alone
/// and followed by a ReLU (fused with the bias when there is one).
#[test]
fn matches_burn_forward_and_gradients() {
    for then_relu in [false, true] {
        compare_with_burn(then_relu);
    }
}

fn compare_with_burn(then_relu: bool) {
    let device = Device::flex().autodiff();
    for (c_in, c_out, k, stride, padding, side, bias) in [
        (3, 8, 3, 1, 1, 9, true),
        (8, 6, 3, 1, 1, 9, true),
        (9, 5, 3, 1, 1, 7, false),
        (4, 6, 3, 2, 1, 8, false),
        (5, 7, 1, 2, 0, 7, false),
        (2, 3, 3, 1, 0, 6, true),
    ] {
        // Drawn under a fixed seed (Burn draws parameters lazily, so they are read
        // here), so that the ReLU's mask, which depends on the weights, is the same on
        // every run.
        let conv = with_seeded_device(&device, 11, || {
            let conv = Conv2dConfig::new([c_in, c_out], [k, k])
                .with_stride([stride, stride])
                .with_padding(PaddingConfig2d::Explicit(
                    padding, padding, padding, padding,
                ))
                .with_bias(bias)
                .init(&device);
            conv.visit(&mut Materialize);
            conv
        });
        let n = 5;
        let values: Vec<f32> = (0..n * c_in * side * side)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect();
        let x = Tensor::<4>::from_data(TensorData::new(values, [n, c_in, side, side]), &device);
        let run = |kernel: bool| {
            let x = x.clone().require_grad();
            let y = match (kernel, then_relu) {
                (true, false) => conv2d(&conv, x.clone()),
                (true, true) => conv2d_relu(&conv, x.clone()),
                (false, false) => conv.forward(x.clone()),
                (false, true) => relu(conv.forward(x.clone())),
            };
            let weights = y.clone().inner().ones_like().cumsum(3);
            let grads = (y.clone() * Tensor::from_inner(weights)).sum().backward();
            let bias_grad = conv
                .bias
                .as_ref()
                .map(|b| b.val().grad(&grads).unwrap().into_data());
            (
                y.inner().into_data(),
                x.grad(&grads).unwrap().into_data(),
                conv.weight.val().grad(&grads).unwrap().into_data(),
                bias_grad,
            )
        };
        let (ours, theirs) = (run(true), run(false));
        if then_relu {
            // Clamped outputs exist, so the ReLU's mask is exercised.
            let zeros = ours.0.iter::<f32>().filter(|&v| v == 0.0).count();
            assert!(zeros > 0 && zeros < ours.0.num_elements());
        }
        let tol = Tolerance::<f32>::absolute(1e-4).set_relative(1e-4);
        ours.0.assert_approx_eq::<f32>(&theirs.0, tol);
        ours.1.assert_approx_eq::<f32>(&theirs.1, tol);
        ours.2.assert_approx_eq::<f32>(&theirs.2, tol);
        if let (Some(a), Some(b)) = (ours.3, theirs.3) {
            a.assert_approx_eq::<f32>(&b, tol);
        }
    }
}

/// Direct sums, by the definitions: output, input gradient, weight gradient.
fn naive(g: &Geometry, x: &[f32], w: &[f32], dy: &[f32]) -> [Vec<f32>; 3] {
    let mut y = vec![0f32; g.n * g.c_out * g.oh * g.ow];
    let mut dx = vec![0f32; g.n * g.c_in * g.h * g.w];
    let mut dw = vec![0f32; g.c_out * g.patch()];
    for n in 0..g.n {
        for co in 0..g.c_out {
            for oh in 0..g.oh {
                for ow in 0..g.ow {
                    let o = ((n * g.c_out + co) * g.oh + oh) * g.ow + ow;
                    let d = dy[o];
                    for ci in 0..g.c_in {
                        for kh in 0..g.k {
                            for kw in 0..g.k {
                                let ih = (oh * g.stride + kh) as isize - g.padding as isize;
                                let iw = (ow * g.stride + kw) as isize - g.padding as isize;
                                if ih < 0 || iw < 0 || ih >= g.h as isize || iw >= g.w as isize {
                                    continue;
                                }
                                let xi =
                                    ((n * g.c_in + ci) * g.h + ih as usize) * g.w + iw as usize;
                                let wi = ((co * g.c_in + ci) * g.k + kh) * g.k + kw;
                                y[o] += w[wi] * x[xi];
                                dw[wi] += d * x[xi];
                                dx[xi] += d * w[wi];
                            }
                        }
                    }
                }
            }
        }
    }
    [y, dx, dw]
}

/// Large images make every chunk one image, so several chunks are written back and the
/// weight gradient sums several chunks' products; odd sizes and stride 2 cover the
/// borders. The results do not depend on the number of threads, to the bit.
#[test]
fn gradients_equal_direct_sums_across_chunks() {
    let pool = |threads| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
    };
    // 8 input channels: Winograd's path; 2: im2col's; 2x2 and 1x1 planes: the weight
    // gradient by kernel tap.
    let cases = [
        (8, 1, 1, 65),
        (2, 1, 1, 33),
        (2, 2, 1, 129),
        (2, 2, 0, 130),
        (20, 1, 1, 2),
        (3, 1, 1, 1),
    ];
    for (c_in, stride, padding, side) in cases {
        let g = Geometry::new(&[3, c_in, side, side], &[4, c_in, 3, 3], stride, padding);
        let x: Vec<f32> = (0..3 * c_in * side * side)
            .map(|i| ((i * 31 % 17) as f32 - 8.0) / 8.0)
            .collect();
        let w: Vec<f32> = (0..4 * c_in * 9)
            .map(|i| ((i * 7 % 11) as f32 - 5.0) / 5.0)
            .collect();
        let dy: Vec<f32> = (0..3 * 4 * g.oh * g.ow)
            .map(|i| ((i * 13 % 19) as f32 - 9.0) / 9.0)
            .collect();
        assert_eq!(g.chunk(), 1);
        let grads = |threads| {
            pool(threads).install(|| {
                [
                    forward(&g, &x, &w, None),
                    input_grad(&g, &w, &dy),
                    weight_grad(&g, &x, &dy),
                ]
            })
        };
        let ours = grads(2);
        assert!(ours == grads(1) && ours == grads(3));
        for (ours, reference) in ours.iter().zip(naive(&g, &x, &w, &dy)) {
            assert_eq!(ours.len(), reference.len());
            for (a, b) in ours.iter().zip(&reference) {
                assert!((a - b).abs() <= 1e-3 * b.abs().max(1.0), "{a} vs {b}");
            }
        }
    }
}
