//! 3x3 convolutions with stride 1 and padding 1 and 8 or more input channels (every
//! convolution of the four models except each one's first, RGB convolution and ResNet-18's
//! stride-2 and 1x1 ones) by Winograd's minimal filtering F(m x m, 3x3) (Lavin & Gray,
//! 2016): each m x m block of outputs comes from a (m+2) x (m+2) input tile with (m+2)^2
//! multiplications per channel pair instead of 9 m^2, as (m+2)^2 matrix products over all
//! the tiles of a chunk of images. Forward pass and input gradient use F(4x4, 3x3) on
//! planes of 4x4 and more (36 products for 16 outputs, 4x fewer than the direct sum, and a
//! transformed input 2.25 times the image), F(2x2, 3x3) (16 for 4) on smaller ones; the
//! weight gradient always F(2x2, 3x3) (see [`Tiling::for_weight_grad`]). The transforms are
//! fixed sums with small coefficients, so the results differ from the direct sum by
//! rounding only (F(4x4) a few times more than F(2x2), as in cuDNN and oneDNN).
//!
//! The transforms run channels-last: each image is transposed to `[h * w][channels]`, and
//! every tile is then transformed for 16 channels at once, one vector per tile value, into
//! `[positions][tiles][channels]`. The first version ran them along the tiles of a plane
//! instead, which needed a strided gather per tile and scalar loops on small planes: they
//! took about 60 % of a 64-channel 16x16 layer's time, against 20-25 % for the products.

use super::matmul;
use super::scratch::{Scratch, scratch};
use rayon::prelude::*;

/// The one-dimensional transforms of a minimal filtering algorithm F(M, 3), which gives
/// `M` outputs of a 3-tap filter from `T = M + 2` inputs; the two-dimensional algorithm
/// applies them down columns and then along rows.
trait Minimal<const M: usize, const T: usize> {
    /// `B^T d`, on a tile's inputs.
    fn input(d: [f32; T]) -> [f32; T];
    /// `G g`, on a kernel's row or column.
    fn kernel(g: [f32; 3]) -> [f32; T];
    /// `A^T m`: the outputs from the products.
    fn output(m: [f32; T]) -> [f32; M];
    /// `A dy`, the transpose of [`Minimal::output`]: the products' gradient.
    fn output_grad(dy: [f32; M]) -> [f32; T];
    /// `G^T u`, the transpose of [`Minimal::kernel`]: the kernel's gradient.
    fn kernel_grad(u: [f32; T]) -> [f32; 3];
}

/// F(2, 3), on the points 0, 1, -1 and infinity.
struct F2;

impl Minimal<2, 4> for F2 {
    #[inline(always)]
    fn input([d0, d1, d2, d3]: [f32; 4]) -> [f32; 4] {
        [d0 - d2, d1 + d2, d2 - d1, d1 - d3]
    }

    #[inline(always)]
    fn kernel([g0, g1, g2]: [f32; 3]) -> [f32; 4] {
        [g0, 0.5 * (g0 + g1 + g2), 0.5 * (g0 - g1 + g2), g2]
    }

    #[inline(always)]
    fn output([m0, m1, m2, m3]: [f32; 4]) -> [f32; 2] {
        [m0 + m1 + m2, m1 - m2 - m3]
    }

    #[inline(always)]
    fn output_grad([a, c]: [f32; 2]) -> [f32; 4] {
        [a, a + c, a - c, -c]
    }

    #[inline(always)]
    fn kernel_grad([x0, x1, x2, x3]: [f32; 4]) -> [f32; 3] {
        [x0 + 0.5 * (x1 + x2), 0.5 * (x1 - x2), 0.5 * (x1 + x2) + x3]
    }
}

/// F(4, 3), on the points 0, 1, -1, 2, -2 and infinity.
struct F4;

impl Minimal<4, 6> for F4 {
    #[inline(always)]
    fn input([d0, d1, d2, d3, d4, d5]: [f32; 6]) -> [f32; 6] {
        let (p, q) = (d4 - 4.0 * d2, 4.0 * d1 - d3);
        let (r, s) = (d4 - d2, 2.0 * (d1 - d3));
        [
            4.0 * d0 - 5.0 * d2 + d4,
            p - q,
            p + q,
            r - s,
            r + s,
            4.0 * d1 - 5.0 * d3 + d5,
        ]
    }

