//! The sizes of one convolution and what follows from them: output plane, which
//! outputs each kernel tap reaches, the chunking of a batch into matrix products,
//! and whether the Winograd path and the by-tap weight gradient apply.

use crate::kernels::winograd;

/// Chunks a batch is split into at least, so that the copies around each product run on
/// every thread even where one chunk's product alone would be wide enough (deep layers).
/// A constant, not the thread count, so the sums' order does not depend on the machine.
pub(super) const MIN_CHUNKS: usize = 4;

/// The fewest input channels for Winograd's transform. With fewer (the first convolution
/// of every model, on RGB images), each of its matrix products has an inner dimension of 3,
/// and im2col's one product with 27 is faster: baby-cnn +17 %, tiny-cnn +22 %, ResNet-18
/// the same (3 paired rounds of `adanoise bench`).
pub(super) const WINOGRAD_MIN_CHANNELS: usize = 8;

/// The smallest output plane whose weight gradient goes through Winograd's transform. On
/// 2x2 planes (one tile per image) the sixteen products, each a short sum into a large
/// `c_out x c_in` result, are slower than the one im2row product; on 4x4 planes they are
/// faster (ResNet-18's 256-channel layer: 29.5 against 35.5 ms for forward and both
/// gradients of a batch of 128, medians of 3).
pub(super) const WINOGRAD_WEIGHT_GRAD_PLANE: usize = 16;

/// Sizes of one convolution.
#[derive(Debug, Clone, Copy)]
pub(super) struct Geometry {
    pub(super) n: usize,
    pub(super) c_in: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) c_out: usize,
    pub(super) k: usize,
    pub(super) stride: usize,
    pub(super) padding: usize,
    pub(super) oh: usize,
    pub(super) ow: usize,
}

impl Geometry {
    pub(super) fn new(x: &[usize], weight: &[usize], stride: usize, padding: usize) -> Self {
        let (h, w, k) = (x[2], x[3], weight[2]);
        Self {
            n: x[0],
            c_in: x[1],
            h,
            w,
            c_out: weight[0],
            k,
            stride,
            padding,
            oh: (h + 2 * padding - k) / stride + 1,
            ow: (w + 2 * padding - k) / stride + 1,
        }
    }

    /// Rows of the im2col matrix: one per input channel and kernel position.
    pub(super) fn patch(&self) -> usize {
        self.c_in * self.k * self.k
    }

    pub(super) fn out_plane(&self) -> usize {
        self.oh * self.ow
    }

    /// The output columns `lo..hi` whose input column `ow * stride + kw - padding` lies
    /// inside the image (the others read the zero padding).
    pub(super) fn inside_columns(&self, kw: usize) -> (usize, usize) {
        self.inside(kw, self.w, self.ow)
    }

    /// [`Geometry::inside_columns`] for rows.
    pub(super) fn inside_rows(&self, kh: usize) -> (usize, usize) {
        self.inside(kh, self.h, self.oh)
    }

    pub(super) fn inside(&self, tap: usize, extent: usize, out_extent: usize) -> (usize, usize) {
        let lo = self.padding.saturating_sub(tap).div_ceil(self.stride);
        let hi = if extent + self.padding > tap {
            ((extent + self.padding - tap - 1) / self.stride + 1).min(out_extent)
        } else {
            0
        };
        (lo.min(hi), hi)
    }

    /// Whether less than half of the im2row matrix of the weight gradient lies inside the
    /// image (ResNet-18's 2x2 planes: 16 of 36 entries per output), so that one product per
    /// kernel tap, over only the outputs that tap reaches, does less than half the work.
    pub(super) fn weight_grad_by_tap(&self) -> bool {
        let reached = |(lo, hi): (usize, usize)| hi - lo;
        let rows: usize = (0..self.k).map(|kh| reached(self.inside_rows(kh))).sum();
        let columns: usize = (0..self.k).map(|kw| reached(self.inside_columns(kw))).sum();
        2 * rows * columns < self.k * self.k * self.out_plane()
    }

    /// The Winograd tiling of a 3x3, stride 1, padding 1 convolution; `None` for others.
    pub(super) fn winograd(&self) -> Option<winograd::Tiling> {
        (self.k == 3 && self.stride == 1 && self.padding == 1 && self.c_in >= WINOGRAD_MIN_CHANNELS)
            .then(|| winograd::Tiling::new(self.c_in, self.c_out, self.h, self.w))
    }

    /// Images per matrix product: enough for a wide product. It does not depend on the
    /// number of threads, so neither do the results (see [`weight_grad`]).
    pub(super) fn chunk(&self) -> usize {
        let wide = 4096usize.div_ceil(self.out_plane());
        wide.min(self.n.div_ceil(MIN_CHUNKS)).max(1)
    }
}
