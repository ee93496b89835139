#!/usr/bin/env bash
# Every test: the Rust tests with the wgpu and LibTorch (tch) backends built in, then the
# Python package built from ./python and its tests against the adanoise binary.
#
#   ci/test.sh          (env: PYTHON, an interpreter with torch, pytest, tensorboard and
#                        maturin; default python3)
#
# It needs a PyTorch install (for LibTorch and the Python tests). Without one, the Rust
# tests alone: cargo test --release --features wgpu. .ci/run installs everything, and the
# system packages some tests need (Chromium, Slurm, Mesa's software Vulkan device).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
eval "$(PYTHON="$python" ci/libtorch-env.sh)"

echo "== Rust tests (CPU, wgpu on whatever Vulkan device there is, LibTorch on the CPU)"
cargo test --release --features wgpu,tch

echo "== the Python package and its tests"
"$python" -m pip install --quiet ./python
ADANOISE_BIN="$PWD/target/release/adanoise" "$python" -m pytest -q python/tests
