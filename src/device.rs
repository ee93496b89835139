//! Which backend runs the tensors, and Burn's devices. Burn 0.22 dispatches
//! through the `Device` at run time, so the rest of the code never names a Burn
//! backend: only this file knows which were compiled in. The LibTorch backends
//! belong to the LibTorch engine (`crate::engine`).

use anyhow::{Result, bail};
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use std::sync::Mutex;

#[cfg(feature = "wgpu")]
pub mod wgpu_adapter;

/// Which backend runs a run's tensors.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Default,
    Serialize,
    Deserialize,
    clap::ValueEnum,
    strum::Display,
    strum::IntoStaticStr,
)]
#[serde(rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case")]
pub enum DeviceKind {
    /// Burn's `flex` CPU backend (SIMD, rayon threads).
    #[default]
    Cpu,
    /// WGSL compute through wgpu (Vulkan, Metal or DX12); needs `--features wgpu`.
    Wgpu,
    /// CubeCL's own SPIR-V on Vulkan; needs `--features vulkan`.
    Vulkan,
    /// NVIDIA CUDA through CubeCL (TF32/bf16 tensor cores); needs `--features cuda`.
    Cuda,
    /// LibTorch (cuDNN) on the first CUDA GPU; needs `--features tch`.
    Libtorch,
    /// LibTorch on the CPU; needs `--features tch`.
    LibtorchCpu,
}

