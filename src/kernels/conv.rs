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

use super::scratch::scratch;
use super::{copy_row, fixed_order_sum, matmul, winograd};
use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::ops::{ActivationOps, ModuleOps};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, backend_extension};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::tensor::activation::relu;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, Device, Tensor, TensorData};
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

/// Chunks a batch is split into at least, so that the copies around each product run on
/// every thread even where one chunk's product alone would be wide enough (deep layers).
/// A constant, not the thread count, so the sums' order does not depend on the machine.
const MIN_CHUNKS: usize = 4;

/// The fewest input channels for Winograd's transform. With fewer (the first convolution
/// of every model, on RGB images), each of its matrix products has an inner dimension of 3,
/// and im2col's one product with 27 is faster: baby-cnn +17 %, tiny-cnn +22 %, ResNet-18
/// the same (3 paired rounds of `adanoise bench`).
const WINOGRAD_MIN_CHANNELS: usize = 8;

/// The smallest output plane whose weight gradient goes through Winograd's transform. On
/// 2x2 planes (one tile per image) the sixteen products, each a short sum into a large
/// `c_out x c_in` result, are slower than the one im2row product; on 4x4 planes they are
/// faster (ResNet-18's 256-channel layer: 29.5 against 35.5 ms for forward and both
/// gradients of a batch of 128, medians of 3).
const WINOGRAD_WEIGHT_GRAD_PLANE: usize = 16;

/// Sizes of one convolution.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    n: usize,
    c_in: usize,
    h: usize,
    w: usize,
    c_out: usize,
    k: usize,
    stride: usize,
    padding: usize,
    oh: usize,
    ow: usize,
}

impl Geometry {
    fn new(x: &[usize], weight: &[usize], stride: usize, padding: usize) -> Self {
        let (h, w, k) = (x[2], x[3], weight[2]);
        Self {
            n: x[0],
            c_in: x[1],
            h,
            w,
            c_out: weight[0],
            k,
            stride,
            padding,
            oh: (h + 2 * padding - k) / stride + 1,
            ow: (w + 2 * padding - k) / stride + 1,
        }
    }

    /// Rows of the im2col matrix: one per input channel and kernel position.
    fn patch(&self) -> usize {
        self.c_in * self.k * self.k
    }

    fn out_plane(&self) -> usize {
        self.oh * self.ow
    }

    /// The output columns `lo..hi` whose input column `ow * stride + kw - padding` lies
    /// inside the image (the others read the zero padding).
    fn inside_columns(&self, kw: usize) -> (usize, usize) {
        self.inside(kw, self.w, self.ow)
    }

    /// [`Geometry::inside_columns`] for rows.
    fn inside_rows(&self, kh: usize) -> (usize, usize) {
        self.inside(kh, self.h, self.oh)
    }

    fn inside(&self, tap: usize, extent: usize, out_extent: usize) -> (usize, usize) {
        let lo = self.padding.saturating_sub(tap).div_ceil(self.stride);
        let hi = if extent + self.padding > tap {
            ((extent + self.padding - tap - 1) / self.stride + 1).min(out_extent)
        } else {
            0
        };
        (lo.min(hi), hi)
    }

    /// Whether less than half of the im2row matrix of the weight gradient lies inside the
    /// image (ResNet-18's 2x2 planes: 16 of 36 entries per output), so that one product per
    /// kernel tap, over only the outputs that tap reaches, does less than half the work.
    fn weight_grad_by_tap(&self) -> bool {
        let reached = |(lo, hi): (usize, usize)| hi - lo;
        let rows: usize = (0..self.k).map(|kh| reached(self.inside_rows(kh))).sum();
        let columns: usize = (0..self.k).map(|kw| reached(self.inside_columns(kw))).sum();
        2 * rows * columns < self.k * self.k * self.out_plane()
    }

    /// The Winograd tiling of a 3x3, stride 1, padding 1 convolution; `None` for others.
    fn winograd(&self) -> Option<winograd::Tiling> {
        (self.k == 3 && self.stride == 1 && self.padding == 1 && self.c_in >= WINOGRAD_MIN_CHANNELS)
            .then(|| winograd::Tiling::new(self.c_in, self.c_out, self.h, self.w))
    }

    /// Images per matrix product: enough for a wide product. It does not depend on the
    /// number of threads, so neither do the results (see [`weight_grad`]).
    fn chunk(&self) -> usize {
        let wide = 4096usize.div_ceil(self.out_plane());
        wide.min(self.n.div_ceil(MIN_CHUNKS)).max(1)
    }
}

