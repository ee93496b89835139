//! Which Burn backend runs the tensors. Burn 0.22 dispatches through the
//! `Device` at run time, so the rest of the code never names a backend: only
//! this file knows which backends were compiled in.

use anyhow::{Result, bail};
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use std::sync::Mutex;

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

    /// The plain (non-autodiff) device; an error when the backend was not compiled in.
    pub fn device(self) -> Result<Device> {
        let device = match self {
            Self::Cpu => Some(Device::flex()),
            #[cfg(feature = "wgpu")]
            Self::Wgpu => Some(burn::backend::wgpu::WgpuDevice::default().into()),
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
            // burn-tch is deprecated upstream in favour of CubeCL's backends; it stays here as
            // the route to cuDNN, against which the CubeCL ones are measured.
            #[cfg(feature = "tch")]
            #[allow(deprecated)]
            Self::Libtorch => {
                libtorch::check_version()?;
                Some(burn::backend::libtorch::LibTorchDevice::Cuda(0).into())
            }
            #[cfg(feature = "tch")]
            #[allow(deprecated)]
            Self::LibtorchCpu => {
                libtorch::check_version()?;
                Some(burn::backend::libtorch::LibTorchDevice::Cpu.into())
            }
            #[allow(unreachable_patterns)]
            _ => None,
        };
        match device {
            Some(device) if self == Self::Cpu => Ok(device),
            Some(device) => {
                probe(self, &device)?;
                Ok(device)
            }
            None => bail!(
                "this adanoise was built without the {name} backend (built with: {have}); rebuild with `cargo build --release --features {name}`",
                name = self.name(),
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
                DeviceKind::LibtorchCpu => "LibTorch could not compute on the CPU: check the libtorch the binary loads (`ldd $(which adanoise)`, LD_LIBRARY_PATH)",
                DeviceKind::Libtorch => "LibTorch sees no CUDA GPU: check that an NVIDIA GPU and its driver are present (`nvidia-smi`) and that the libtorch in use is a CUDA build (PyTorch's default Linux wheel is), or train on the CPU with --device libtorch-cpu",
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

/// The libtorch a `tch` build runs with: the one it was built against, or an error that
/// says how to get it.
#[cfg(feature = "tch")]
mod libtorch {
    use anyhow::{Result, bail};
    use std::path::{Path, PathBuf};

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

    /// Refuses a libtorch of another version than the build's: its C++ symbols may match
    /// and its behaviour not.
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
