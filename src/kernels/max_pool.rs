//! Square max pooling (the plain CNNs' `MaxPool2d(2)` and ResNet-18's 3x3/2 stem pool
//! with padding 1) on the CPU, with its own backward. Burn's flex backend pools through a
//! general 3-D kernel that stores an `i64` index per output and scatters through it; this
//! one keeps a one-byte window position per output and adds each output's gradient back
//! plane by plane (in a fixed order, where windows overlap). It picks the same element as
//! PyTorch: the first maximum in the window, or the last NaN; padding is never picked.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, backend_extension};
use burn::tensor::ops::MaxPoolOptions;
use burn::tensor::{DType, Device, Shape, Tensor, TensorData};
use rayon::prelude::*;
use std::sync::Arc;

/// Square max pooling as a backend operation.
#[backend_extension(Flex, Autodiff)]
pub trait MaxPoolKernel: Backend {
    /// `[n, c, h, w]` pooled over `kernel x kernel` windows `stride` apart, with `padding`
    /// rows and columns of the (never chosen) padding on each side, floor mode.
    fn max_pool_square(
        x: FloatTensor<Self>,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> FloatTensor<Self>;
}

/// Sizes of one pooling.
#[derive(Debug, Clone, Copy)]
struct Window {
    kernel: usize,
    stride: usize,
    padding: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
}

impl Window {
    fn new(h: usize, w: usize, kernel: usize, stride: usize, padding: usize) -> Self {
        Self {
            kernel,
            stride,
            padding,
            h,
            w,
            oh: (h + 2 * padding - kernel) / stride + 1,
            ow: (w + 2 * padding - kernel) / stride + 1,
        }
    }

    /// ResNet-18's stem pooling on planes of even sides, which has its own loops.
    fn is_3x3_stride_2(&self) -> bool {
        self.kernel == 3
            && self.stride == 2
            && self.padding == 1
            && self.h.is_multiple_of(2)
            && self.w.is_multiple_of(2)
    }

    /// The plain CNNs' pooling, which has its own vectorised loop.
    fn is_2x2(&self) -> bool {
        self.kernel == 2 && self.stride == 2 && self.padding == 0
    }

    /// Input rows (or columns, for `extent = w`) `lo..hi` that output row `i` reads, and
    /// the window position of `lo`.
    fn span(&self, i: usize, extent: usize) -> (usize, usize, usize) {
        let start = (i * self.stride) as isize - self.padding as isize;
        let lo = start.max(0) as usize;
        let hi = ((start + self.kernel as isize) as usize).min(extent);
        (lo, hi, (lo as isize - start) as usize)
    }

