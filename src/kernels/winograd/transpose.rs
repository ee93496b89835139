//! Matrix transposes in 8x8 blocks (AVX registers where the CPU has them).

/// `dst [cols, rows]`, the transpose of `src [rows, cols]` (both row-major), in 8x8
/// blocks: with AVX, each block is eight vector loads, a register transpose and eight
/// vector stores; the ragged edges, and CPUs without AVX, go element by element.
pub(super) fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
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
pub(super) fn transpose_scalar(
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
pub(super) unsafe fn transpose_8x8(
    src: *const f32,
    src_stride: usize,
    dst: *mut f32,
    dst_stride: usize,
) {
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
