//! 3x3 convolutions with stride 1 and padding 1 (all of the plain CNNs' convolutions and
//! most of ResNet-18's, forward and input gradient) by Winograd's minimal filtering
//! F(2x2, 3x3) (Lavin & Gray, 2016): each 2x2 block of outputs comes from a 4x4 input tile
//! with 16 multiplications per channel pair instead of 36, as sixteen matrix products over
//! all the tiles of a chunk of images. The transforms only add, subtract and halve, so the
//! results differ from the direct sum by rounding only.

use super::matmul;
use rayon::prelude::*;

/// One 3x3, stride 1, padding 1 convolution of `c_in x h x w` images into `c_out` planes of
/// the same size, cut into 2x2 output tiles.
#[derive(Debug, Clone, Copy)]
pub(super) struct Tiling {
    pub c_in: usize,
    pub c_out: usize,
    pub h: usize,
    pub w: usize,
    tiles_h: usize,
    tiles_w: usize,
}

impl Tiling {
    pub fn new(c_in: usize, c_out: usize, h: usize, w: usize) -> Self {
        Self {
            c_in,
            c_out,
            h,
            w,
            tiles_h: h.div_ceil(2),
            tiles_w: w.div_ceil(2),
        }
    }

    fn tiles(&self) -> usize {
        self.tiles_h * self.tiles_w
    }
}

/// `U = G g G^T` for every 3x3 kernel `g`, laid out `[c_out][16][c_in]` (row `co` of the
/// matrix of each tile position `i` at `(co * 16 + i) * c_in`). `weight` is
/// `[c_out, c_in, 3, 3]`; with `flipped`, it is the weight of the convolution whose input
/// gradient is wanted, `[c_in, c_out, 3, 3]`, and each kernel is used rotated by 180
/// degrees with the channels swapped: the input gradient of a stride-1, padding-1
/// convolution is that convolution of the output gradient.
pub(super) fn transform_weights(t: &Tiling, weight: &[f32], flipped: bool) -> Vec<f32> {
    let mut u = vec![0f32; t.c_out * 16 * t.c_in];
    u.par_chunks_mut(16 * t.c_in)
        .enumerate()
        .for_each(|(co, u)| {
            for ci in 0..t.c_in {
                let g: [[f32; 3]; 3] = std::array::from_fn(|kh| {
                    std::array::from_fn(|kw| {
                        if flipped {
                            weight[((ci * t.c_out + co) * 3 + 2 - kh) * 3 + 2 - kw]
                        } else {
                            weight[((co * t.c_in + ci) * 3 + kh) * 3 + kw]
                        }
                    })
                });
                // G g (4x3), then (G g) G^T (4x4).
                let rows = [
                    g[0],
                    std::array::from_fn(|c| 0.5 * (g[0][c] + g[1][c] + g[2][c])),
                    std::array::from_fn(|c| 0.5 * (g[0][c] - g[1][c] + g[2][c])),
                    g[2],
                ];
                for (r, row) in rows.iter().enumerate() {
                    let values = [
                        row[0],
                        0.5 * (row[0] + row[1] + row[2]),
                        0.5 * (row[0] - row[1] + row[2]),
                        row[2],
                    ];
                    for (c, &value) in values.iter().enumerate() {
                        u[(r * 4 + c) * t.c_in + ci] = value;
                    }
                }
            }
        });
    u
}

