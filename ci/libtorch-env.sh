#!/usr/bin/env bash
# Prints the environment that builds adanoise's `tch` feature against the libtorch inside
# an installed PyTorch (the version the binaries then need at run time), for eval:
#
#   eval "$(ci/libtorch-env.sh)"          # PYTHON=path/to/python to pick the interpreter
#   cargo build --release --features tch
#
# torch-sys expects libtorch 2.9 and would download it; LIBTORCH points it at PyTorch's
# own (tested with 2.11), LIBTORCH_BYPASS_VERSION_CHECK accepts that version, and
# LIBTORCH_CXX11_ABI=1 matches PyTorch's wheels.
set -euo pipefail
python=${PYTHON:-python3}
torch_dir=$("$python" -c 'import os, torch; print(os.path.dirname(torch.__file__))') || {
  echo "echo 'error: $python cannot import torch: pip install torch (or set PYTHON to an interpreter that has it)' >&2; false"
  exit 0
}
version=$("$python" -c 'import torch; print(torch.__version__)')
echo "export LIBTORCH='$torch_dir' LIBTORCH_BYPASS_VERSION_CHECK=1 LIBTORCH_CXX11_ABI=1"
echo "# libtorch $version from $torch_dir"