impl DeviceKind {
    /// The name used on the command line and in configs.
    pub fn name(self) -> &'static str {
        self.into()
    }

    /// The backends this binary was built with.
    pub fn compiled_in() -> Vec<DeviceKind> {
        let mut kinds = vec![Self::Cpu];
        if cfg!(feature = "wgpu") {
            kinds.push(Self::Wgpu);
        }
        if cfg!(feature = "vulkan") {
            kinds.push(Self::Vulkan);
        }
        if cfg!(feature = "cuda") {
            kinds.push(Self::Cuda);
        }
        if cfg!(feature = "tch") {
            kinds.extend([Self::Libtorch, Self::LibtorchCpu]);
        }
        kinds
    }

    /// Whether the backend is LibTorch.
    pub fn is_libtorch(self) -> bool {
        matches!(self, Self::Libtorch | Self::LibtorchCpu)
    }

    /// The cargo feature that builds this backend in.
    pub fn feature(self) -> &'static str {
        if self.is_libtorch() {
            "tch"
        } else {
            self.name()
        }
    }

    /// The plain (non-autodiff) device; an error when the backend was not compiled in.
    pub fn device(self) -> Result<Device> {
        let device = match self {
            Self::Cpu => Some(Device::flex()),
            #[cfg(feature = "wgpu")]
            Self::Wgpu => {
                wgpu_adapter::check_not_software()?;
                Some(burn::backend::wgpu::WgpuDevice::default().into())
            }
            #[cfg(feature = "vulkan")]
            Self::Vulkan => Some(Device::vulkan(Default::default())),
            #[cfg(feature = "cuda")]
            Self::Cuda => {
                // CubeCL loads the driver on a runtime thread, and a missing one surfaces
                // there as an unrelated channel error: the loader's own answer names it.
                if let Some(why) = library_load_error("libcuda.so.1") {
                    bail!(
                        "no usable cuda device was found: the NVIDIA driver could not be loaded ({why}); check that an NVIDIA GPU and its driver are present (`nvidia-smi`), or train with --device cpu"
                    );
                }
                Some(Device::cuda(0))
            }
            // The LibTorch devices are the LibTorch engine's (`crate::engine`), not Burn's.
            #[allow(unreachable_patterns)]
            _ => None,
        };
        match device {
            Some(device) if self == Self::Cpu => Ok(device),
            Some(device) => {
                probe(self, &device)?;
                Ok(device)
            }
            None if self.is_libtorch() && cfg!(feature = "tch") => bail!(
                "--device {} runs on the LibTorch engine, which has no Burn device",
                self.name()
            ),
            None => bail!(
                "this adanoise was built without the {name} backend (built with: {have}); rebuild with `cargo build --release --features {feature}`",
                name = self.name(),
                feature = self.feature(),
                have = Self::compiled_in()
                    .iter()
                    .map(|k| k.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

/// Runs one tiny computation on a GPU device, so that a missing adapter or driver is an
/// error that says what to install rather than a panic deep inside the first training step.
fn probe(kind: DeviceKind, device: &Device) -> Result<()> {
    static PROBED: Mutex<Vec<(DeviceKind, Result<(), String>)>> = Mutex::new(Vec::new());
    let mut probed = PROBED.lock().unwrap_or_else(|e| e.into_inner());
    let outcome = match probed.iter().find(|(k, _)| *k == kind) {
        Some((_, outcome)) => outcome.clone(),
        None => {
            let device = device.clone();
            let outcome = match catch_quietly(move || {
                Tensor::<1>::from_data(TensorData::new(vec![1f32, 2.0], [2]), &device)
                    .sum()
                    .into_scalar::<f32>()
            }) {
                Ok(3.0) => Ok(()),
                Ok(v) => Err(format!("a test sum gave {v} instead of 3")),
                Err(message) => Err(message),
            };
            probed.push((kind, outcome.clone()));
            outcome
        }
    };
    outcome.map_err(|why| {
        // Backends' panics can carry whole C++ backtraces: their first line says it.
        // (Debug-printed errors hold them as escaped `\n`s.)
        let first_line = why.split('\n').next().unwrap_or_default();
        let why = first_line.split("\\n").next().unwrap_or_default();
        anyhow::anyhow!(
            "no usable {kind} device was found ({why}); {}",
            match kind {
                DeviceKind::Cuda => "check that an NVIDIA GPU and its driver are present (`nvidia-smi`)",
                _ => "install a Vulkan driver for the GPU (on Debian without a GPU, Mesa's software one: `apt-get install mesa-vulkan-drivers`, and set XDG_RUNTIME_DIR), or train with --device cpu",
            }
        )
    })
}

/// Runs `f`, turning a panic into its message without printing it: backends report a
/// missing device or an unsupported type by panicking, and adanoise wants to say something
/// more useful (or fall back) instead.
pub fn catch_quietly<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    static HOOK: Mutex<()> = Mutex::new(());
    let _one_at_a_time = HOOK.lock().unwrap_or_else(|e| e.into_inner());
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    result.map_err(|payload| {
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "the backend panicked".into())
    })
}

/// Why the dynamic loader cannot load the shared library `name`, or `None` when it can.
#[cfg(any(feature = "cuda", test))]
fn library_load_error(name: &str) -> Option<String> {
    let c_name = std::ffi::CString::new(name).ok()?;
    // SAFETY: a valid C string to dlopen; the handle is closed at once, and the error string
    // is copied before any other loader call.
    unsafe {
        let handle = libc::dlopen(c_name.as_ptr(), libc::RTLD_LAZY | libc::RTLD_LOCAL);
        if handle.is_null() {
            let error = libc::dlerror();
            return Some(if error.is_null() {
                format!("{name} could not be loaded")
            } else {
                std::ffi::CStr::from_ptr(error)
                    .to_string_lossy()
                    .into_owned()
            });
        }
        libc::dlclose(handle);
    }
    None
}

/// Sets the number of CPU threads of the rayon pool the CPU backend computes on.
/// Only the first call in a process takes effect.
pub fn set_cpu_threads(threads: Option<usize>) {
    if let Some(n) = threads.filter(|&n| n > 0) {
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loader_names_a_missing_library_and_loads_a_present_one() {
        let why = library_load_error("libadanoise-no-such-library.so.1").unwrap();
        assert!(why.contains("libadanoise-no-such-library.so.1"), "{why}");
        assert_eq!(library_load_error("libc.so.6"), None);
    }
}