/// `V = B^T d B` of every tile of `images` images, laid out `[16][c_in][images * tiles]`.
/// Worked a row of tiles at a time, so that every loop runs along contiguous memory:
/// first `B^T` down the four input rows a row of tiles covers, then `B` along them.
fn transform_input(t: &Tiling, x_imgs: &[f32], images: usize, v: &mut [f32]) {
    let columns = images * t.tiles();
    // Each plane is copied once into a zero border (one row and column before, enough
    // after to complete the last tiles), from which every tile reads without checks.
    let (ph, pw) = (2 * t.tiles_h + 2, 2 * t.tiles_w + 2);
    let mut padded = vec![0f32; ph * pw];
    let mut rows = [
        vec![0f32; pw],
        vec![0f32; pw],
        vec![0f32; pw],
        vec![0f32; pw],
    ];
    for img in 0..images {
        for ci in 0..t.c_in {
            let plane = &x_imgs[(img * t.c_in + ci) * t.h * t.w..][..t.h * t.w];
            for (row, src) in plane.chunks_exact(t.w).enumerate() {
                padded[(row + 1) * pw + 1..][..t.w].copy_from_slice(src);
            }
            for ty in 0..t.tiles_h {
                let d = |r: usize| &padded[(2 * ty + r) * pw..][..pw];
                let (d0, d1, d2, d3) = (d(0), d(1), d(2), d(3));
                for x in 0..pw {
                    rows[0][x] = d0[x] - d2[x];
                    rows[1][x] = d1[x] + d2[x];
                    rows[2][x] = d2[x] - d1[x];
                    rows[3][x] = d1[x] - d3[x];
                }
                let first = img * t.tiles() + ty * t.tiles_w;
                for (r, q) in rows.iter().enumerate() {
                    let at = |c: usize| ((r * 4 + c) * t.c_in + ci) * columns + first;
                    for (tx, out) in v[at(0)..][..t.tiles_w].iter_mut().enumerate() {
                        *out = q[2 * tx] - q[2 * tx + 2];
                    }
                    for (tx, out) in v[at(1)..][..t.tiles_w].iter_mut().enumerate() {
                        *out = q[2 * tx + 1] + q[2 * tx + 2];
                    }
                    for (tx, out) in v[at(2)..][..t.tiles_w].iter_mut().enumerate() {
                        *out = q[2 * tx + 2] - q[2 * tx + 1];
                    }
                    for (tx, out) in v[at(3)..][..t.tiles_w].iter_mut().enumerate() {
                        *out = q[2 * tx + 1] - q[2 * tx + 3];
                    }
                }
            }
        }
    }
}

/// The convolution of `images` images `x_imgs` into `out` (`[images, c_out, h, w]`), with
/// `u` from [`transform_weights`], then `relu(y + bias[channel])` when given a bias.
/// `parallelism`: of each of the sixteen matrix products.
pub(super) fn convolve(
    t: &Tiling,
    u: &[f32],
    x_imgs: &[f32],
    images: usize,
    out: &mut [f32],
    parallelism: gemm::Parallelism,
    bias_relu: Option<&[f32]>,
) {
    let columns = images * t.tiles();
    let mut v = vec![0f32; 16 * t.c_in * columns];
    let mut m = vec![0f32; 16 * t.c_out * columns];
    transform_input(t, x_imgs, images, &mut v);
    for i in 0..16 {
        // M_i [c_out, columns] = U_i [c_out, c_in] * V_i [c_in, columns]
        matmul(
            (t.c_out, columns, t.c_in),
            &mut m[i * t.c_out * columns..][..t.c_out * columns],
            false,
            &u[i * t.c_in..],
            (16 * t.c_in, 1),
            &v[i * t.c_in * columns..][..t.c_in * columns],
            (columns, 1),
            parallelism,
        );
    }
    // `A^T m A` a row of tiles at a time, along contiguous memory as in the input: first
    // `A^T` over the 4x4 products' rows (`s`), then `A` along them.
    let mut s = vec![vec![0f32; t.tiles_w]; 4];
    let (mut left, mut right) = (vec![0f32; t.tiles_w], vec![0f32; t.tiles_w]);
    for img in 0..images {
        for co in 0..t.c_out {
            let plane = &mut out[(img * t.c_out + co) * t.h * t.w..][..t.h * t.w];
            for ty in 0..t.tiles_h {
                let first = img * t.tiles() + ty * t.tiles_w;
                let m: [&[f32]; 16] = std::array::from_fn(|i| {
                    &m[(i * t.c_out + co) * columns + first..][..t.tiles_w]
                });
                for dy in 0..2.min(t.h - 2 * ty) {
                    for (c, s) in s.iter_mut().enumerate() {
                        let (a, b, d) = match dy {
                            0 => (m[c], m[4 + c], m[8 + c]),
                            _ => (m[4 + c], m[8 + c], m[12 + c]),
                        };
                        for (((s, &a), &b), &d) in s.iter_mut().zip(a).zip(b).zip(d) {
                            *s = if dy == 0 { a + b + d } else { a - b - d };
                        }
                    }
                    for (((l, r), (&s0, &s1)), (&s2, &s3)) in left
                        .iter_mut()
                        .zip(right.iter_mut())
                        .zip(s[0].iter().zip(&s[1]))
                        .zip(s[2].iter().zip(&s[3]))
                    {
                        *l = s0 + s1 + s2;
                        *r = s1 - s2 - s3;
                    }
                    let row = &mut plane[(2 * ty + dy) * t.w..][..t.w];
                    let (pairs, last) = row.split_at_mut(t.w / 2 * 2);
                    for ((pair, &l), &r) in pairs.chunks_exact_mut(2).zip(&left).zip(&right) {
                        pair.copy_from_slice(&[l, r]);
                    }
                    if let Some(y) = last.first_mut() {
                        *y = left[t.tiles_w - 1];
                    }
                    if let Some(bias) = bias_relu {
                        let b = bias[co];
                        row.iter_mut().for_each(|y| *y = (*y + b).max(0.0));
                    }
                }
            }
        }
    }
}

