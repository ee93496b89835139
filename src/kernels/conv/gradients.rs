//! The convolution's backward pass as matrix products per chunk of images: the
//! weight gradient `dW += dY_c * rows(x_c)` (or through Winograd, or one product
//! per kernel tap on tiny planes), summed over chunks in a fixed order, and the
//! input gradient `dx_c = col2im(W^T * dY_c)` (or Winograd with rotated kernels).

use super::geometry::{Geometry, WINOGRAD_WEIGHT_GRAD_PLANE};
use super::lowering::{col2im, gather_output_grad, im2row};
use crate::kernels::scratch::scratch;
use crate::kernels::{matmul, winograd};
use rayon::prelude::*;

/// Splits each matrix product over the threads when there are too few chunks to go round
/// (over rows and columns only, which leaves every sum's order as it is).
pub(super) fn product_parallelism(chunks: usize) -> gemm::Parallelism {
    let threads = rayon::current_num_threads();
    if chunks < threads {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    }
}

/// The weight gradient `[c_out, c_in, k, k]`: per chunk of images, `dY_c * rows(x_c)`, then
/// the chunks' products summed in chunk order. Chunks never share an accumulator, so the
/// sum is the same however rayon schedules them: a run gives the same numbers every time
/// (resumed runs are compared bit for bit), whatever the number of threads.
pub(super) fn weight_grad(g: &Geometry, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let chunk = g.chunk();
    let chunks = g.n.div_ceil(chunk);
    let image = g.c_in * g.h * g.w;
    let inner = product_parallelism(chunks);
    if let Some(tiling) = g
        .winograd()
        .filter(|_| g.out_plane() >= WINOGRAD_WEIGHT_GRAD_PLANE)
        .map(|_| winograd::Tiling::for_weight_grad(g.c_in, g.c_out, g.h, g.w))
    {
        let out_image = g.c_out * g.out_plane();
        let partials: Vec<Vec<f32>> = (0..chunks)
            .into_par_iter()
            .map(|c| {
                let (first, images) = (c * chunk, chunk.min(g.n - c * chunk));
                let x_imgs = &x[first * image..(first + images) * image];
                let dy_imgs = &dy[first * out_image..(first + images) * out_image];
                winograd::transformed_weight_grad(&tiling, x_imgs, dy_imgs, images, inner)
            })
            .collect();
        let du = sum_in_order(partials, tiling.transformed_weights_len());
        return winograd::weight_grad(&tiling, &du);
    }
    if g.weight_grad_by_tap() {
        let partials: Vec<Vec<f32>> = (0..chunks)
            .into_par_iter()
            .map(|c| {
                let (first, images) = (c * chunk, chunk.min(g.n - c * chunk));
                weight_grad_by_tap(g, x, dy, first, images, inner)
            })
            .collect();
        let by_tap = sum_in_order(partials, g.c_out * g.patch());
        // [tap][c_out][c_in] -> [c_out][c_in][tap]
        let (taps, pairs) = (g.k * g.k, g.c_out * g.c_in);
        let mut dw = vec![0f32; g.c_out * g.patch()];
        dw.par_chunks_mut(taps).enumerate().for_each(|(pair, dw)| {
            for (tap, value) in dw.iter_mut().enumerate() {
                *value = by_tap[tap * pairs + pair];
            }
        });
        return dw;
    }
    let partials: Vec<Vec<f32>> = (0..chunks)
        .into_par_iter()
        .map(|c| {
            let first = c * chunk;
            let images = chunk.min(g.n - first);
            let width = images * g.out_plane();
            let mut dw = vec![0f32; g.c_out * g.patch()];
            let mut rows = scratch(width * g.patch());
            let mut dyc = scratch(g.c_out * width);
            im2row(
                g,
                &x[first * image..(first + images) * image],
                images,
                &mut rows,
            );
            gather_output_grad(g, dy, first, images, &mut dyc);
            // dW_c[co, j] = sum_t dY_c[co, t] * rows[t, j]
            matmul(
                (g.c_out, g.patch(), width),
                &mut dw,
                false,
                &dyc,
                (width, 1),
                &rows,
                (g.patch(), 1),
                inner,
            );
            dw
        })
        .collect();
    sum_in_order(partials, g.c_out * g.patch())
}

