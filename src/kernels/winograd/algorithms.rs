//! The one-dimensional transforms of Winograd's minimal filtering algorithms
//! F(2, 3) and F(4, 3).

/// The one-dimensional transforms of a minimal filtering algorithm F(M, 3), which gives
/// `M` outputs of a 3-tap filter from `T = M + 2` inputs; the two-dimensional algorithm
/// applies them down columns and then along rows.
pub(super) trait Minimal<const M: usize, const T: usize> {
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
pub(super) struct F2;

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
pub(super) struct F4;

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
