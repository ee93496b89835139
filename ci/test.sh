#!/usr/bin/env bash
# Every test: the Rust tests with the wgpu and LibTorch (tch) backends built in, then the
# Python package built from ./python and its tests against the adanoise binary.
#
#   ci/test.sh
#
# It sets up what it needs on first use: a Python virtual environment in target/test-venv
# (or $ADANOISE_TEST_VENV) with PyTorch (its libtorch is the tch backend's), pytest,
# tensorboard and maturin, from PyPI. PYTHON=/path/to/python uses an interpreter that has
# them instead. Tests that need system packages (Chromium, a single-node Slurm, a Vulkan
# device) skip with a message without them; .ci/run installs those too.
set -euo pipefail
cd "$(dirname "$0")/.."

# The Python packages the tests use, pinned where a version matters (torch: its libtorch is
# linked into the tch build).
PY_PACKAGES=(torch==2.11.0 numpy pytest tensorboard maturin)

if [ -n "${PYTHON:-}" ]; then
  python=$PYTHON
else
  venv=${ADANOISE_TEST_VENV:-$PWD/target/test-venv}
  python=$venv/bin/python
  if ! "$python" -c "import torch, pytest, tensorboard, maturin, numpy" 2>/dev/null \
      || [ "$("$python" -c 'import torch; print(torch.__version__.split("+")[0])')" != 2.11.0 ]; then
    echo "== setting up the test environment in $venv (PyTorch 2.11 from PyPI: a few GB, once)"
    [ -x "$python" ] || python3 -m venv "$venv"
    "$python" -m pip install --quiet --upgrade pip
    "$python" -m pip install --quiet "${PY_PACKAGES[@]}"
  fi
fi
eval "$(PYTHON="$python" ci/libtorch-env.sh)"

echo "== Rust tests (CPU, wgpu on whatever Vulkan device there is, LibTorch on the CPU)"
cargo test --release --features wgpu,tch

echo "== the Python package and its tests"
"$python" -m pip install --quiet ./python
ADANOISE_BIN="$PWD/target/release/adanoise" "$python" -m pytest -q python/tests
