//! The matrix products over a chunk's tiles, one per tile position: the
//! convolution itself, the transformed weight gradient, and the weight gradient
//! folded back from it.

use super::algorithms::{F2, F4, Minimal};
use super::tiling::Tiling;
use super::transforms::{transform_input, transform_output_grad, two_sided};
use super::transpose::transpose;
use crate::kernels::matmul;
use crate::kernels::scratch::scratch;
use rayon::prelude::*;

/// The convolution of `images` images `x_imgs` into `out` (`[images, c_out, h, w]`), with
/// `u` from [`transform_weights`], then `relu(y + bias[channel])` when given a bias.
/// `parallelism`: of each of the matrix products.
pub(in crate::kernels) fn convolve(
    t: &Tiling,
    u: &[f32],
    x_imgs: &[f32],
    images: usize,
    out: &mut [f32],
    parallelism: gemm::Parallelism,
    bias_relu: Option<&[f32]>,
) {
    with_algorithm!(t, |W, M, T| convolve_with::<W, M, T>(
        t,
        u,
        x_imgs,
        images,
        out,
        parallelism,
        bias_relu
    ))
}

pub(super) fn convolve_with<W: Minimal<M, T>, const M: usize, const T: usize>(
    t: &Tiling,
    u: &[f32],
    x_imgs: &[f32],
    images: usize,
    out: &mut [f32],
    parallelism: gemm::Parallelism,
    bias_relu: Option<&[f32]>,
) {
    let (c_in, c_out) = (t.c_in, t.c_out);
    let columns = images * t.tiles();
    let mut v = scratch(T * T * columns * c_in);
    let mut m = scratch(T * T * columns * c_out);
    transform_input::<W, M, T>(t, x_imgs, images, &mut v);
    let positions = T * T;
    if t.weights_by_output_channel() {
        let mut product = scratch(c_out * columns);
        for i in 0..positions {
            // M_i [c_out, columns] = U_i [c_out, c_in] * V_i [c_in, columns], then
            // transposed to the layout of the other branch.
            matmul(
                (c_out, columns, c_in),
                &mut product,
                false,
                &u[i * c_in..],
                (positions * c_in, 1),
                &v[i * columns * c_in..][..columns * c_in],
                (1, c_in),
                parallelism,
            );
            transpose(
                &product,
                c_out,
                columns,
                &mut m[i * columns * c_out..][..columns * c_out],
            );
        }
    } else {
        for i in 0..positions {
            // M_i^T [columns, c_out] = V_i^T [columns, c_in] * U_i^T [c_in, c_out]
            matmul(
                (columns, c_out, c_in),
                &mut m[i * columns * c_out..][..columns * c_out],
                false,
                &v[i * columns * c_in..][..columns * c_in],
                (c_in, 1),
                &u[i * c_out..],
                (positions * c_out, 1),
                parallelism,
            );
        }
    }
    // `A^T m A` per tile and block of output channels, into one image channels-last, which
    // is then transposed into place.
    let plane = t.h * t.w;
    assert!(out.len() >= images * c_out * plane);
    let mut pixels = scratch(plane * c_out);
    for k in 0..images {
        crate::kernels::vectorized!(for ty in 0..t.tiles_h {
            for tx in 0..t.tiles_w {
                let column = (k * t.tiles_h + ty) * t.tiles_w + tx;
                by_channel_blocks!(c_out, |first, L| {
                    let mut half = [[[0f32; L]; M]; T];
                    let mut products = [[[0f32; L]; T]; T];
                    for (i, values) in products.as_flattened_mut().iter_mut().enumerate() {
                        values.copy_from_slice(&m[(i * columns + column) * c_out + first..][..L]);
                    }
                    let mut y = [[[0f32; L]; M]; M];
                    two_sided(&products, W::output, &mut half, &mut y);
                    for (dy, row) in y.iter().enumerate().take(t.h - M * ty) {
                        for (dx, values) in row.iter().enumerate().take(t.w - M * tx) {
                            let mut values = *values;
                            if let Some(bias) = bias_relu {
                                let bias: &[f32; L] =
                                    bias[first..][..L].try_into().expect("L lanes");
                                for (y, b) in values.iter_mut().zip(bias) {
                                    *y = (*y + b).max(0.0);
                                }
                            }
                            let at = ((M * ty + dy) * t.w + M * tx + dx) * c_out + first;
                            pixels[at..][..L].copy_from_slice(&values);
                        }
                    }
                })
            }
        });
        transpose(
            &pixels,
            plane,
            c_out,
            &mut out[k * c_out * plane..][..c_out * plane],
        );
    }
}

