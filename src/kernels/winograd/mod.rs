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
//!
//! - `algorithms`: the 1-D transforms of F(2, 3) and F(4, 3);
//! - `tiling`: the tiles of a convolution and the choices they imply;
//! - `transforms`: the tile transforms, channels-last;
//! - `products`: the matrix products per tile position;
//! - `transpose`: blocked transposes.

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
pub(super) const LANES: usize = 16;

/// Calls `$body` for each block of channels `$first..$first + $l` of `$channels`, with
/// `$l` a constant: [`LANES`], then one block of 8, then single channels.
macro_rules! by_channel_blocks {
    ($channels:expr, |$first:ident, $l:ident| $body:expr) => {{
        let channels = $channels;
        let mut $first = 0;
        {
            const $l: usize = $crate::kernels::winograd::LANES;
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

mod algorithms;
mod products;
#[cfg(test)]
mod tests;
mod tiling;
mod transforms;
mod transpose;

pub(super) use products::{convolve, transformed_weight_grad, weight_grad};
pub(super) use tiling::Tiling;
pub(super) use transforms::transform_weights;
