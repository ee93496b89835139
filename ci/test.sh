#!/usr/bin/env bash
# Every test: the Rust tests with the wgpu and LibTorch (tch) backends built in, then the
# Python package's abi3 wheel, installed into a fresh virtual environment with no Rust on
# the PATH, and its tests there against the adanoise binary.
#
#   ci/test.sh
#
# It sets up what it needs on first use: a Python virtual environment in target/test-venv
# (or $ADANOISE_TEST_VENV) with PyTorch (its libtorch is the tch backend's), Lightning,
# pytest, tensorboard and maturin, from PyPI. PYTHON=/path/to/python uses an interpreter that has
# them instead. Tests that need system packages (Chromium, a single-node Slurm, a Vulkan
# device) skip with a message without them; .ci/run installs those too.
set -euo pipefail
cd "$(dirname "$0")/.."

# The Python packages the tests use, pinned where a version matters (torch: its libtorch is
# linked into the tch build).
PY_PACKAGES=(torch==2.11.0 numpy pytest tensorboard maturin lightning==2.6.6)

if [ -n "${PYTHON:-}" ]; then
  python=$PYTHON
else
  venv=${ADANOISE_TEST_VENV:-$PWD/target/test-venv}
  python=$venv/bin/python
  if ! "$python" -c "import torch, pytest, tensorboard, maturin, numpy, lightning" 2>/dev/null \
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

echo "== the Python package: its abi3 wheel, installed where there is no Rust, and its tests"
wheels=$PWD/target/wheels
rm -f "$wheels"/adanoise-*.whl
"$python" -m maturin build --release --quiet -m python/Cargo.toml -o "$wheels"
wheel_venv=$PWD/target/wheel-venv
rm -rf "$wheel_venv"
"$python" -m venv "$wheel_venv"
# The fresh environment sees the test environment's packages (PyTorch, pytest, Lightning:
# gigabytes, installed once) after its own, and gets adanoise from the wheel alone.
"$python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' \
  >"$("$wheel_venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/test-deps.pth"
no_rust=(env -u CARGO_HOME -u RUSTUP_HOME PATH="$wheel_venv/bin:/usr/local/bin:/usr/bin:/bin")
if "${no_rust[@]}" sh -c 'command -v cargo || command -v rustc' >/dev/null; then
  echo "a Rust toolchain is on the wheel test's PATH: the wheel test would not show that none is needed" >&2
  exit 1
fi
"${no_rust[@]}" "$wheel_venv/bin/python" -m pip install --quiet --no-index --no-deps --ignore-installed "$wheels"/adanoise-*.whl
"$wheel_venv/bin/python" -c 'import adanoise, sys; assert adanoise.__file__.startswith(sys.prefix), adanoise.__file__'
ADANOISE_BIN="$PWD/target/release/adanoise" "${no_rust[@]}" "$wheel_venv/bin/python" -m pytest -q python/tests
