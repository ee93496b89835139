//! How a 3x3 convolution is cut into Winograd tiles, and which algorithm and
//! product layout it takes.

/// One 3x3, stride 1, padding 1 convolution of `c_in x h x w` images into `c_out` planes of
/// the same size, cut into `m x m` output tiles.
#[derive(Debug, Clone, Copy)]
pub(in crate::kernels) struct Tiling {
    pub c_in: usize,
    pub c_out: usize,
    pub h: usize,
    pub w: usize,
    /// Outputs per tile side: 4 or 2.
    pub(super) m: usize,
    pub(super) tiles_h: usize,
    pub(super) tiles_w: usize,
}

impl Tiling {
    /// F(4x4, 3x3) where the plane holds at least one whole 4x4 tile, else F(2x2, 3x3),
    /// which wastes less on 2x2 and 1x1 planes.
    pub fn new(c_in: usize, c_out: usize, h: usize, w: usize) -> Self {
        Self::with_tile(if h.min(w) >= 4 { 4 } else { 2 }, c_in, c_out, h, w)
    }

    /// The tiling for the weight gradient, always F(2x2, 3x3): F(4x4)'s transforms scale
    /// the output gradient by up to 8x8 and the input by up to 10x10 before the products,
    /// whose sum over every tile then cancels back down by about three orders of magnitude;
    /// the result measured up to 1e-3 relative error against the direct sum in f32, where
    /// F(2x2) stays within 1e-4 (forward and input gradient are not affected: their sums
    /// run over channels of one tile only).
    pub fn for_weight_grad(c_in: usize, c_out: usize, h: usize, w: usize) -> Self {
        Self::with_tile(2, c_in, c_out, h, w)
    }

    pub(super) fn with_tile(m: usize, c_in: usize, c_out: usize, h: usize, w: usize) -> Self {
        assert!(m == 2 || m == 4, "F({m}x{m}, 3x3) is not implemented");
        Self {
            c_in,
            c_out,
            h,
            w,
            m,
            tiles_h: h.div_ceil(m),
            tiles_w: w.div_ceil(m),
        }
    }

    pub(super) fn tiles(&self) -> usize {
        self.tiles_h * self.tiles_w
    }

    /// Positions in a transformed tile, hence matrix products per chunk.
    pub(super) fn positions(&self) -> usize {
        (self.m + 2) * (self.m + 2)
    }

    /// Whether the tile-position products run as `M_i = U_i * V_i` (`c_out x c_in` times
    /// `c_in x tiles`), with [`transform_weights`] laid out by output channel, rather than
    /// as `M_i^T = V_i^T * U_i^T`. Where a chunk has few tiles for its weights (one tile
    /// per image, and at least 256 output channels: ResNet-18's last two stages), the
    /// matrix product streams each `U_i` once this way, and runs about 1.5x as fast
    /// (512 channels); elsewhere the other way round is as fast or faster and needs no
    /// transposed copy of the products.
    pub fn weights_by_output_channel(&self) -> bool {
        self.tiles() * 256 <= self.c_out
    }

    /// The length of [`transform_weights`]' and [`transformed_weight_grad`]'s results.
    pub fn transformed_weights_len(&self) -> usize {
        self.positions() * self.c_out * self.c_in
    }
}
