//! Lowering a convolution to matrix products: the patches of a chunk of images as
//! columns (im2col) or rows (im2row), their sum back into an image (col2im), and
//! the gathering of a chunk's output gradient.

use super::geometry::Geometry;
use crate::kernels::copy_row;

/// The patches of images `x_imgs` as columns, `[patch, images * out_plane]` (the layout the
/// forward product packs contiguously).
pub(super) fn im2col(g: &Geometry, x_imgs: &[f32], images: usize, col: &mut [f32]) {
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
pub(super) fn im2row(g: &Geometry, x_imgs: &[f32], images: usize, rows: &mut [f32]) {
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
pub(super) fn windows<const K: usize>(
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
pub(super) fn col2im(g: &Geometry, col: &[f32], images: usize, dx_imgs: &mut [f32]) {
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
pub(super) fn gather_output_grad(
    g: &Geometry,
    dy: &[f32],
    first: usize,
    images: usize,
    out: &mut [f32],
) {
    let plane = g.out_plane();
    let width = images * plane;
    for co in 0..g.c_out {
        for img in 0..images {
            let src = &dy[((first + img) * g.c_out + co) * plane..][..plane];
            copy_row(&mut out[co * width + img * plane..][..plane], src);
        }
    }
}