    #[inline(always)]
    fn kernel([g0, g1, g2]: [f32; 3]) -> [f32; 6] {
        let sum = g0 + g2;
        let quarter = g0 / 24.0 + g2 / 6.0;
        [
            0.25 * g0,
            -(sum + g1) / 6.0,
            -(sum - g1) / 6.0,
            quarter + g1 / 12.0,
            quarter - g1 / 12.0,
            g2,
        ]
    }

    #[inline(always)]
    fn output([m0, m1, m2, m3, m4, m5]: [f32; 6]) -> [f32; 4] {
        let (a, b, c, d) = (m1 + m2, m1 - m2, m3 + m4, m3 - m4);
        [m0 + a + c, b + 2.0 * d, a + 4.0 * c, b + 8.0 * d + m5]
    }

    #[inline(always)]
    fn output_grad([y0, y1, y2, y3]: [f32; 4]) -> [f32; 6] {
        let (e, f) = (y0 + y2, y1 + y3);
        let (e4, f4) = (y0 + 4.0 * y2, 2.0 * y1 + 8.0 * y3);
        [y0, e + f, e - f, e4 + f4, e4 - f4, y3]
    }

    #[inline(always)]
    fn kernel_grad([u0, u1, u2, u3, u4, u5]: [f32; 6]) -> [f32; 3] {
        [
            0.25 * u0 - (u1 + u2) / 6.0 + (u3 + u4) / 24.0,
            (u2 - u1) / 6.0 + (u3 - u4) / 12.0,
            (u3 + u4 - u1 - u2) / 6.0 + u5,
        ]
    }
}

/// One 3x3, stride 1, padding 1 convolution of `c_in x h x w` images into `c_out` planes of
/// the same size, cut into `m x m` output tiles.
#[derive(Debug, Clone, Copy)]
pub(super) struct Tiling {
    pub c_in: usize,
    pub c_out: usize,
    pub h: usize,
    pub w: usize,
    /// Outputs per tile side: 4 or 2.
    m: usize,
    tiles_h: usize,
    tiles_w: usize,
}

impl Tiling {
    /// F(4x4, 3x3) where the plane holds at least one whole 4x4 tile, else F(2x2, 3x3),
    /// which wastes less on 2x2 and 1x1 planes.
    pub fn new(c_in: usize, c_out: usize, h: usize, w: usize) -> Self {
        Self::with_tile(if h.min(w) >= 4 { 4 } else { 2 }, c_in, c_out, h, w)
    }

    /// The tiling for the weight gradient, always F(2x2, 3x3): F(4x4)'s transforms scale
    /// the output gradient by up to 8x8 and the input by up to 10x10 before the products,
    /// whose sum over every tile then cancels back down by about three orders of magnitude;
    /// the result measured up to 1e-3 relative error against the direct sum in f32, where
    /// F(2x2) stays within 1e-4 (forward and input gradient are not affected: their sums
    /// run over channels of one tile only).
    pub fn for_weight_grad(c_in: usize, c_out: usize, h: usize, w: usize) -> Self {
        Self::with_tile(2, c_in, c_out, h, w)
    }

    fn with_tile(m: usize, c_in: usize, c_out: usize, h: usize, w: usize) -> Self {
        assert!(m == 2 || m == 4, "F({m}x{m}, 3x3) is not implemented");
        Self {
            c_in,
            c_out,
            h,
            w,
            m,
            tiles_h: h.div_ceil(m),
            tiles_w: w.div_ceil(m),
        }
    }

    fn tiles(&self) -> usize {
        self.tiles_h * self.tiles_w
    }

    /// Positions in a transformed tile, hence matrix products per chunk.
    fn positions(&self) -> usize {
        (self.m + 2) * (self.m + 2)
    }

    /// Whether the tile-position products run as `M_i = U_i * V_i` (`c_out x c_in` times
    /// `c_in x tiles`), with [`transform_weights`] laid out by output channel, rather than
    /// as `M_i^T = V_i^T * U_i^T`. Where a chunk has few tiles for its weights (one tile
    /// per image, and at least 256 output channels: ResNet-18's last two stages), the
    /// matrix product streams each `U_i` once this way, and runs about 1.5x as fast
    /// (512 channels); elsewhere the other way round is as fast or faster and needs no
    /// transposed copy of the products.
    pub fn weights_by_output_channel(&self) -> bool {
        self.tiles() * 256 <= self.c_out
    }

