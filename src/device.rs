//! Which Burn backend runs the tensors. Burn 0.22 dispatches through the
//! `Device` at run time, so the rest of the code never names a backend: only
//! this file knows which backends were compiled in.

use anyhow::{Result, bail};
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceKind {
    /// Burn's `flex` CPU backend (SIMD, rayon threads).
    #[default]
    Cpu,
    /// WGSL compute through wgpu (Vulkan, Metal or DX12); needs `--features wgpu`.
    Wgpu,
    /// CubeCL's own SPIR-V on Vulkan; needs `--features vulkan`.
    Vulkan,
    /// NVIDIA CUDA; needs `--features cuda`.
    Cuda,
}

impl DeviceKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Wgpu => "wgpu",
            Self::Vulkan => "vulkan",
            Self::Cuda => "cuda",
        }
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
        kinds
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
            Self::Cuda => Some(Device::cuda(0)),
            #[allow(unreachable_patterns)]
            _ => None,
        };
        match device {
            Some(device) => Ok(device),
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

impl std::fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
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
