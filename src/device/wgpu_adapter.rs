//! Which adapter the `wgpu` device lands on, asked before Burn sets it up: where the only
//! adapter is a CPU renderer (Mesa's llvmpipe through OpenGL, lavapipe through Vulkan,
//! SwiftShader), a "GPU" run is many times slower than `--device cpu`, so it is taken only
//! when asked for with [`ALLOW_SOFTWARE`].

use anyhow::{Result, bail};
use burn::backend::wgpu::wgpu;
use std::future::Future;
use std::task::{Context, Poll, Waker};

/// The environment variable that, set to 1, lets `--device wgpu` run on a CPU renderer.
pub const ALLOW_SOFTWARE: &str = "ADANOISE_WGPU_SOFTWARE";

/// The graphics APIs Burn's wgpu device tries, best first (as CubeCL settles them: the
/// first with a GPU adapter, or failing that the first with any adapter).
fn graphics_apis() -> &'static [wgpu::Backend] {
    if cfg!(target_os = "macos") {
        &[wgpu::Backend::Metal]
    } else {
        &[
            wgpu::Backend::Vulkan,
            wgpu::Backend::Dx12,
            wgpu::Backend::Gl,
        ]
    }
}

/// An adapter: what it is, and whether its shaders compute in f16.
#[derive(Debug, Clone)]
pub struct Adapter {
    /// Its name, type and graphics API.
    pub info: wgpu::AdapterInfo,
    /// Whether its shaders have 16-bit floats (wgpu's `SHADER_F16`).
    pub shader_f16: bool,
}

/// The adapters `api` offers on this machine.
fn adapters(api: wgpu::Backend) -> Vec<Adapter> {
    if !wgpu::Instance::enabled_backend_features().contains(api.into()) {
        return Vec::new();
    }
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: api.into(),
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    ready(instance.enumerate_adapters(api.into()))
        .iter()
        .map(|a| Adapter {
            info: a.get_info(),
            shader_f16: a.features().contains(wgpu::Features::SHADER_F16),
        })
        .collect()
}

/// The value of a future that native wgpu resolves at once (adapter enumeration).
fn ready<T>(future: impl Future<Output = T>) -> T {
    let mut future = std::pin::pin!(future);
    let mut context = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(value) = future.as_mut().poll(&mut context) {
            return value;
        }
        std::thread::yield_now();
    }
}

/// The adapter the default wgpu device comes up on, or `None` where there is none.
pub fn default_adapter() -> Option<Adapter> {
    let mut software = None;
    for &api in graphics_apis() {
        let found = adapters(api);
        let rank = |a: &Adapter| match a.info.device_type {
            wgpu::DeviceType::DiscreteGpu => 0,
            wgpu::DeviceType::IntegratedGpu => 1,
            wgpu::DeviceType::VirtualGpu => 2,
            wgpu::DeviceType::Other => 3,
            wgpu::DeviceType::Cpu => 4,
        };
        if let Some(gpu) = found
            .iter()
            .filter(|a| a.info.device_type != wgpu::DeviceType::Cpu)
            .min_by_key(|a| rank(a))
        {
            return Some(gpu.clone());
        }
        if software.is_none() {
            software = found.into_iter().next();
        }
    }
    software
}

/// Whether the user asked for a CPU renderer to count as the wgpu device.
fn software_allowed() -> bool {
    std::env::var(ALLOW_SOFTWARE).as_deref() == Ok("1")
}

/// An error when the wgpu device would be a CPU renderer and that was not asked for.
pub fn check_not_software() -> Result<()> {
    let Some(Adapter { info: adapter, .. }) = default_adapter() else {
        // No adapter at all: Burn's own probe says so, with the driver to install.
        return Ok(());
    };
    if adapter.device_type == wgpu::DeviceType::Cpu && !software_allowed() {
        bail!(
            "the only wgpu adapter here is {name} through {api}, a renderer that runs on the CPU: a run there is many times slower than --device cpu. Install a Vulkan driver for a GPU, train with --device cpu, or set {ALLOW_SOFTWARE}=1 to use it anyway",
            name = adapter.name,
            api = api_name(adapter.backend),
        );
    }
    Ok(())
}

/// The graphics API's usual name.
pub fn api_name(api: wgpu::Backend) -> &'static str {
    match api {
        wgpu::Backend::Vulkan => "Vulkan",
        wgpu::Backend::Metal => "Metal",
        wgpu::Backend::Dx12 => "DirectX 12",
        wgpu::Backend::Gl => "OpenGL",
        wgpu::Backend::BrowserWebGpu => "WebGPU",
        wgpu::Backend::Noop => "no graphics API",
    }
}

/// An error when the wgpu device's adapter cannot compute in f16: its shaders lack 16-bit
/// floats (wgpu's OpenGL backend has none), so Burn would compute something else.
pub fn check_f16() -> Result<()> {
    match default_adapter() {
        Some(adapter) if !adapter.shader_f16 => bail!(
            "the wgpu adapter {name} through {api} cannot compute in f16: its shaders have no 16-bit floats. Use --precision f32 there, or a GPU whose Vulkan, Metal or DirectX 12 driver has them",
            name = adapter.info.name,
            api = api_name(adapter.info.backend),
        ),
        _ => Ok(()),
    }
}
