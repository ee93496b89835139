//! With the `tch` feature (LibTorch), links the binaries and tests against the
//! libtorch that `LIBTORCH` names so they run without `LD_LIBRARY_PATH`, keeps
//! `libtorch_cuda` linked (nothing references it directly, so the linker would
//! drop it and LibTorch would see no GPU), and records the libtorch version the
//! binary was built against so a run can refuse another one.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if std::env::var_os("CARGO_FEATURE_TCH").is_none() {
        return;
    }
    let Some(root) = std::env::var_os("LIBTORCH").map(PathBuf::from) else {
        // torch-sys (built before this crate) reports a missing libtorch itself.
        println!(
            "cargo:warning=LIBTORCH is not set: the binaries will need LD_LIBRARY_PATH to find libtorch (see docs/gpu.md)"
        );
        // No version recorded: the run-time check then has nothing to compare with.
        println!("cargo:rustc-env=ADANOISE_LIBTORCH_VERSION=");
        println!("cargo:rustc-env=ADANOISE_LIBTORCH_LIB=");
        return;
    };
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
