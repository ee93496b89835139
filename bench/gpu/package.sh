#!/usr/bin/env bash
# Builds, here, what a GPU machine needs to measure one adanoise backend without
# building: a stripped, xz-compressed adanoise, what it loads at run time, the device
# names and precisions to measure, and (ARCHIVE) the real-data archive, into
# bench/gpu/dist-FEATURES/ (git-ignored); then checks it (bench/gpu/check-package.sh: for
# tch, a CUDA libtorch of the GPU machine's version; for all, the size that travels).
# Then, there: bench/gpu/measure.sh.
#
#   FEATURES=tch  bench/gpu/package.sh       # LibTorch (cuDNN); needs PyTorch 2.11.0+cu130 here and there
#   FEATURES=cuda bench/gpu/package.sh       # CubeCL CUDA (TF32/bf16 tensor cores); LLVM from PyPI
#   FEATURES=wgpu bench/gpu/package.sh       # WGSL through wgpu; carries the Vulkan loader
#   (env: ARCHIVE=path/to/cifar10-jpeg.tar.gz, DIST=folder, PYTHON for tch, BIN=an adanoise
#    already built with FEATURES (packaged as it is, no cargo build), CARRY=the folders that
#    will travel together, for the size check [this one])
#
# One binary per backend: with `vulkan` compiled in, the wgpu device also takes the
# SPIR-V path (that binary segfaults on Mesa's software Vulkan device even for wgpu).
# Sizes (stripped, xz -9): cuda 36 MB, tch 5 MB, the archive 19 MiB.
set -euo pipefail
cd "$(dirname "$0")/../.."
features=${FEATURES:-wgpu}
dist=${DIST:-bench/gpu/dist-$features}
target=${CARGO_TARGET_DIR:-target/gpu-dist-$features}
case "$features" in
  cuda)
    ci/llvm-from-pypi.sh
    # cudarc otherwise assumes a newer CUDA than the GPU machine's driver (580) serves.
    export CUDARC_CUDA_VERSION=${CUDARC_CUDA_VERSION:-13000}
    backends="cuda"; precisions="f32 bf16" ;;
  tch)
    eval "$(ci/libtorch-env.sh)"
    backends="libtorch"; precisions="f32 bf16" ;;
  wgpu) backends="wgpu"; precisions="f32 f16" ;;
  vulkan) backends="vulkan"; precisions="f32 f16" ;;
  *) echo "error: FEATURES must be one of cuda, tch, wgpu, vulkan (got $features)" >&2; exit 2 ;;
esac
bin=${BIN:-$target/release/adanoise}
if [ -z "${BIN:-}" ]; then
  # The release profile's optimisation without debug info. adanoise's own line tables (a
  # package override in Cargo.toml) survive that, so the binary is stripped after the build.
  CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_STRIP=true CARGO_TARGET_DIR=$target \
    cargo build --release --features "$features"
fi
rm -rf "$dist" && mkdir -p "$dist"
strip -o "$dist/adanoise" "$bin"
# -9: a 64 MiB dictionary, which the large cuda binary (LLVM linked in) needs to compress well.
xz -T1 -9 "$dist/adanoise"
echo "$backends" > "$dist/backends"
echo "$precisions" > "$dist/precisions"
if [ "$features" = wgpu ] || [ "$features" = vulkan ]; then
  loader=$(ldconfig -p | awk '/libvulkan.so.1 .*x86-64/ {print $NF; exit}')
  [ -n "$loader" ] || { echo "error: no libvulkan.so.1 here to carry: apt-get install libvulkan1" >&2; exit 1; }
  cp -L "$loader" "$dist/libvulkan.so.1"
fi
if [ -n "${ARCHIVE:-}" ]; then cp "$ARCHIVE" "$dist/cifar10-jpeg.tar.gz"; fi
du -sh "$dist"/*
# Before any GPU time: a CUDA libtorch of the GPU machine's version (tch), and whether the
# repository and the folders that travel fit the device tool's 64 MiB.
CARRY=${CARRY:-$dist} bench/gpu/check-package.sh "$dist"
