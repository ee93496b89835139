#!/usr/bin/env bash
# Installs LLVM 23.1 (static libraries with the X86 and NVPTX back ends, and an
# llvm-config) from PyPI where Burn's `cuda` backend looks for it, so that
# `cargo build --release --features cuda` works without internet access to
# LLVM's bundle host. Burn's CUDA path (cubecl-cuda -> cubecl-llvm) depends on
# tracel-llvm-bundler, whose build script downloads an LLVM 23.1 bundle unless
# `$XDG_DATA_HOME/tracel/tracel-llvm-23.1.0-4/.tracel-llvm-installed` exists;
# it then runs that folder's `bin/llvm-config --link-static`. PyPI's
# mlc-llvm-static (+ -extra-targets for NVPTX) hold a matching LLVM 23.1.1.
#
#   ci/llvm-from-pypi.sh          # then: cargo build --release --features cuda
#
# env: PYTHON (default python3), XDG_DATA_HOME (default ~/.local/share).
set -euo pipefail
version=23.1.1.post0
bundle=tracel-llvm-23.1.0-4
python=${PYTHON:-python3}
dest="${XDG_DATA_HOME:-$HOME/.local/share}/tracel/$bundle"
if [ -f "$dest/.tracel-llvm-installed" ] && [ -x "$dest/bin/llvm-config" ]; then
  echo "LLVM $version is already installed in $dest"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "downloading mlc-llvm-static $version (about 90 MB) from PyPI"
"$python" -m pip download --quiet --no-deps --dest "$tmp/wheels" \
  "mlc-llvm-static==$version" "mlc-llvm-static-extra-targets==$version"
for wheel in "$tmp"/wheels/*.whl; do
  "$python" -m zipfile -e "$wheel" "$tmp/unpacked"
done
sdk="$tmp/unpacked/mlc_llvm_static/static"
[ -f "$sdk/bin/llvm-config" ] || { echo "error: the wheels hold no static/bin/llvm-config; was mlc-llvm-static's layout changed?" >&2; exit 1; }
rm -rf "$dest"
mkdir -p "$(dirname "$dest")"
mv "$sdk" "$dest"
# Wheels do not keep the execute bit; llvm-config is a Python script.
chmod +x "$dest/bin/llvm-config" "$dest/bin/llvm-config.py"
"$dest/bin/llvm-config" --version >/dev/null || { echo "error: $dest/bin/llvm-config does not run (it needs python3 on PATH)" >&2; exit 1; }
echo "LLVM $("$dest/bin/llvm-config" --version) ($("$dest/bin/llvm-config" --targets-built)) installed in $dest"
touch "$dest/.tracel-llvm-installed"