    /// The length of [`transform_weights`]' and [`transformed_weight_grad`]'s results.
    pub fn transformed_weights_len(&self) -> usize {
        self.positions() * self.c_out * self.c_in
    }
}

/// Calls `$body` with `$W`, `$M` and `$T` naming the tiling's algorithm.
macro_rules! with_algorithm {
    ($t:expr, |$w:ident, $m:ident, $tt:ident| $call:expr) => {
        match $t.m {
            2 => {
                type $w = F2;
                const $m: usize = 2;
                const $tt: usize = 4;
                $call
            }
            _ => {
                type $w = F4;
                const $m: usize = 4;
                const $tt: usize = 6;
                $call
            }
        }
    };
}

/// Channels each tile transform works on at once: one AVX-512 vector of `f32`. The
/// transforms run channels-last, the same fixed sums for `LANES` channels side by side.
const LANES: usize = 16;

/// Calls `$body` for each block of channels `$first..$first + $l` of `$channels`, with
/// `$l` a constant: [`LANES`], then one block of 8, then single channels.
macro_rules! by_channel_blocks {
    ($channels:expr, |$first:ident, $l:ident| $body:expr) => {{
        let channels = $channels;
        let mut $first = 0;
        {
            const $l: usize = LANES;
            while $first + $l <= channels {
                $body;
                $first += $l;
            }
        }
        {
            const $l: usize = 8;
            if $first + $l <= channels {
                $body;
                $first += $l;
            }
        }
        {
            const $l: usize = 1;
            while $first < channels {
                $body;
                $first += $l;
            }
        }
    }};
}

/// `F d F^T` of one tile `d` (`K x K` vectors of `L` channels, row by row) into `out`,
/// where `F` is `f` (`K` values in, `N` out): `F` down each column, then along each row,
/// lane by lane (the compiler turns each lane loop into vector instructions). The tiles
/// are passed by reference, and `columns` (the intermediate `F d`) comes from the caller,
/// declared once per block of channels: returned by value, or zeroed on each call, they
/// were copied or cleared through calls to `memcpy` and `memset` (about 2 % of a ResNet-18
/// step).
#[inline(always)]
fn two_sided<const L: usize, const K: usize, const N: usize>(
    d: &[[[f32; L]; K]; K],
    f: impl Fn([f32; K]) -> [f32; N] + Copy,
    columns: &mut [[[f32; L]; N]; K],
    out: &mut [[[f32; L]; N]; N],
) {
    // Row `r` of `F d`, column `c`, at `columns[c][r]`.
    for (c, column) in columns.iter_mut().enumerate() {
        for lane in 0..L {
            let values = f(std::array::from_fn(|r| d[r][c][lane]));
            for (y, value) in column.iter_mut().zip(values) {
                y[lane] = value;
            }
        }
    }
    for (r, row) in out.iter_mut().enumerate() {
        for lane in 0..L {
            let values = f(std::array::from_fn(|c| columns[c][r][lane]));
            for (y, value) in row.iter_mut().zip(values) {
                y[lane] = value;
            }
        }
    }
}

/// `N` disjoint windows of `len` values of `values`, the `k`-th at `k * stride + offset`.
#[inline(always)]
fn windows<const N: usize>(
    values: &mut [f32],
    stride: usize,
    offset: usize,
    len: usize,
) -> [&mut [f32]; N] {
    let mut rest = values;
    std::array::from_fn(|_| {
        let taken = std::mem::take(&mut rest);
        let (window, tail) = if taken.len() > stride {
            taken.split_at_mut(stride)
        } else {
            (taken, Default::default())
        };
        rest = tail;
        &mut window[offset..][..len]
    })
}