/// `A dY A^T` of every 2x2 tile of the output gradient of `images` images (`[images, c_out,
/// h, w]`), laid out `[16][c_out][images * tiles]`: the gradient reaching each tile
/// position's product in [`convolve`].
fn transform_output_grad(t: &Tiling, dy_imgs: &[f32], images: usize, mg: &mut [f32]) {
    let columns = images * t.tiles();
    // Zeros below and right of the plane complete the last tiles.
    let (ph, pw) = (2 * t.tiles_h, 2 * t.tiles_w);
    let mut padded = vec![0f32; ph * pw];
    let mut rows = [
        vec![0f32; pw],
        vec![0f32; pw],
        vec![0f32; pw],
        vec![0f32; pw],
    ];
    for img in 0..images {
        for co in 0..t.c_out {
            let plane = &dy_imgs[(img * t.c_out + co) * t.h * t.w..][..t.h * t.w];
            for (row, src) in plane.chunks_exact(t.w).enumerate() {
                padded[row * pw..][..t.w].copy_from_slice(src);
            }
            for ty in 0..t.tiles_h {
                let (a, c) = (
                    &padded[2 * ty * pw..][..pw],
                    &padded[(2 * ty + 1) * pw..][..pw],
                );
                for x in 0..pw {
                    rows[0][x] = a[x];
                    rows[1][x] = a[x] + c[x];
                    rows[2][x] = a[x] - c[x];
                    rows[3][x] = -c[x];
                }
                let first = img * t.tiles() + ty * t.tiles_w;
                for (r, q) in rows.iter().enumerate() {
                    let at = |k: usize| ((r * 4 + k) * t.c_out + co) * columns + first;
                    for (tx, out) in mg[at(0)..][..t.tiles_w].iter_mut().enumerate() {
                        *out = q[2 * tx];
                    }
                    for (tx, out) in mg[at(1)..][..t.tiles_w].iter_mut().enumerate() {
                        *out = q[2 * tx] + q[2 * tx + 1];
                    }
                    for (tx, out) in mg[at(2)..][..t.tiles_w].iter_mut().enumerate() {
                        *out = q[2 * tx] - q[2 * tx + 1];
                    }
                    for (tx, out) in mg[at(3)..][..t.tiles_w].iter_mut().enumerate() {
                        *out = -q[2 * tx + 1];
                    }
                }
            }
        }
    }
}

/// The gradient of the transformed weights [`transform_weights`] makes, from `images`
/// images `x_imgs` and their output gradient `dy_imgs`: per tile position `i`,
/// `dU_i [c_out, c_in] = (A dY A^T)_i * V_i^T` over the chunk's tiles, laid out
/// `[16][c_out][c_in]`. Chunks' results add up; [`weight_grad`] turns the sum into the
/// weight gradient.
pub(super) fn transformed_weight_grad(
    t: &Tiling,
    x_imgs: &[f32],
    dy_imgs: &[f32],
    images: usize,
    parallelism: gemm::Parallelism,
) -> Vec<f32> {
    let columns = images * t.tiles();
    let mut v = vec![0f32; 16 * t.c_in * columns];
    let mut mg = vec![0f32; 16 * t.c_out * columns];
    transform_input(t, x_imgs, images, &mut v);
    transform_output_grad(t, dy_imgs, images, &mut mg);
    let mut du = vec![0f32; 16 * t.c_out * t.c_in];
    for i in 0..16 {
        // dU_i [c_out, c_in] = MG_i [c_out, columns] * V_i^T [columns, c_in]
        matmul(
            (t.c_out, t.c_in, columns),
            &mut du[i * t.c_out * t.c_in..][..t.c_out * t.c_in],
            false,
            &mg[i * t.c_out * columns..][..t.c_out * columns],
            (columns, 1),
            &v[i * t.c_in * columns..][..t.c_in * columns],
            (1, columns),
            parallelism,
        );
    }
    du
}

