#!/usr/bin/env bash
# On a machine whose only wgpu adapter is a CPU renderer (Mesa's OpenGL llvmpipe, with the
# Vulkan driver hidden here), the wgpu tests skip saying why, and `--device wgpu` is refused
# with a sentence and no run directory, instead of a "GPU" run slower than --device cpu.
# Needs Mesa's OpenGL (libegl-mesa0, libgl1-mesa-dri) and the build ci/test.sh made.
#
#   ci/wgpu-without-vulkan.sh      (env: PYTHON with PyTorch, as for ci/test.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-${ADANOISE_TEST_VENV:-$PWD/target/test-venv}/bin/python}
eval "$(PYTHON="$python" ci/libtorch-env.sh)"
# The Vulkan loader finds no driver; a CPU renderer is not asked for.
hide=(env -u ADANOISE_WGPU_SOFTWARE -u ADANOISE_REQUIRE_GPU
      VK_DRIVER_FILES=/nonexistent.json VK_ICD_FILENAMES=/nonexistent.json)
log=$(mktemp)
"${hide[@]}" cargo test --release --features wgpu,tch --test gpu_wgpu -- --nocapture 2>&1 | tee "$log"
skipped=$(grep -c "skipped: the only wgpu adapter here is .* a renderer that runs on the CPU" "$log" || true)
ran=$(grep -cE "^test .* ok$" "$log" || true)
if [ "$skipped" -ne "$ran" ] || [ "$ran" -eq 0 ]; then
  echo "expected every wgpu test to skip naming the CPU renderer: $skipped of $ran did" >&2
  exit 1
fi
out=$(mktemp -d)
trap 'rm -rf "$out" "$log"' EXIT
./target/release/adanoise data synthetic --data-dir "$out/data" --train 64 --test 32 >/dev/null
if "${hide[@]}" ./target/release/adanoise train --model baby-cnn --optimizer sgd --lr 0.01 --epochs 1 --device wgpu \
    --data-dir "$out/data" --out "$out/run" --offline 2>"$out/err"; then
  echo "--device wgpu trained on a CPU renderer without being asked" >&2
  exit 1
fi
cat "$out/err"
grep -q "ADANOISE_WGPU_SOFTWARE=1" "$out/err"
[ ! -e "$out/run" ] || { echo "the refused run left $out/run" >&2; exit 1; }
echo "wgpu without Vulkan: $ran tests skipped with the reason, --device wgpu refused"