/// The gradient of the transformed weights [`transform_weights`] makes, from `images`
/// images `x_imgs` and their output gradient `dy_imgs`: per tile position `i`,
/// `dU_i [c_out, c_in] = (A dY A^T)_i * V_i^T` over the chunk's tiles, laid out
/// `[positions][c_out][c_in]`. Chunks' results add up; [`weight_grad`] turns the sum into
/// the weight gradient.
pub(in crate::kernels) fn transformed_weight_grad(
    t: &Tiling,
    x_imgs: &[f32],
    dy_imgs: &[f32],
    images: usize,
    parallelism: gemm::Parallelism,
) -> Vec<f32> {
    with_algorithm!(t, |W, M, T| transformed_weight_grad_with::<W, M, T>(
        t,
        x_imgs,
        dy_imgs,
        images,
        parallelism
    ))
}

pub(super) fn transformed_weight_grad_with<W: Minimal<M, T>, const M: usize, const T: usize>(
    t: &Tiling,
    x_imgs: &[f32],
    dy_imgs: &[f32],
    images: usize,
    parallelism: gemm::Parallelism,
) -> Vec<f32> {
    let (c_in, c_out) = (t.c_in, t.c_out);
    let columns = images * t.tiles();
    let mut v = scratch(T * T * columns * c_in);
    let mut mg = scratch(T * T * columns * c_out);
    transform_input::<W, M, T>(t, x_imgs, images, &mut v);
    transform_output_grad::<W, M, T>(t, dy_imgs, images, &mut mg);
    let mut du = vec![0f32; t.transformed_weights_len()];
    for i in 0..T * T {
        let du = &mut du[i * c_out * c_in..][..c_out * c_in];
        // dU_i [c_out, c_in] = MG_i [c_out, columns] * V_i^T [columns, c_in], as a sum of
        // products over blocks of tiles (see WEIGHT_GRAD_BLOCK), each added to the sum.
        for start in (0..columns).step_by(WEIGHT_GRAD_BLOCK) {
            let len = WEIGHT_GRAD_BLOCK.min(columns - start);
            matmul(
                (c_out, c_in, len),
                du,
                start > 0,
                &mg[(i * columns + start) * c_out..][..len * c_out],
                (1, c_out),
                &v[(i * columns + start) * c_in..][..len * c_in],
                (c_in, 1),
                parallelism,
            );
        }
    }
    du
}

/// Tiles per matrix product of the weight gradient, each block's product added to the sum
/// of the ones before. One product over all of a chunk's tiles sums them one after another
/// in `f32`: on a 65x65 image that came to 1.7e-3 relative error against the direct sum in
/// `f64`, against 3e-4 in blocks of 128.
pub(super) const WEIGHT_GRAD_BLOCK: usize = 128;

/// The weight gradient `[c_out, c_in, 3, 3]` from the summed [`transformed_weight_grad`]:
/// `G^T dU G` per channel pair, the transpose of [`transform_weights`]' `G g G^T`.
pub(in crate::kernels) fn weight_grad(t: &Tiling, du: &[f32]) -> Vec<f32> {
    with_algorithm!(t, |W, M, T| weight_grad_with::<W, M, T>(t, du))
}

pub(super) fn weight_grad_with<W: Minimal<M, T>, const M: usize, const T: usize>(
    t: &Tiling,
    du: &[f32],
) -> Vec<f32> {
    let mut dw = vec![0f32; t.c_out * t.c_in * 9];
    dw.par_chunks_mut(t.c_in * 9)
        .enumerate()
        .for_each(|(co, dw)| {
            for (ci, dw) in dw.chunks_exact_mut(9).enumerate() {
                let x = |r: usize, c: usize| du[((r * T + c) * t.c_out + co) * t.c_in + ci];
                // G^T x (3 x T) column by column, then (G^T x) G (3 x 3) row by row.
                let columns: [[f32; 3]; T] =
                    std::array::from_fn(|c| W::kernel_grad(std::array::from_fn(|r| x(r, c))));
                for (j, dw) in dw.chunks_exact_mut(3).enumerate() {
                    let row = W::kernel_grad(std::array::from_fn(|c| columns[c][j]));
                    dw.copy_from_slice(&row);
                }
            }
        });
    dw
}