/// The weight gradient `[c_out, c_in, 3, 3]` from the summed [`transformed_weight_grad`]:
/// `G^T dU G` per channel pair, the transpose of [`transform_weights`]' `G g G^T`.
pub(super) fn weight_grad(t: &Tiling, du: &[f32]) -> Vec<f32> {
    let mut dw = vec![0f32; t.c_out * t.c_in * 9];
    dw.par_chunks_mut(t.c_in * 9)
        .enumerate()
        .for_each(|(co, dw)| {
            for (ci, dw) in dw.chunks_exact_mut(9).enumerate() {
                let x: [[f32; 4]; 4] = std::array::from_fn(|r| {
                    std::array::from_fn(|c| du[((r * 4 + c) * t.c_out + co) * t.c_in + ci])
                });
                // G^T x (3x4), then (G^T x) G (3x3).
                let z: [[f32; 4]; 3] = std::array::from_fn(|j| {
                    std::array::from_fn(|c| match j {
                        0 => x[0][c] + 0.5 * (x[1][c] + x[2][c]),
                        1 => 0.5 * (x[1][c] - x[2][c]),
                        _ => 0.5 * (x[1][c] + x[2][c]) + x[3][c],
                    })
                });
                for (r, z) in z.iter().enumerate() {
                    dw[r * 3] = z[0] + 0.5 * (z[1] + z[2]);
                    dw[r * 3 + 1] = 0.5 * (z[1] - z[2]);
                    dw[r * 3 + 2] = 0.5 * (z[1] + z[2]) + z[3];
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

    /// Equal to the direct sum on even and odd sizes, down to 1x1 images, up to rounding.
    #[test]
    fn matches_direct_convolution() {
        for (c_in, c_out, h, w) in [(3, 4, 6, 6), (2, 5, 5, 7), (4, 3, 1, 1), (3, 2, 2, 3)] {
            let t = Tiling::new(c_in, c_out, h, w);
            let images = 2;
            let x = values(images * c_in * h * w, 1);
            let weight = values(c_out * c_in * 9, 2);
            let u = transform_weights(&t, &weight, false);
            let mut y = vec![f32::NAN; images * c_out * h * w];
            convolve(&t, &u, &x, images, &mut y, gemm::Parallelism::None, None);
            for (a, b) in y.iter().zip(direct(&t, &x, &weight, images)) {
                assert!(
                    (a - b).abs() < 1e-4,
                    "{c_in}x{h}x{w} -> {c_out}: {a} vs {b}"
                );
            }
        }
    }

    /// `flipped` swaps the channels and rotates each kernel: convolving with a weight
    /// `[c_in, c_out, 3, 3]` read that way equals convolving with the rotated copy.
    #[test]
    fn flipped_weights_rotate_and_swap_channels() {
        let (c_in, c_out) = (3, 2);
        let original = values(c_in * c_out * 9, 3); // [c_in, c_out, 3, 3]
        let mut rotated = vec![0f32; c_out * c_in * 9]; // [c_out, c_in, 3, 3]
        for ci in 0..c_in {
            for co in 0..c_out {
                for k in 0..9 {
                    rotated[(co * c_in + ci) * 9 + k] = original[(ci * c_out + co) * 9 + 8 - k];
                }
            }
        }
        let t = Tiling::new(c_in, c_out, 4, 4);
        assert_eq!(
            transform_weights(&t, &original, true),
            transform_weights(&t, &rotated, false)
        );
    }
    /// The weight gradient equals the direct sum `dW[co, ci, kh, kw] = sum x * dY` over
    /// images and positions, on even and odd sizes.
    #[test]
    fn weight_grad_matches_direct_sum() {
        for (c_in, c_out, h, w) in [(3, 4, 6, 6), (2, 5, 5, 7), (4, 3, 1, 1)] {
            let t = Tiling::new(c_in, c_out, h, w);
            let images = 2;
            let x = values(images * c_in * h * w, 4);
            let dy = values(images * c_out * h * w, 5);
            let du = transformed_weight_grad(&t, &x, &dy, images, gemm::Parallelism::None);
            let dw = weight_grad(&t, &du);
            for co in 0..c_out {
                for ci in 0..c_in {
                    for kh in 0..3 {
                        for kw in 0..3 {
                            let mut sum = 0f64;
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
                                    }
                                }
                            }
                            let got = dw[((co * c_in + ci) * 3 + kh) * 3 + kw];
                            assert!(
                                (got as f64 - sum).abs() < 1e-4,
                                "{co} {ci} {kh} {kw}: {got} vs {sum}"
                            );
                        }
                    }
                }
            }
        }
    }
}