/// `N` streams of `len` values from `K`: element `j` of the outputs is `f` of element `j`
/// of the inputs. One vector loop, in AVX-512 where the CPU has it.
#[inline(always)]
fn map_streams<const K: usize, const N: usize, F: Fn([f32; K]) -> [f32; N]>(
    inputs: [&[f32]; K],
    mut outputs: [&mut [f32]; N],
    len: usize,
    f: F,
) {
    super::vectorized!({
        let whole = len / LANES * LANES;
        for j in (0..whole).step_by(LANES) {
            let x: [[f32; LANES]; K] =
                std::array::from_fn(|k| inputs[k][j..j + LANES].try_into().expect("lanes"));
            let mut y = [[0f32; LANES]; N];
            for lane in 0..LANES {
                let values = f(std::array::from_fn(|k| x[k][lane]));
                for (y, value) in y.iter_mut().zip(values) {
                    y[lane] = value;
                }
            }
            for (stream, y) in outputs.iter_mut().zip(&y) {
                stream[j..j + LANES].copy_from_slice(y);
            }
        }
        for j in whole..len {
            let values = f(std::array::from_fn(|k| inputs[k][j]));
            for (stream, value) in outputs.iter_mut().zip(values) {
                stream[j] = value;
            }
        }
    })
}

/// `U = G g G^T` for every 3x3 kernel `g`, as one block per channel of the side that
/// [`Tiling::weights_by_output_channel`] names, each block `[positions][other side's
/// channels]`: `[c_in][positions][c_out]` (rows of the matrices `U_i^T`, `T * T * c_out`
/// apart) or `[c_out][positions][c_in]` (rows of `U_i`). `weight` is `[c_out, c_in, 3,
/// 3]`; with `flipped`, it is the weight of the convolution whose input gradient is wanted,
/// `[c_in, c_out, 3, 3]`, and each kernel is used rotated by 180 degrees with the channels
/// swapped: the input gradient of a stride-1, padding-1 convolution is that convolution of
/// the output gradient.
pub(super) fn transform_weights(t: &Tiling, weight: &[f32], flipped: bool) -> Scratch {
    with_algorithm!(t, |W, M, T| weights::<W, M, T>(t, weight, flipped))
}

/// Blocks of [`transform_weights`] each task transforms: their taps are read together, so
/// that the reads run along the weight's memory whichever side the blocks are.
const WEIGHT_BLOCKS_PER_TASK: usize = 16;

fn weights<W: Minimal<M, T>, const M: usize, const T: usize>(
    t: &Tiling,
    weight: &[f32],
    flipped: bool,
) -> Scratch {
    let by_output = t.weights_by_output_channel();
    let streams = if by_output { t.c_in } else { t.c_out };
    // Where tap `tap` of block `b` and channel `o` of the other side lies in `weight`:
    // `b * along_blocks + o * along_streams + tap` (the tap reversed when flipped).
    let (along_blocks, along_streams) = match (flipped, by_output) {
        (false, false) => (9, t.c_in * 9),
        (false, true) => (t.c_in * 9, 9),
        (true, false) => (t.c_out * 9, 9),
        (true, true) => (9, t.c_out * 9),
    };
    let block_len = T * T * streams;
    let mut u = scratch(t.transformed_weights_len());
    u.par_chunks_mut(WEIGHT_BLOCKS_PER_TASK * block_len)
        .enumerate()
        .for_each(|(task, u)| {
            let (first, blocks) = (task * WEIGHT_BLOCKS_PER_TASK, u.len() / block_len);
            // The nine kernel taps of every channel of the other side as nine streams over
            // those channels, per block (`taps[(b * 9 + tap) * streams + o]`), so that both
            // passes are vector loops along them.
            let mut taps = vec![0f32; blocks * 9 * streams];
            let mut read = |b: usize, o: usize| {
                let at = (first + b) * along_blocks + o * along_streams;
                let kernel: &[f32; 9] = weight[at..][..9].try_into().expect("9 taps");
                for tap in 0..9 {
                    let value = kernel[if flipped { 8 - tap } else { tap }];
                    taps[(b * 9 + tap) * streams + o] = value;
                }
            };
            if along_blocks < along_streams {
                (0..streams).for_each(|o| (0..blocks).for_each(|b| read(b, o)));
            } else {
                (0..blocks).for_each(|b| (0..streams).for_each(|o| read(b, o)));
            }
            let mut half = vec![0f32; T * 3 * streams];
            for (taps, u) in taps
                .chunks_exact(9 * streams)
                .zip(u.chunks_exact_mut(block_len))
            {
                // G g (T x 3) column by column, then (G g) G^T (T x T) row by row.
                for kw in 0..3 {
                    let src = std::array::from_fn(|kh| &taps[(kh * 3 + kw) * streams..][..streams]);
                    let dst = windows(&mut half[kw * streams..], 3 * streams, 0, streams);
                    map_streams(src, dst, streams, W::kernel);
                }
                for r in 0..T {
                    let src = std::array::from_fn(|kw| &half[(r * 3 + kw) * streams..][..streams]);
                    let dst = windows(&mut u[r * T * streams..], streams, 0, streams);
                    map_streams(src, dst, streams, W::kernel);
                }
            }
        });
    u
}