/// The patches of images `x_imgs` as columns, `[patch, images * out_plane]` (the layout the
/// forward product packs contiguously).
fn im2col(g: &Geometry, x_imgs: &[f32], images: usize, col: &mut [f32]) {
    let width = images * g.out_plane();
    for ci in 0..g.c_in {
        for kh in 0..g.k {
            for kw in 0..g.k {
                let row = &mut col[((ci * g.k + kh) * g.k + kw) * width..][..width];
                let (lo, hi) = g.inside_columns(kw);
                let first = lo * g.stride + kw - g.padding;
                for img in 0..images {
                    let plane = &x_imgs[(img * g.c_in + ci) * g.h * g.w..][..g.h * g.w];
                    let dst = &mut row[img * g.out_plane()..][..g.out_plane()];
                    for oh in 0..g.oh {
                        let ih = (oh * g.stride + kh) as isize - g.padding as isize;
                        let out_row = &mut dst[oh * g.ow..][..g.ow];
                        if ih < 0 || ih >= g.h as isize {
                            out_row.fill(0.0);
                            continue;
                        }
                        let src = &plane[ih as usize * g.w..][..g.w];
                        out_row[..lo].fill(0.0);
                        out_row[hi..].fill(0.0);
                        if g.stride == 1 {
                            copy_row(&mut out_row[lo..hi], &src[first..first + hi - lo]);
                        } else {
                            let src = &src[first..];
                            for (j, v) in out_row[lo..hi].iter_mut().enumerate() {
                                *v = src[j * g.stride];
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The patches of images `x_imgs` (each `c_in x h x w`) as rows, `[images * out_plane, patch]`:
/// one row per output position, `patch` (input channel, kernel row, kernel column) long. Laid
/// out this way (not as im2col's columns) the matrix product packs it contiguously. Each
/// input row is copied once into a zero-padded buffer, from which every output position
/// takes its `k` values without bounds checks (a fixed-size copy for the paper's 3x3 and 1x1).
fn im2row(g: &Geometry, x_imgs: &[f32], images: usize, rows: &mut [f32]) {
    let patch = g.patch();
    let mut padded = vec![0f32; g.w + 2 * g.padding];
    for img in 0..images {
        let image = &x_imgs[img * g.c_in * g.h * g.w..][..g.c_in * g.h * g.w];
        for oh in 0..g.oh {
            let block = &mut rows[(img * g.oh + oh) * g.ow * patch..][..g.ow * patch];
            for ci in 0..g.c_in {
                for kh in 0..g.k {
                    let ih = (oh * g.stride + kh) as isize - g.padding as isize;
                    let inside = ih >= 0 && ih < g.h as isize;
                    if inside {
                        let row = &image[(ci * g.h + ih as usize) * g.w..][..g.w];
                        copy_row(&mut padded[g.padding..g.padding + g.w], row);
                    } else {
                        // A row of the zero padding: every window reads zeros.
                        padded.fill(0.0);
                    }
                    let source = &padded[..];
                    let at = (ci * g.k + kh) * g.k;
                    match g.k {
                        1 => windows::<1>(source, block, at, patch, g.stride),
                        3 => windows::<3>(source, block, at, patch, g.stride),
                        k => {
                            for (ow, dst) in block.chunks_exact_mut(patch).enumerate() {
                                dst[at..at + k].copy_from_slice(&source[ow * g.stride..][..k]);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// For each output position of a row (each `patch`-long row of `block`), the `K` values of
/// its window in the padded input row `source`, at offset `at` of its row.
#[inline(always)]
fn windows<const K: usize>(
    source: &[f32],
    block: &mut [f32],
    at: usize,
    patch: usize,
    stride: usize,
) {
    for (ow, dst) in block.chunks_exact_mut(patch).enumerate() {
        let values: [f32; K] = source[ow * stride..][..K].try_into().expect("K values");
        dst[at..at + K].copy_from_slice(&values);
    }
}

/// Adds `col` (`[patch, images * out_plane]`: each output position's gradient with respect
/// to its patch) back into images `dx_imgs`, where the patches overlap.
fn col2im(g: &Geometry, col: &[f32], images: usize, dx_imgs: &mut [f32]) {
    let width = images * g.out_plane();
    for ci in 0..g.c_in {
        for kh in 0..g.k {
            for kw in 0..g.k {
                let row = &col[((ci * g.k + kh) * g.k + kw) * width..][..width];
                let (lo, hi) = g.inside_columns(kw);
                let first = lo * g.stride + kw - g.padding;
                for img in 0..images {
                    let plane = &mut dx_imgs[(img * g.c_in + ci) * g.h * g.w..][..g.h * g.w];
                    let src = &row[img * g.out_plane()..][..g.out_plane()];
                    for oh in 0..g.oh {
                        let ih = (oh * g.stride + kh) as isize - g.padding as isize;
                        if ih < 0 || ih >= g.h as isize {
                            continue;
                        }
                        let dst = &mut plane[ih as usize * g.w..][..g.w];
                        let values = &src[oh * g.ow..][lo..hi];
                        if g.stride == 1 {
                            dst[first..first + values.len()]
                                .iter_mut()
                                .zip(values)
                                .for_each(|(d, v)| *d += v);
                        } else {
                            let dst = &mut dst[first..];
                            for (j, v) in values.iter().enumerate() {
                                dst[j * g.stride] += v;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `dY` of images `first..first + images`, laid out `[c_out, images * out_plane]`.
fn gather_output_grad(g: &Geometry, dy: &[f32], first: usize, images: usize, out: &mut [f32]) {
    let plane = g.out_plane();
    let width = images * plane;
    for co in 0..g.c_out {
        for img in 0..images {
            let src = &dy[((first + img) * g.c_out + co) * plane..][..plane];
            copy_row(&mut out[co * width + img * plane..][..plane], src);
        }
    }
}

/// Splits each matrix product over the threads when there are too few chunks to go round
/// (over rows and columns only, which leaves every sum's order as it is).
fn product_parallelism(chunks: usize) -> gemm::Parallelism {
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
fn weight_grad(g: &Geometry, x: &[f32], dy: &[f32]) -> Vec<f32> {
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
fn weight_grad_by_tap(
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
fn sum_in_order(partials: Vec<Vec<f32>>, len: usize) -> Vec<f32> {
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
fn per_chunk(
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
fn input_grad(g: &Geometry, weight: &[f32], dy: &[f32]) -> Vec<f32> {
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

/// The convolution `[n, c_out, oh, ow]`: per chunk of images, `W * col(x_c)`, written back
/// image by image, adding `bias` and clamping at zero when given one.
fn forward(g: &Geometry, x: &[f32], weight: &[f32], bias_relu: Option<&[f32]>) -> Vec<f32> {
    let image = g.c_in * g.h * g.w;
    if let Some(tiling) = g.winograd() {
        let u = winograd::transform_weights(&tiling, weight, false);
        return per_chunk(
            g,
            g.c_out * g.out_plane(),
            |first, images, _, out, inner| {
                let x_imgs = &x[first * image..(first + images) * image];
                winograd::convolve(&tiling, &u, x_imgs, images, out, inner, bias_relu);
            },
        );
    }
    per_chunk(
        g,
        g.c_out * g.out_plane(),
        |first, images, width, out_chunk, inner| {
            let mut col = scratch(g.patch() * width);
            let mut yc = scratch(g.c_out * width);
            im2col(
                g,
                &x[first * image..(first + images) * image],
                images,
                &mut col,
            );
            // y_c[co, t] = sum_j W[co, j] * col[j, t]
            matmul(
                (g.c_out, width, g.patch()),
                &mut yc,
                false,
                weight,
                (g.patch(), 1),
                &col,
                (width, 1),
                inner,
            );
            let plane = g.out_plane();
            for co in 0..g.c_out {
                for img in 0..images {
                    let dst = &mut out_chunk[(img * g.c_out + co) * plane..][..plane];
                    let src = &yc[co * width + img * plane..][..plane];
                    match bias_relu {
                        Some(bias) => dst
                            .iter_mut()
                            .zip(src)
                            .for_each(|(d, &y)| *d = (y + bias[co]).max(0.0)),
                        None => copy_row(dst, src),
                    }
                }
            }
        },
    )
}

fn options(stride: usize, padding: usize) -> ConvOptions<2> {
    ConvOptions::new([stride, stride], [padding, padding], [1, 1], 1)
}

/// The forward pass on flex tensors (then `+ bias` and ReLU when given a bias): this kernel
/// for `f32`, flex's convolution otherwise.
fn conv_forward(
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
fn register_grads(
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
struct Conv2dBackward;

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
fn through_bias_relu(
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
struct Conv2dBiasReluBackward;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::with_seeded_device;
    use crate::train::trainer::Materialize;
    use burn::module::Module;
    use burn::nn::conv::Conv2dConfig;
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
                                    if ih < 0 || iw < 0 || ih >= g.h as isize || iw >= g.w as isize
                                    {
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
}