/// The weight gradient of images `first..first + images`, laid out `[k, k, c_out, c_in]`,
/// one matrix product per kernel tap over only the outputs whose input for that tap lies
/// inside the image: `dW[kh, kw] = dY_t * X_t`, with `dY_t [c_out, reached]` the output
/// gradient at those outputs and `X_t [reached, c_in]` the inputs they read through the
/// tap. The padding's zeros, which im2row's product multiplies too, are left out: on 2x2
/// planes that is 20 of every 36 multiplications (512 channels, forward and both gradients
/// of a batch of 128: 47.9 against 48.9 ms, medians of 4 runs; the gathers and the short
/// products take back most of what the smaller sum saves).
pub(super) fn weight_grad_by_tap(
    g: &Geometry,
    x: &[f32],
    dy: &[f32],
    first: usize,
    images: usize,
    parallelism: gemm::Parallelism,
) -> Vec<f32> {
    let (plane, out_plane) = (g.h * g.w, g.out_plane());
    let mut dw = vec![0f32; g.c_out * g.patch()];
    for kh in 0..g.k {
        let (row_lo, row_hi) = g.inside_rows(kh);
        for kw in 0..g.k {
            let (col_lo, col_hi) = g.inside_columns(kw);
            // Each reached output and the input it reads through this tap.
            let reached: Vec<(usize, usize)> = (row_lo..row_hi)
                .flat_map(|oh| (col_lo..col_hi).map(move |ow| (oh, ow)))
                .map(|(oh, ow)| {
                    let (ih, iw) = (
                        oh * g.stride + kh - g.padding,
                        ow * g.stride + kw - g.padding,
                    );
                    (oh * g.ow + ow, ih * g.w + iw)
                })
                .collect();
            if reached.is_empty() {
                continue;
            }
            let width = images * reached.len();
            let mut dy_tap = scratch(g.c_out * width);
            for (co, row) in dy_tap.chunks_exact_mut(width).enumerate() {
                for (img, values) in row.chunks_exact_mut(reached.len()).enumerate() {
                    let dy_plane = &dy[((first + img) * g.c_out + co) * out_plane..][..out_plane];
                    for (value, &(output, _)) in values.iter_mut().zip(&reached) {
                        *value = dy_plane[output];
                    }
                }
            }
            let mut x_tap = scratch(width * g.c_in);
            for (t, values) in x_tap.chunks_exact_mut(g.c_in).enumerate() {
                let (img, (_, input)) = (t / reached.len(), reached[t % reached.len()]);
                let image = &x[(first + img) * g.c_in * plane..][..g.c_in * plane];
                for (ci, value) in values.iter_mut().enumerate() {
                    *value = image[ci * plane + input];
                }
            }
            // dW_tap[co, ci] = sum_t dY_t[co, t] * X_t[t, ci]
            let pairs = g.c_out * g.c_in;
            matmul(
                (g.c_out, g.c_in, width),
                &mut dw[(kh * g.k + kw) * pairs..][..pairs],
                false,
                &dy_tap,
                (width, 1),
                &x_tap,
                (g.c_in, 1),
                parallelism,
            );
        }
    }
    dw
}

/// The chunks' partial sums (each `len` long) added in chunk order; zeros for no chunks.
pub(super) fn sum_in_order(partials: Vec<Vec<f32>>, len: usize) -> Vec<f32> {
    let mut partials = partials.into_iter();
    let mut sum = partials.next().unwrap_or_else(|| vec![0f32; len]);
    for partial in partials {
        sum.iter_mut().zip(&partial).for_each(|(a, b)| *a += b);
    }
    sum
}

/// A tensor of `n` images of `per_image` values, each chunk of images filled in parallel by
/// `fill(first image, images, columns of the chunk's product, the chunk's values, product
/// parallelism)`.
pub(super) fn per_chunk(
    g: &Geometry,
    per_image: usize,
    fill: impl Fn(usize, usize, usize, &mut [f32], gemm::Parallelism) + Sync + Send,
) -> Vec<f32> {
    let chunk = g.chunk();
    let inner = product_parallelism(g.n.div_ceil(chunk));
    let mut values = vec![0f32; g.n * per_image];
    values
        .par_chunks_mut(chunk * per_image)
        .enumerate()
        .for_each(|(c, values)| {
            let images = values.len() / per_image;
            fill(c * chunk, images, images * g.out_plane(), values, inner);
        });
    values
}

/// The input gradient `[n, c_in, h, w]`: per chunk of images, `col2im(W^T * dY_c)`.
pub(super) fn input_grad(g: &Geometry, weight: &[f32], dy: &[f32]) -> Vec<f32> {
    if let Some(forward_tiling) = g.winograd() {
        // The same convolution, from the output gradient's channels to the input's.
        let tiling = winograd::Tiling::new(g.c_out, g.c_in, g.h, g.w);
        debug_assert_eq!((forward_tiling.h, forward_tiling.w), (tiling.h, tiling.w));
        let u = winograd::transform_weights(&tiling, weight, true);
        let out_image = g.c_out * g.out_plane();
        return per_chunk(g, g.c_in * g.h * g.w, |first, images, _, dx, inner| {
            let dy_imgs = &dy[first * out_image..(first + images) * out_image];
            winograd::convolve(&tiling, &u, dy_imgs, images, dx, inner, None);
        });
    }
    per_chunk(
        g,
        g.c_in * g.h * g.w,
        |first, images, width, dx_chunk, inner| {
            let mut col = scratch(g.patch() * width);
            let mut dyc = scratch(g.c_out * width);
            gather_output_grad(g, dy, first, images, &mut dyc);
            // col[j, t] = sum_co W[co, j] * dY_c[co, t]
            matmul(
                (g.patch(), width, g.c_out),
                &mut col,
                false,
                weight,
                (1, g.patch()),
                &dyc,
                (width, 1),
                inner,
            );
            col2im(g, &col, images, dx_chunk);
        },
    )
}
