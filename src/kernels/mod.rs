//! CPU kernels that replace slower ones of Burn's flex backend, written as Burn backend
//! extensions with their own backward pass. Each is tested against Burn's own result and
//! used only on the CPU backend; other backends keep Burn's operation.

pub mod batch_norm;
pub mod conv;
pub mod max_pool;
mod scratch;
mod winograd;

pub use batch_norm::batch_norm_train_relu;
pub use conv::{conv2d, conv2d_relu};
pub use max_pool::max_pool2d;

/// Evaluates `$body` compiled for AVX-512 where the CPU has it, else as it is. The crate
/// is built for the baseline x86-64, whose vectors are a quarter as wide; the body (and
/// what it inlines) is compiled a second time with the wider registers. It is written out
/// twice, not passed as one closure, because a closure called from both branches is not
/// inlined into the AVX-512 one. Results should not change, by construction: Rust never
/// fuses a multiply and an add on its own, and the kernels fix the order of their sums.
macro_rules! vectorized {
    ($body:expr) => {
        if $crate::kernels::has_avx512() {
            // SAFETY: the CPU has AVX-512F, the only feature `with_avx512` is compiled for.
            unsafe { $crate::kernels::with_avx512(|| $body) }
        } else {
            $body
        }
    };
}
pub(crate) use vectorized;

/// Whether the CPU has AVX-512F (detected once, then a cached flag).
#[inline(always)]
pub(crate) fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx512f");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Calls `f` from a function compiled for AVX-512F, into which `f` is inlined.
///
/// # Safety
/// The CPU must have AVX-512F ([`has_avx512`]).
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx512f"))]
pub(crate) unsafe fn with_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

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

/// Two sums of [`fixed_order_sum`]'s kind in one pass over the slices: `value` gives both
/// terms of each element.
#[inline(always)]
fn fixed_order_sum_pair(
    a: &[f32],
    b: &[f32],
    value: impl Fn(f32, f32) -> (f32, f32),
) -> (f64, f64) {
    assert_eq!(a.len(), b.len());
    let (mut first, mut second) = ([0f32; 16], [0f32; 16]);
    let (a_blocks, b_blocks) = (a.chunks_exact(16), b.chunks_exact(16));
    let (a_rest, b_rest) = (a_blocks.remainder(), b_blocks.remainder());
    for (a, b) in a_blocks.zip(b_blocks) {
        for lane in 0..16 {
            let (u, v) = value(a[lane], b[lane]);
            first[lane] += u;
            second[lane] += v;
        }
    }
    for (lane, (&a, &b)) in a_rest.iter().zip(b_rest).enumerate() {
        let (u, v) = value(a, b);
        first[lane] += u;
        second[lane] += v;
    }
    let total = |lanes: [f32; 16]| lanes.iter().map(|&l| l as f64).sum();
    (total(first), total(second))
}

/// `dst.copy_from_slice(src)` without a call into libc for short rows: a kernel row is 3
/// values and a deep layer's image row 2 to 16, where the call costs more than the copy.
#[inline(always)]
pub(crate) fn copy_row(dst: &mut [f32], src: &[f32]) {
    fn fixed<const N: usize>(dst: &mut [f32], src: &[f32]) {
        let values: [f32; N] = src[..N].try_into().expect("N values");
        dst[..N].copy_from_slice(&values);
    }
    let n = dst.len();
    if n > 16 {
        dst.copy_from_slice(&src[..n]);
        return;
    }
    let (mut d, mut s) = (dst, &src[..n]);
    while d.len() >= 8 {
        fixed::<8>(d, s);
        (d, s) = (&mut d[8..], &s[8..]);
    }
    match d.len() {
        0 => {}
        1 => fixed::<1>(d, s),
        2 => fixed::<2>(d, s),
        3 => fixed::<3>(d, s),
        4 => fixed::<4>(d, s),
        5 => fixed::<5>(d, s),
        6 => fixed::<6>(d, s),
        _ => fixed::<7>(d, s),
    }
}

/// `dst (m x n, row-major) = (accumulate ? dst : 0) + lhs * rhs` with explicit strides.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    accumulate: bool,
    lhs: &[f32],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[f32],
    (rhs_rs, rhs_cs): (usize, usize),
    parallelism: gemm::Parallelism,
) {
    assert!(dst.len() >= m * n);
    assert!(m == 0 || k == 0 || (m - 1) * lhs_rs + (k - 1) * lhs_cs < lhs.len());
    assert!(n == 0 || k == 0 || (k - 1) * rhs_rs + (n - 1) * rhs_cs < rhs.len());
    // SAFETY: the asserts above keep every index gemm forms inside the three slices, and
    // `dst` does not alias the inputs (it is a distinct `&mut`).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}
