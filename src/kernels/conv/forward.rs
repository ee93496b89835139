//! The convolution's forward pass: `y_c = W * col(x_c)` per chunk of images (or
//! Winograd's transform), with the bias and ReLU applied as the result is written.

use super::geometry::Geometry;
use super::gradients::per_chunk;
use super::lowering::im2col;
use crate::kernels::scratch::scratch;
use crate::kernels::{copy_row, matmul, winograd};

/// The convolution `[n, c_out, oh, ow]`: per chunk of images, `W * col(x_c)`, written back
/// image by image, adding `bias` and clamping at zero when given one.
pub(super) fn forward(
    g: &Geometry,
    x: &[f32],
    weight: &[f32],
    bias_relu: Option<&[f32]>,
) -> Vec<f32> {
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
