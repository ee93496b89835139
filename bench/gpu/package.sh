#!/usr/bin/env bash
# Builds, here, what a GPU machine needs to measure one adanoise backend without
# building: a stripped, xz-compressed adanoise, what it loads at run time, the device
# names and precisions to measure, and (ARCHIVE) the real-data archive, into
# bench/gpu/dist-FEATURES/ (git-ignored). Then, there: bench/gpu/measure.sh.
#
#   FEATURES=cuda bench/gpu/package.sh       # CubeCL CUDA (TF32/bf16 tensor cores); LLVM from PyPI
#   FEATURES=tch  bench/gpu/package.sh       # LibTorch (cuDNN); needs PyTorch 2.11 here and there
#   FEATURES=wgpu bench/gpu/package.sh       # WGSL through wgpu; carries the Vulkan loader
#   (env: ARCHIVE=path/to/cifar10-jpeg.tar.gz, DIST=folder, PYTHON for tch)
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
# The release profile's optimisation without debug info. adanoise's own line tables (a
# package override in Cargo.toml) survive that, so the binary is stripped after the build.
CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_STRIP=true CARGO_TARGET_DIR=$target \
  cargo build --release --features "$features"
rm -rf "$dist" && mkdir -p "$dist"
strip -o "$dist/adanoise" "$target/release/adanoise"
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
# Where the GPU machine is reached through a size-limited copy of the repository and the
# folders (64 MiB is a common limit), this says whether those made so far fit together.
tree=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
dists=$(du -cb bench/gpu/dist-* | tail -1 | cut -f1)
total=$(( (tree + dists) / 1048576 ))
echo "the repository ($((tree / 1048576)) MiB) and bench/gpu/dist-*: $total MiB in all"
[ "$total" -lt 64 ] || echo "warning: over 64 MiB: for a size-limited copy, leave the archive out (ARCHIVE unset; measure.sh then uses synthetic data) or take fewer folders" >&2