    /// Input position `(row, column)` of window position `at` of output `(i, j)`.
    fn source(&self, i: usize, j: usize, at: usize) -> (usize, usize) {
        (
            i * self.stride + at / self.kernel - self.padding,
            j * self.stride + at % self.kernel - self.padding,
        )
    }
}

/// Whether `later` replaces `earlier` as a window's maximum, scanning in order.
#[inline(always)]
fn later_wins(earlier: f32, later: f32) -> bool {
    later > earlier || later.is_nan()
}

/// `(value, at)` after offering `(later, later_at)` to the running maximum.
#[inline(always)]
fn offer((value, at): (f32, u8), later: f32, later_at: u8) -> (f32, u8) {
    let take = later_wins(value, later);
    (
        if take { later } else { value },
        if take { later_at } else { at },
    )
}

/// Per input row and window column of [`pool_plane_3x3_stride_2`]: the maximum of the
/// window's three columns in that row, and its column in the window (separate arrays, so
/// that the loops vectorise). Allocated once per rayon task, not per plane.
type RowMaxima = (Vec<f32>, Vec<u8>);

/// The 3x3 windows, two apart with one row and column of padding, of a plane of even
/// sides (ResNet-18's stem): each input row's three-column maxima first, then each
/// window's three rows in order, which picks what scanning the window would, as in
/// [`pool_plane_2x2`]. The padding (row and column -1) is left out of the first windows,
/// which then start on their first element inside the image, as [`pool_plane`] does.
fn pool_plane_3x3_stride_2(
    win: &Window,
    src: &[f32],
    out: &mut [f32],
    arg: &mut [u8],
    (row_best, row_at): &mut RowMaxima,
) {
    let (w, ow) = (win.w, win.ow);
    row_best.resize(win.h * ow, 0.0);
    row_at.resize(win.h * ow, 0);
    for ((row, best), at) in src
        .chunks_exact(w)
        .zip(row_best.chunks_exact_mut(ow))
        .zip(row_at.chunks_exact_mut(ow))
    {
        (best[0], at[0]) = offer((row[0], 1), row[1], 2);
        for j in 1..ow {
            let three: &[f32; 3] = row[2 * j - 1..][..3].try_into().expect("3 values");
            (best[j], at[j]) = offer(offer((three[0], 0), three[1], 1), three[2], 2);
        }
    }
    for i in 0..win.oh {
        let (out, arg) = (&mut out[i * ow..][..ow], &mut arg[i * ow..][..ow]);
        // Window row 0 of output row 0 is padding.
        let first_kh = if i == 0 { 1 } else { 0 };
        let row = |kh: usize| {
            let at = (2 * i + kh - 1) * ow;
            (&row_best[at..][..ow], &row_at[at..][..ow])
        };
        let (best, at) = row(first_kh);
        for j in 0..ow {
            (out[j], arg[j]) = (best[j], 3 * first_kh as u8 + at[j]);
        }
        for kh in first_kh + 1..3 {
            let (best, at) = row(kh);
            for j in 0..ow {
                (out[j], arg[j]) = offer((out[j], arg[j]), best[j], 3 * kh as u8 + at[j]);
            }
        }
    }
}

/// The 2x2 windows of one plane: each row's pairs first, then the two rows' winners, which
/// picks what the window scanned in order would (the rule "a later value wins if greater or
/// NaN" is associative); selects rather than branches, so the loop vectorises.
fn pool_plane_2x2(win: &Window, src: &[f32], out: &mut [f32], arg: &mut [u8]) {
    let (w, ow) = (win.w, win.ow);
    for i in 0..win.oh {
        let top = src[2 * i * w..][..2 * ow].chunks_exact(2);
        let bottom = src[(2 * i + 1) * w..][..2 * ow].chunks_exact(2);
        let (out, arg) = (&mut out[i * ow..][..ow], &mut arg[i * ow..][..ow]);
        for (((out, arg), top), bottom) in out.iter_mut().zip(arg.iter_mut()).zip(top).zip(bottom) {
            let right = later_wins(top[0], top[1]);
            let (upper, upper_at) = if right { (top[1], 1) } else { (top[0], 0) };
            let right = later_wins(bottom[0], bottom[1]);
            let (lower, lower_at) = if right {
                (bottom[1], 3)
            } else {
                (bottom[0], 2)
            };
            let take = later_wins(upper, lower);
            *out = if take { lower } else { upper };
            *arg = if take { lower_at } else { upper_at };
        }
    }
}

/// Any square window of one plane, the padding skipped: as PyTorch, the running maximum
/// starts at -inf on the window's first element inside the image.
fn pool_plane(win: &Window, src: &[f32], out: &mut [f32], arg: &mut [u8]) {
    for i in 0..win.oh {
        let (row_lo, row_hi, first_kh) = win.span(i, win.h);
        for j in 0..win.ow {
            let (col_lo, col_hi, first_kw) = win.span(j, win.w);
            let mut best = f32::NEG_INFINITY;
            let mut at = first_kh * win.kernel + first_kw;
            for (kh, row) in (first_kh..).zip(row_lo..row_hi) {
                let values = &src[row * win.w + col_lo..row * win.w + col_hi];
                for (kw, &v) in (first_kw..).zip(values) {
                    if v > best || v.is_nan() {
                        best = v;
                        at = kh * win.kernel + kw;
                    }
                }
            }
            out[i * win.ow + j] = best;
            arg[i * win.ow + j] = at as u8;
        }
    }
}

/// The pooled tensor and, per output, the position in its window it came from.
fn forward(x: FlexTensor, win: Window) -> (FlexTensor, Vec<u8>) {
    let x = x.to_contiguous();
    let dims = x.layout().shape().to_vec();
    let planes = dims[0] * dims[1];
    let input: &[f32] = x.storage();
    let out_plane = win.oh * win.ow;
    let mut output = vec![0f32; planes * out_plane];
    let mut argmax = vec![0u8; planes * out_plane];
    output
        .par_chunks_mut(out_plane)
        .zip(argmax.par_chunks_mut(out_plane))
        .enumerate()
        .for_each_init(RowMaxima::default, |rows, (plane, (out, arg))| {
            let src = &input[plane * win.h * win.w..][..win.h * win.w];
            if win.is_2x2() {
                pool_plane_2x2(&win, src, out, arg);
            } else if win.is_3x3_stride_2() {
                pool_plane_3x3_stride_2(&win, src, out, arg, rows);
            } else {
                pool_plane(&win, src, out, arg);
            }
        });
    let pooled = FlexTensor::from_data(TensorData::new(output, [dims[0], dims[1], win.oh, win.ow]));
    (pooled, argmax)
}

/// The input gradient: each output's gradient goes to the element it was taken from,
/// added in output order where windows overlap.
fn backward(grad: FlexTensor, argmax: &[u8], input_shape: &Shape, win: Window) -> FlexTensor {
    let grad = grad.to_contiguous();
    let dy: &[f32] = grad.storage();
    let out_plane = win.oh * win.ow;
    let mut dx = vec![0f32; input_shape.num_elements()];
    dx.par_chunks_mut(win.h * win.w)
        .enumerate()
        .for_each(|(plane, dst)| {
            let g = &dy[plane * out_plane..][..out_plane];
            let a = &argmax[plane * out_plane..][..out_plane];
            for i in 0..win.oh {
                for j in 0..win.ow {
                    let at = a[i * win.ow + j] as usize;
                    // The divisions by a constant, in the hot loops.
                    let (row, col) = if win.is_2x2() {
                        (2 * i + at / 2, 2 * j + at % 2)
                    } else if win.is_3x3_stride_2() {
                        (2 * i + at / 3 - 1, 2 * j + at % 3 - 1)
                    } else {
                        win.source(i, j, at)
                    };
                    dst[row * win.w + col] += g[i * win.ow + j];
                }
            }
        });
    FlexTensor::from_data(TensorData::new(dx, input_shape.clone()))
}

/// The window this kernel pools `x` with, or `None` for what it does not cover (Burn's
/// pooling then runs, with its own checks and messages).
fn window(x: &FlexTensor, kernel: usize, stride: usize, padding: usize) -> Option<Window> {
    let dims = x.layout().shape();
    let fits = x.dtype() == DType::F32
        && dims.num_dims() == 4
        && kernel >= 1
        && stride >= 1
        && kernel * kernel <= u8::MAX as usize + 1
        // PyTorch's own limit, which keeps every window at least one element inside.
        && padding <= kernel / 2
        && dims[2] + 2 * padding >= kernel
        && dims[3] + 2 * padding >= kernel;
    fits.then(|| Window::new(dims[2], dims[3], kernel, stride, padding))
}

/// Burn's own pooling on backend `B`: for what this kernel does not cover.
fn fallback<B: Backend>(
    x: FloatTensor<B>,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> FloatTensor<B> {
    B::max_pool2d(
        x,
        [kernel, kernel],
        [stride, stride],
        [padding, padding],
        [1, 1],
        false,
    )
}

impl MaxPoolKernel for Flex {
    fn max_pool_square(
        x: FloatTensor<Self>,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> FloatTensor<Self> {
        match window(&x, kernel, stride, padding) {
            Some(win) => forward(x, win).0,
            None => fallback::<Flex>(x, kernel, stride, padding),
        }
    }
}

#[derive(Debug)]
struct MaxPoolBackward;

impl Backward<Flex, 1> for MaxPoolBackward {
    type State = (Arc<Vec<u8>>, Shape, Window);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (argmax, shape, win) = ops.state;
        unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
            backward(grad, &argmax, &shape, win)
        });
    }
}

