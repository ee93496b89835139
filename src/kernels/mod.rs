//! CPU kernels that replace slower ones of Burn's flex backend, written as Burn backend
//! extensions with their own backward pass. Each is tested against Burn's own result and
//! used only on the CPU backend; other backends keep Burn's operation.

pub mod batch_norm;
pub mod conv;
pub mod max_pool;

pub use batch_norm::batch_norm_train_relu;
pub use conv::{conv2d, conv2d_relu};
pub use max_pool::max_pool_2x2;

/// The sum of `value(a[i], b[i])` over the two equally long slices, in a fixed order (16
/// interleaved lanes, which vectorise, then the lanes in turn, in `f64`), so that a kernel's
/// sums do not depend on how rayon splits its work.
#[inline(always)]
fn fixed_order_sum(a: &[f32], b: &[f32], value: impl Fn(f32, f32) -> f32) -> f64 {
    assert_eq!(a.len(), b.len());
    let mut lanes = [0f32; 16];
    let (a_blocks, b_blocks) = (a.chunks_exact(16), b.chunks_exact(16));
    let (a_rest, b_rest) = (a_blocks.remainder(), b_blocks.remainder());
    for (a, b) in a_blocks.zip(b_blocks) {
        for ((sum, &a), &b) in lanes.iter_mut().zip(a).zip(b) {
            *sum += value(a, b);
        }
    }
    for ((sum, &a), &b) in lanes.iter_mut().zip(a_rest).zip(b_rest) {
        *sum += value(a, b);
    }
    lanes.iter().map(|&l| l as f64).sum()
}
