//! The tile transforms, channels-last: the kernels' `G g G^T`, the input tiles'
//! `B^T d B`, the output gradient's `A dY A^T`, each for 16 channels at once.

use super::LANES;
use super::algorithms::{F2, F4, Minimal};
use super::tiling::Tiling;
use super::transpose::transpose;
use crate::kernels::scratch::{Scratch, scratch};
use rayon::prelude::*;

/// `F d F^T` of one tile `d` (`K x K` vectors of `L` channels, row by row) into `out`,
/// where `F` is `f` (`K` values in, `N` out): `F` down each column, then along each row,
/// lane by lane (the compiler turns each lane loop into vector instructions). The tiles
/// are passed by reference, and `columns` (the intermediate `F d`) comes from the caller,
/// declared once per block of channels: returned by value, or zeroed on each call, they
/// were copied or cleared through calls to `memcpy` and `memset` (about 2 % of a ResNet-18
/// step).
#[inline(always)]
pub(super) fn two_sided<const L: usize, const K: usize, const N: usize>(
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
pub(super) fn windows<const N: usize>(
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
pub(super) fn map_streams<const K: usize, const N: usize, F: Fn([f32; K]) -> [f32; N]>(
    inputs: [&[f32]; K],
    mut outputs: [&mut [f32]; N],
    len: usize,
    f: F,
) {
    crate::kernels::vectorized!({
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
pub(in crate::kernels) fn transform_weights(t: &Tiling, weight: &[f32], flipped: bool) -> Scratch {
    with_algorithm!(t, |W, M, T| weights::<W, M, T>(t, weight, flipped))
}

/// Blocks of [`transform_weights`] each task transforms: their taps are read together, so
/// that the reads run along the weight's memory whichever side the blocks are.
pub(super) const WEIGHT_BLOCKS_PER_TASK: usize = 16;

pub(super) fn weights<W: Minimal<M, T>, const M: usize, const T: usize>(
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
pub(super) fn transform_input<W: Minimal<M, T>, const M: usize, const T: usize>(
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
pub(super) fn transform_tiles<
    const M: usize,
    const N: usize,
    const T: usize,
    const BORDER: usize,
>(
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
        crate::kernels::vectorized!(for ty in 0..t.tiles_h {
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

/// `A dY A^T` of every `M x M` tile of the output gradient of `images` images (`[images,
/// c_out, h, w]`), laid out `[positions][images * tiles][c_out]`: the gradient reaching
/// each tile position's product in [`convolve`]. Through [`transform_tiles`], without a
/// border.
pub(super) fn transform_output_grad<W: Minimal<M, T>, const M: usize, const T: usize>(
    t: &Tiling,
    dy_imgs: &[f32],
    images: usize,
    mg: &mut [f32],
) {
    transform_tiles::<M, M, T, 0>(t, dy_imgs, t.c_out, images, W::output_grad, mg);
}