impl<C: CheckpointStrategy> MaxPoolKernel for Autodiff<Flex, C> {
    fn max_pool_square(
        x: FloatTensor<Self>,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> FloatTensor<Self> {
        let Some(win) = window(x.primitive(), kernel, stride, padding) else {
            return fallback::<Autodiff<Flex, C>>(x, kernel, stride, padding);
        };
        match MaxPoolBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let shape = x.primitive().layout().shape().clone();
                let (pooled, argmax) = forward(x.into_primitive(), win);
                prep.finish((Arc::new(argmax), shape, win), pooled)
            }
            OpsKind::UnTracked(prep) => prep.finish(forward(x.into_primitive(), win).0),
        }
    }
}

/// `MaxPool2d(kernel, stride, padding)`: this kernel on the CPU backend, Burn's pooling
/// elsewhere.
pub fn max_pool2d(x: Tensor<4>, kernel: usize, stride: usize, padding: usize) -> Tensor<4> {
    if x.device().inner() == Device::flex() {
        Tensor::from_dispatch(<Dispatch as MaxPoolKernel>::max_pool_square(
            x.into_dispatch(),
            kernel,
            stride,
            padding,
        ))
    } else {
        burn::tensor::module::max_pool2d(
            x,
            MaxPoolOptions::new([kernel, kernel])
                .with_stride([stride, stride])
                .with_padding([padding, padding]),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Tolerance;

    /// Forward and gradient equal Burn's pooling, ties included (first maximum wins), for
    /// the plain CNNs' 2x2 windows, the ResNet stem's overlapping padded 3x3/2 ones and
    /// others, on even and odd sizes.
    #[test]
    fn matches_burn_forward_and_gradient() {
        let device = Device::flex().autodiff();
        for (kernel, stride, padding) in [(2, 2, 0), (3, 2, 1), (3, 1, 1), (2, 1, 1), (3, 3, 0)] {
            for (h, w) in [(6, 8), (7, 5)] {
                // Small integers make ties frequent; negative ones make the padding matter.
                let values: Vec<f32> = (0..2 * 3 * h * w)
                    .map(|i| ((i * 7919) % 5) as f32 - 3.0)
                    .collect();
                let x = Tensor::<4>::from_data(TensorData::new(values, [2, 3, h, w]), &device);
                let options = MaxPoolOptions::new([kernel, kernel])
                    .with_stride([stride, stride])
                    .with_padding([padding, padding]);
                let out = burn::tensor::module::max_pool2d(x.clone(), options.clone()).dims();
                let count = out.iter().product::<usize>();
                let weights = Tensor::<4>::from_data(
                    TensorData::new((0..count).map(|i| (i % 11) as f32).collect(), out),
                    &device,
                );
                let run = |pool: &dyn Fn(Tensor<4>) -> Tensor<4>| {
                    let x = x.clone().require_grad();
                    let y = pool(x.clone());
                    let grads = (y.clone() * weights.clone()).sum().backward();
                    (y.inner().into_data(), x.grad(&grads).unwrap().into_data())
                };
                let (y, dx) = run(&|x| max_pool2d(x, kernel, stride, padding));
                let (y_ref, dx_ref) =
                    run(&|x| burn::tensor::module::max_pool2d(x, options.clone()));
                let case = format!("kernel {kernel} stride {stride} padding {padding} {h}x{w}");
                assert_eq!(y.shape(), y_ref.shape(), "{case}");
                y.assert_approx_eq::<f32>(&y_ref, Tolerance::absolute(0.0));
                dx.assert_approx_eq::<f32>(&dx_ref, Tolerance::absolute(1e-6));
            }
        }
    }

    /// A window of -inf still picks an element inside the image, never the padding, and its
    /// gradient lands there.
    /// The stem pooling's own loops pick the same value and window position as the
    /// general scan, on planes with ties, NaN and -inf.
    #[test]
    fn stem_pooling_matches_the_general_scan() {
        let palette = [
            0.5,
            -1.0,
            2.0,
            2.0,
            f32::NAN,
            f32::NEG_INFINITY,
            0.5,
            3.0,
            -2.0,
        ];
        for (h, w) in [(2, 2), (4, 6), (8, 8), (32, 32), (6, 2)] {
            let win = Window::new(h, w, 3, 2, 1);
            assert!(win.is_3x3_stride_2());
            for seed in 0..5u64 {
                // A hash of the position picks from the palette, so neighbours tie often.
                let src: Vec<f32> = (0..(h * w) as u64)
                    .map(|i| {
                        let hash = (i + 1).wrapping_mul(6364136223846793005) ^ ((seed + 1) << 40);
                        palette[(hash >> 33) as usize % palette.len()]
                    })
                    .collect();
                let len = win.oh * win.ow;
                let (mut out, mut arg) = (vec![0f32; len], vec![0u8; len]);
                let (mut want, mut want_arg) = (vec![0f32; len], vec![0u8; len]);
                pool_plane_3x3_stride_2(&win, &src, &mut out, &mut arg, &mut Default::default());
                pool_plane(&win, &src, &mut want, &mut want_arg);
                assert_eq!(arg, want_arg, "{h}x{w}, seed {seed}");
                for (a, b) in out.iter().zip(&want) {
                    assert!(
                        a.to_bits() == b.to_bits(),
                        "{h}x{w}, seed {seed}: {a} vs {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn all_negative_infinity_window_picks_inside_element() {
        let device = Device::flex().autodiff();
        let x = Tensor::<4>::full([1, 1, 3, 3], f32::NEG_INFINITY, &device).require_grad();
        let y = max_pool2d(x.clone(), 3, 2, 1);
        assert_eq!(y.dims(), [1, 1, 2, 2]);
        let grads = y.sum().backward();
        let dx: Vec<f32> = x.grad(&grads).unwrap().into_data().iter::<f32>().collect();
        assert_eq!(dx.iter().sum::<f32>(), 4.0);
        // Each window's first inside element: (0,0), (0,1), (1,0), (1,1).
        assert_eq!(dx, [1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn nan_propagates_and_unsupported_windows_fall_back() {
        let device = Device::flex();
        let x = Tensor::<4>::from_data(
            TensorData::new(vec![1.0, f32::NAN, 3.0, 2.0], [1, 1, 2, 2]),
            &device,
        );
        let y: Vec<f32> = max_pool2d(x.clone(), 2, 2, 0)
            .into_data()
            .iter::<f32>()
            .collect();
        assert!(y[0].is_nan());
        let y: Vec<f32> = max_pool2d(x, 3, 2, 1).into_data().iter::<f32>().collect();
        assert!(y[0].is_nan());
        let odd = Tensor::<4>::ones([1, 2, 5, 5], &device);
        let flex = FlexTensor::from_data(TensorData::new(vec![1f32; 50], [1, 2, 5, 5]));
        assert!(
            window(&flex, 3, 1, 2).is_none(),
            "padding over half the window"
        );
        assert!(window(&flex, 3, 1, 1).is_some());
        assert_eq!(max_pool2d(odd, 2, 2, 0).dims(), [1, 2, 2, 2]);
    }
}
