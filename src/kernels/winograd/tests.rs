//! The Winograd paths against direct sums.

use super::products::*;
use super::tiling::*;
use super::transforms::*;
use super::transpose::*;

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
