//! The libtorch this binary runs with: the one it was built against, or an error
//! that says how to get it; and what the engine calls in it that the tch crate does
//! not bind, through the engine's C++ shim (`shim.cpp`): autocast's type, TF32,
//! PyTorch's fused optimiser kernels and the global gradient norm.

use anyhow::{Result, bail};
use std::ffi::{CStr, c_char, c_void};
use std::path::{Path, PathBuf};
use tch::Tensor;

/// The libtorch version and folder this binary was built against.
const BUILT_VERSION: &str = env!("ADANOISE_LIBTORCH_VERSION");
const BUILT_LIB: &str = env!("ADANOISE_LIBTORCH_LIB");

/// The folder of the `libtorch_cpu.so` this process loaded.
fn loaded_lib() -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.ends_with("/libtorch_cpu.so"))
        .and_then(|p| Path::new(p).parent().map(Path::to_path_buf))
}

fn version_of(lib: &Path) -> Option<String> {
    let text = std::fs::read_to_string(lib.parent()?.join("version.py")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("__version__ = "))
        .map(|v| v.trim().trim_matches('\'').trim_matches('"').to_string())
}

/// Refuses a libtorch of another version than the build's: its C++ symbols may match and
/// its behaviour not.
pub fn check_version() -> Result<()> {
    let (Some(lib), false) = (loaded_lib(), BUILT_VERSION.is_empty()) else {
        return Ok(());
    };
    match version_of(&lib) {
        Some(loaded) if loaded != BUILT_VERSION => bail!(
            "this adanoise was built against libtorch {BUILT_VERSION} ({BUILT_LIB}) but loaded libtorch {loaded} from {}: run it with LD_LIBRARY_PATH={BUILT_LIB}, or rebuild it with LIBTORCH pointing at the other one",
            lib.display()
        ),
        _ => Ok(()),
    }
}

unsafe extern "C" {
    fn adanoise_last_error() -> *const c_char;
    fn adanoise_set_cuda_autocast_bf16(bf16: i32) -> i32;
    fn adanoise_set_pytorch_tf32_defaults() -> i32;
    fn adanoise_fused_sgd(
        params: *const *mut c_void,
        grads: *const *mut c_void,
        buffers: *const *mut c_void,
        n: i32,
        weight_decay: f64,
        momentum: f64,
        lr: f64,
        first_step: i32,
    ) -> i32;
    fn adanoise_fused_adam(
        params: *const *mut c_void,
        grads: *const *mut c_void,
        exp_avgs: *const *mut c_void,
        exp_avg_sqs: *const *mut c_void,
        steps: *const *mut c_void,
        n: i32,
        lr: f64,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
    ) -> i32;
    fn adanoise_global_norm(grads: *const *mut c_void, n: i32, out: *mut *mut c_void) -> i32;
}

/// `Ok`, or the shim's error for `what` when it returned non-zero.
fn checked(status: i32, what: &str) -> Result<()> {
    if status == 0 {
        return Ok(());
    }
    // SAFETY: the shim keeps the message alive until its next call on this thread.
    let message = unsafe { CStr::from_ptr(adanoise_last_error()) }.to_string_lossy();
    bail!("libtorch failed to {what}: {message}")
}

/// tch's handles of `tensors`, for the shim (which only copies them).
fn handles(tensors: &[Tensor]) -> Vec<*mut c_void> {
    tensors.iter().map(|t| t.as_ptr() as *mut c_void).collect()
}

/// Sets CUDA autocast's compute type: bf16, or f16.
pub fn set_autocast_bf16(bf16: bool) -> Result<()> {
    // SAFETY: a plain call into the shim, which catches libtorch's exceptions.
    checked(
        unsafe { adanoise_set_cuda_autocast_bf16(i32::from(bf16)) },
        "set autocast's compute type",
    )
}

/// Sets TF32 as PyTorch's defaults have it: on for cuDNN convolutions, off for matrix
/// products.
pub fn set_pytorch_tf32_defaults() -> Result<()> {
    // SAFETY: a plain call into the shim, which catches libtorch's exceptions.
    checked(
        unsafe { adanoise_set_pytorch_tf32_defaults() },
        "set TF32 as PyTorch's defaults",
    )
}

/// `torch.optim.SGD(fused=True)`'s step: L2 weight decay, and momentum without dampening
/// when `momentum` is not 0 (`buffers`, set to the gradient on the first step).
pub fn fused_sgd(
    params: &[Tensor],
    grads: &[Tensor],
    buffers: &[Tensor],
    weight_decay: f64,
    momentum: f64,
    lr: f64,
    first_step: bool,
) -> Result<()> {
    let (p, g, b) = (handles(params), handles(grads), handles(buffers));
    // SAFETY: the arrays hold `params.len()` live tensors each (or, without momentum, the
    // buffers are not read), which outlive the call.
    checked(
        unsafe {
            adanoise_fused_sgd(
                p.as_ptr(),
                g.as_ptr(),
                b.as_ptr(),
                p.len() as i32,
                weight_decay,
                momentum,
                lr,
                i32::from(first_step),
            )
        },
        "take an SGD step",
    )
}

/// `torch.optim.Adam(fused=True)`'s step, advancing each parameter's `steps`.
#[allow(clippy::too_many_arguments)]
pub fn fused_adam(
    params: &[Tensor],
    grads: &[Tensor],
    exp_avgs: &[Tensor],
    exp_avg_sqs: &[Tensor],
    steps: &[Tensor],
    lr: f64,
    betas: (f64, f64),
    weight_decay: f64,
    eps: f64,
) -> Result<()> {
    let (p, g) = (handles(params), handles(grads));
    let (m, v, s) = (handles(exp_avgs), handles(exp_avg_sqs), handles(steps));
    // SAFETY: each array holds `params.len()` live tensors, which outlive the call.
    checked(
        unsafe {
            adanoise_fused_adam(
                p.as_ptr(),
                g.as_ptr(),
                m.as_ptr(),
                v.as_ptr(),
                s.as_ptr(),
                p.len() as i32,
                lr,
                betas.0,
                betas.1,
                weight_decay,
                eps,
            )
        },
        "take an Adam step",
    )
}

/// The global L2 norm of `grads` (the norm of their norms), on their device.
pub fn global_norm(grads: &[Tensor]) -> Result<Tensor> {
    let g = handles(grads);
    let mut out: *mut c_void = std::ptr::null_mut();
    // SAFETY: `g` holds live tensors; on success `out` is a new tensor handle, which tch
    // takes ownership of.
    unsafe {
        checked(
            adanoise_global_norm(g.as_ptr(), g.len() as i32, &mut out),
            "take the gradient norm",
        )?;
        Ok(Tensor::from_ptr(out.cast()))
    }
}
