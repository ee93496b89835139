//! With the `tch` feature (the LibTorch engine): compiles the engine's small C++
//! shim against libtorch's headers, links the binaries and tests against the
//! libtorch that `LIBTORCH` names so they run without `LD_LIBRARY_PATH`, keeps
//! `libtorch_cuda` linked (nothing references it directly, so the linker would
//! drop it and LibTorch would see no GPU), and records the libtorch version the
//! binary was built against so a run can refuse another one.

use std::path::{Path, PathBuf};

const SHIM: &str = "src/engine/torch/shim.cpp";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={SHIM}");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_USE_PYTORCH");
    if std::env::var_os("CARGO_FEATURE_TCH").is_none() {
        return;
    }
    let Some(root) = libtorch_root() else {
        panic!(
            "the tch feature (the LibTorch engine) needs libtorch's headers: set LIBTORCH to a libtorch folder, e.g. an installed PyTorch's (eval \"$(ci/libtorch-env.sh)\"), or LIBTORCH_USE_PYTORCH=1 to take the python3 on the PATH's; see docs/gpu.md"
        );
    };
    compile_shim(&root);
    let lib = root.join("lib");
    // PyTorch's wheels link libtorch against CUDA libraries of other wheels, which the linker
    // cannot see; the dynamic loader finds them at run time through libtorch's own paths.
    println!("cargo:rustc-link-arg=-Wl,--allow-shlib-undefined");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-search=native={}", lib.display());
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,-ltorch,--as-needed");
    }
    let version = std::fs::read_to_string(root.join("version.py"))
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("__version__ = "))
                .map(|v| v.trim().trim_matches('\'').trim_matches('"').to_string())
        })
        .unwrap_or_default();
    println!("cargo:rustc-env=ADANOISE_LIBTORCH_VERSION={version}");
    println!("cargo:rustc-env=ADANOISE_LIBTORCH_LIB={}", lib.display());
}

/// The libtorch folder: `LIBTORCH`, or (as torch-sys does with `LIBTORCH_USE_PYTORCH`) the
/// `torch` package of the Python on the PATH.
fn libtorch_root() -> Option<PathBuf> {
    if let Some(root) = std::env::var_os("LIBTORCH") {
        return Some(PathBuf::from(root));
    }
    std::env::var_os("LIBTORCH_USE_PYTORCH")?;
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let out = std::process::Command::new(python)
        .args([
            "-c",
            "import os, torch; print(os.path.dirname(torch.__file__))",
        ])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// Compiles the C++ shim against `root`'s headers, with the flags torch-sys uses for its own.
#[cfg(feature = "tch")]
fn compile_shim(root: &Path) {
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    cc::Build::new()
        .cpp(true)
        .file(SHIM)
        .include(root.join("include"))
        .include(root.join("include/torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .warnings(false)
        .compile("adanoise_torch_shim");
}

#[cfg(not(feature = "tch"))]
fn compile_shim(_root: &Path) {}