/// `V = B^T d B` of every tile of `images` images, laid out `[positions][images *
/// tiles][c_in]`, through [`transform_tiles`] with a one-value zero border (the padding).
fn transform_input<W: Minimal<M, T>, const M: usize, const T: usize>(
    t: &Tiling,
    x_imgs: &[f32],
    images: usize,
    v: &mut [f32],
) {
    transform_tiles::<M, T, T, 1>(t, x_imgs, t.c_in, images, W::input, v);
}

/// The two-sided transform `F d F^T` of every tile of `images` images of `channels`
/// channels (`planes`, `[images, channels, h, w]`), where `F` is `transform` (`N` values of
/// a tile's side in, `T` out), laid out `[positions][images * tiles][channels]`. Tile
/// `(ty, tx)` is the `N x N` window at row and column `M * ty - BORDER`, `M * tx - BORDER`;
/// what lies outside the plane reads as zero. Each image is first transposed
/// channels-last, so that every tile's transform is a vector loop across channels.
fn transform_tiles<const M: usize, const N: usize, const T: usize, const BORDER: usize>(
    t: &Tiling,
    planes: &[f32],
    channels: usize,
    images: usize,
    transform: impl Fn([f32; N]) -> [f32; T] + Copy,
    out: &mut [f32],
) {
    let plane = t.h * t.w;
    let columns = images * t.tiles();
    assert!(planes.len() >= images * channels * plane && out.len() >= T * T * columns * channels);
    let mut pixels = scratch(plane * channels);
    for k in 0..images {
        let image = &planes[k * channels * plane..][..channels * plane];
        transpose(image, channels, plane, &mut pixels);
        super::vectorized!(for ty in 0..t.tiles_h {
            for tx in 0..t.tiles_w {
                let column = (k * t.tiles_h + ty) * t.tiles_w + tx;
                by_channel_blocks!(channels, |first, L| {
                    let mut half = [[[0f32; L]; T]; N];
                    let mut d = [[[0f32; L]; N]; N];
                    for (r, row) in d.iter_mut().enumerate() {
                        let y = (M * ty + r).wrapping_sub(BORDER);
                        for (c, values) in row.iter_mut().enumerate() {
                            let x = (M * tx + c).wrapping_sub(BORDER);
                            if y < t.h && x < t.w {
                                let at = (y * t.w + x) * channels + first;
                                values.copy_from_slice(&pixels[at..][..L]);
                            }
                        }
                    }
                    let mut v = [[[0f32; L]; T]; T];
                    two_sided(&d, transform, &mut half, &mut v);
                    for (i, v) in v.as_flattened().iter().enumerate() {
                        out[(i * columns + column) * channels + first..][..L].copy_from_slice(v);
                    }
                })
            }
        })
    }
}

