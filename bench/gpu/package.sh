#!/usr/bin/env bash
# Prepares everything a GPU machine needs to measure adanoise there without building:
# a stripped, xz-compressed adanoise with the wgpu backend, the Vulkan loader it loads at run
# time, and the real-data archive, in bench/gpu/dist/ (git-ignored; under 64 MiB, so the
# device tool can carry it). Run here, then on the GPU machine: bench/gpu/measure.sh.
#   bench/gpu/package.sh            (env: FEATURES=wgpu ARCHIVE=../shared/data/cifar10-jpeg.tar.gz
#                                    DIST=bench/gpu/dist, or bench/gpu/dist-vulkan for vulkan)
# FEATURES=vulkan packages the SPIR-V backend instead, into its own folder (then
# DIST=bench/gpu/dist-vulkan BACKENDS=vulkan for measure.sh): the two packages together are
# more than one device call carries.
# Not both in one binary: with `vulkan` compiled in, the wgpu device also takes the SPIR-V
# path (measured here: that binary segfaults on lavapipe even with --device wgpu).
set -euo pipefail
cd "$(dirname "$0")/../.."
features=${FEATURES:-wgpu}
archive=${ARCHIVE:-../shared/data/cifar10-jpeg.tar.gz}
if [ "$features" = wgpu ]; then dist=${DIST:-bench/gpu/dist}; else dist=${DIST:-bench/gpu/dist-$features}; fi
# Same optimisation as the release profile, without debug info, stripped: a small binary.
CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_STRIP=true CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/gpu-dist} \
  cargo build --release --features "$features"
rm -rf "$dist" && mkdir -p "$dist"
# Stripped, the binary is ~174 MB (CubeCL and wgpu); xz brings it to ~28 MB.
xz -T2 -6 -c "${CARGO_TARGET_DIR:-target/gpu-dist}/release/adanoise" > "$dist/adanoise.xz"
loader=$(ldconfig -p | awk '/libvulkan.so.1 .*x86-64/ {print $NF; exit}')
if [ -z "$loader" ]; then
  apt-get install -y -qq libvulkan1 >/dev/null
  loader=$(ldconfig -p | awk '/libvulkan.so.1 .*x86-64/ {print $NF; exit}')
fi
cp -L "$loader" "$dist/libvulkan.so.1"
if [ -f "$archive" ]; then cp "$archive" "$dist/cifar10-jpeg.tar.gz"; fi
du -sh "$dist"/*
total=$(du -sm "$dist" | cut -f1)
[ "$total" -lt 64 ] || echo "warning: $dist is $total MiB, more than the device tool carries (64 MiB)" >&2