/// The convolution of `images` images `x_imgs` into `out` (`[images, c_out, h, w]`), with
/// `u` from [`transform_weights`], then `relu(y + bias[channel])` when given a bias.
/// `parallelism`: of each of the matrix products.
pub(super) fn convolve(
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

fn convolve_with<W: Minimal<M, T>, const M: usize, const T: usize>(
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
        super::vectorized!(for ty in 0..t.tiles_h {
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

/// `A dY A^T` of every `M x M` tile of the output gradient of `images` images (`[images,
/// c_out, h, w]`), laid out `[positions][images * tiles][c_out]`: the gradient reaching
/// each tile position's product in [`convolve`]. Through [`transform_tiles`], without a
/// border.
fn transform_output_grad<W: Minimal<M, T>, const M: usize, const T: usize>(
    t: &Tiling,
    dy_imgs: &[f32],
    images: usize,
    mg: &mut [f32],
) {
    transform_tiles::<M, M, T, 0>(t, dy_imgs, t.c_out, images, W::output_grad, mg);
}

/// The gradient of the transformed weights [`transform_weights`] makes, from `images`
/// images `x_imgs` and their output gradient `dy_imgs`: per tile position `i`,
/// `dU_i [c_out, c_in] = (A dY A^T)_i * V_i^T` over the chunk's tiles, laid out
/// `[positions][c_out][c_in]`. Chunks' results add up; [`weight_grad`] turns the sum into
/// the weight gradient.
pub(super) fn transformed_weight_grad(
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

fn transformed_weight_grad_with<W: Minimal<M, T>, const M: usize, const T: usize>(
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
const WEIGHT_GRAD_BLOCK: usize = 128;

/// `dst [cols, rows]`, the transpose of `src [rows, cols]` (both row-major), in 8x8
/// blocks: with AVX, each block is eight vector loads, a register transpose and eight
/// vector stores; the ragged edges, and CPUs without AVX, go element by element.
fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    assert!(src.len() == rows * cols && dst.len() == rows * cols);
    let (whole_rows, whole_cols) = (rows / 8 * 8, cols / 8 * 8);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        for r in (0..whole_rows).step_by(8) {
            for c in (0..whole_cols).step_by(8) {
                // SAFETY: the CPU has AVX; rows r..r+8 and columns c..c+8 lie inside `src`
                // (`[rows, cols]`), and rows c..c+8, columns r..r+8 inside `dst`
                // (`[cols, rows]`), as the assert and the loop bounds make sure.
                unsafe {
                    transpose_8x8(
                        src.as_ptr().add(r * cols + c),
                        cols,
                        dst.as_mut_ptr().add(c * rows + r),
                        rows,
                    )
                };
            }
        }
    } else {
        transpose_scalar(src, rows, cols, dst, (0..whole_rows, 0..whole_cols));
    }
    #[cfg(not(target_arch = "x86_64"))]
    transpose_scalar(src, rows, cols, dst, (0..whole_rows, 0..whole_cols));
    transpose_scalar(src, rows, cols, dst, (0..rows, whole_cols..cols));
    transpose_scalar(src, rows, cols, dst, (whole_rows..rows, 0..whole_cols));
}

/// [`transpose`] of the elements in rows `ranges.0` and columns `ranges.1` of `src`.
fn transpose_scalar(
    src: &[f32],
    rows: usize,
    cols: usize,
    dst: &mut [f32],
    ranges: (std::ops::Range<usize>, std::ops::Range<usize>),
) {
    for r in ranges.0 {
        for c in ranges.1.clone() {
            dst[c * rows + r] = src[r * cols + c];
        }
    }
}

/// Transposes the 8x8 block at `src` (rows `src_stride` apart) into `dst` (rows
/// `dst_stride` apart): interleave pairs of rows, then pairs of pairs, then swap the
/// 128-bit halves.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn transpose_8x8(src: *const f32, src_stride: usize, dst: *mut f32, dst_stride: usize) {
    use std::arch::x86_64::*;
    // SAFETY (whole body): the caller guarantees eight rows of eight values at both ends.
    unsafe {
        let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(src.add(i * src_stride)));
        let t = [
            _mm256_unpacklo_ps(r[0], r[1]),
            _mm256_unpackhi_ps(r[0], r[1]),
            _mm256_unpacklo_ps(r[2], r[3]),
            _mm256_unpackhi_ps(r[2], r[3]),
            _mm256_unpacklo_ps(r[4], r[5]),
            _mm256_unpackhi_ps(r[4], r[5]),
            _mm256_unpacklo_ps(r[6], r[7]),
            _mm256_unpackhi_ps(r[6], r[7]),
        ];
        let s = [
            _mm256_shuffle_ps::<0x44>(t[0], t[2]),
            _mm256_shuffle_ps::<0xEE>(t[0], t[2]),
            _mm256_shuffle_ps::<0x44>(t[1], t[3]),
            _mm256_shuffle_ps::<0xEE>(t[1], t[3]),
            _mm256_shuffle_ps::<0x44>(t[4], t[6]),
            _mm256_shuffle_ps::<0xEE>(t[4], t[6]),
            _mm256_shuffle_ps::<0x44>(t[5], t[7]),
            _mm256_shuffle_ps::<0xEE>(t[5], t[7]),
        ];
        for i in 0..4 {
            _mm256_storeu_ps(
                dst.add(i * dst_stride),
                _mm256_permute2f128_ps::<0x20>(s[i], s[i + 4]),
            );
            _mm256_storeu_ps(
                dst.add((i + 4) * dst_stride),
                _mm256_permute2f128_ps::<0x31>(s[i], s[i + 4]),
            );
        }
    }
}

/// The weight gradient `[c_out, c_in, 3, 3]` from the summed [`transformed_weight_grad`]:
/// `G^T dU G` per channel pair, the transpose of [`transform_weights`]' `G g G^T`.
pub(super) fn weight_grad(t: &Tiling, du: &[f32]) -> Vec<f32> {
    with_algorithm!(t, |W, M, T| weight_grad_with::<W, M, T>(t, du))
}

fn weight_grad_with<W: Minimal<M, T>, const M: usize, const T: usize>(
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The direct sum, for comparison.
    fn direct(t: &Tiling, x: &[f32], weight: &[f32], images: usize) -> Vec<f32> {
        let mut y = vec![0f32; images * t.c_out * t.h * t.w];
        for img in 0..images {
            for co in 0..t.c_out {
                for oy in 0..t.h {
                    for ox in 0..t.w {
                        let mut sum = 0f64;
                        for ci in 0..t.c_in {
                            for kh in 0..3 {
                                for kw in 0..3 {
                                    let (iy, ix) = (oy + kh, ox + kw);
                                    if iy == 0 || ix == 0 || iy > t.h || ix > t.w {
                                        continue;
                                    }
                                    let xv = x[((img * t.c_in + ci) * t.h + iy - 1) * t.w + ix - 1];
                                    let wv = weight[((co * t.c_in + ci) * 3 + kh) * 3 + kw];
                                    sum += (xv * wv) as f64;
                                }
                            }
                        }
                        y[((img * t.c_out + co) * t.h + oy) * t.w + ox] = sum as f32;
                    }
                }
            }
        }
        y
    }

    fn values(count: usize, seed: usize) -> Vec<f32> {
        (0..count)
            .map(|i| (((i * 7919 + seed * 104729) % 2003) as f32 / 1001.0) - 1.0)
            .collect()
    }

    /// Both algorithms equal the direct sum on even and odd sizes, down to 1x1 images, up to
    /// rounding, including planes that are not a whole number of tiles.
    #[test]
    fn matches_direct_convolution() {
        // Channel counts that take each block width of the transforms (16, 8 and 1), and
        // one layer whose products run by output channel (one tile, 260 outputs).
        let sizes = [
            (3, 4, 6, 6),
            (2, 5, 5, 7),
            (4, 3, 1, 1),
            (3, 2, 2, 3),
            (5, 3, 8, 9),
            (25, 18, 5, 7),
            (17, 260, 1, 1),
        ];
        for m in [2, 4] {
            for (c_in, c_out, h, w) in sizes {
                let t = Tiling::with_tile(m, c_in, c_out, h, w);
                let images = 2;
                let x = values(images * c_in * h * w, 1);
                let weight = values(c_out * c_in * 9, 2);
                let u = transform_weights(&t, &weight, false);
                let mut y = vec![f32::NAN; images * c_out * h * w];
                convolve(&t, &u, &x, images, &mut y, gemm::Parallelism::None, None);
                for (a, b) in y.iter().zip(direct(&t, &x, &weight, images)) {
                    assert!(
                        (a - b).abs() < 1e-4,
                        "F({m}): {c_in}x{h}x{w} -> {c_out}: {a} vs {b}"
                    );
                }
            }
        }
    }

    /// F(4x4) where a whole 4x4 tile fits, F(2x2) below.
    #[test]
    fn picks_the_larger_tile_where_it_fits() {
        assert_eq!(Tiling::new(8, 8, 16, 16).m, 4);
        assert_eq!(Tiling::new(8, 8, 4, 5).m, 4);
        assert_eq!(Tiling::new(8, 8, 3, 8).m, 2);
        assert_eq!(Tiling::new(8, 8, 2, 2).m, 2);
    }

    /// `flipped` swaps the channels and rotates each kernel: convolving with a weight
    /// `[c_in, c_out, 3, 3]` read that way equals convolving with the rotated copy.
    #[test]
    fn flipped_weights_rotate_and_swap_channels() {
        // Both layouts: by input channel, and by output channel (one tile, 260 outputs).
        for (c_in, c_out, side) in [(3, 2, 4), (3, 260, 1)] {
            flipped_weights_case(c_in, c_out, side);
        }
    }

    fn flipped_weights_case(c_in: usize, c_out: usize, side: usize) {
        let original = values(c_in * c_out * 9, 3); // [c_in, c_out, 3, 3]
        let mut rotated = vec![0f32; c_out * c_in * 9]; // [c_out, c_in, 3, 3]
        for ci in 0..c_in {
            for co in 0..c_out {
                for k in 0..9 {
                    rotated[(co * c_in + ci) * 9 + k] = original[(ci * c_out + co) * 9 + 8 - k];
                }
            }
        }
        for m in [2, 4] {
            let t = Tiling::with_tile(m, c_in, c_out, side, side);
            assert_eq!(
                transform_weights(&t, &original, true)[..],
                transform_weights(&t, &rotated, false)[..]
            );
        }
    }
    /// The blocked transpose, on sizes with and without ragged edges.
    #[test]
    fn transpose_matches_definition() {
        for (rows, cols) in [(8, 8), (16, 24), (13, 21), (3, 5), (64, 9), (1, 17)] {
            let src = values(rows * cols, 6);
            let mut dst = vec![f32::NAN; rows * cols];
            transpose(&src, rows, cols, &mut dst);
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(
                        dst[c * rows + r],
                        src[r * cols + c],
                        "{rows}x{cols} at {r},{c}"
                    );
                }
            }
        }
    }

    /// The weight gradient equals the direct sum `dW[co, ci, kh, kw] = sum x * dY` over
    /// images and positions, on even and odd sizes.
    #[test]
    fn weight_grad_matches_direct_sum() {
        // 17 input channels: the transposed products, in blocks (F(2x2): 600 tiles, 5 blocks).
        let sizes = [
            (3, 4, 6, 6),
            (2, 5, 5, 7),
            (4, 3, 1, 1),
            (3, 2, 9, 8),
            (17, 3, 30, 40),
        ];
        for (m, (c_in, c_out, h, w)) in [2, 4].into_iter().flat_map(|m| sizes.map(|s| (m, s))) {
            let t = Tiling::with_tile(m, c_in, c_out, h, w);
            let images = 2;
            let x = values(images * c_in * h * w, 4);
            let dy = values(images * c_out * h * w, 5);
            let du = transformed_weight_grad(&t, &x, &dy, images, gemm::Parallelism::None);
            let dw = weight_grad(&t, &du);
            for co in 0..c_out {
                for ci in 0..c_in {
                    for kh in 0..3 {
                        for kw in 0..3 {
                            let (mut sum, mut magnitude) = (0f64, 0f64);
                            for img in 0..images {
                                for oy in 0..h {
                                    for ox in 0..w {
                                        let (iy, ix) = (oy + kh, ox + kw);
                                        if iy == 0 || ix == 0 || iy > h || ix > w {
                                            continue;
                                        }
                                        let xv = x[((img * c_in + ci) * h + iy - 1) * w + ix - 1];
                                        let g = dy[((img * c_out + co) * h + oy) * w + ox];
                                        sum += (xv * g) as f64;
                                        magnitude += (xv * g).abs() as f64;
                                    }
                                }
                            }
                            let got = dw[((co * c_in + ci) * 3 + kh) * 3 + kw];
                            // 1e-4, or 1e-6 of the sum of the terms' magnitudes where that
                            // is more (f32 rounding grows with it): only the big case's
                            // 2,400 terms reach it; the other cases' stay below 100.
                            assert!(
                                (got as f64 - sum).abs() < 1e-4f64.max(1e-6 * magnitude),
                                "F({m}) {c_in}x{h}x{w}: {co} {ci} {kh} {kw}: {got} vs {sum}"
                            );
                        }
                    }
                }
            }
        }
    }
}
