#!/usr/bin/env bash
# Runs on a GPU machine (x86-64, NVIDIA driver, PyTorch, no Rust, no network) with what
# bench/gpu/package.sh prepared: for each backend in BACKENDS, the four models' training
# step against PyTorch (cuDNN, channels_last; and with bf16 autocast), alternating, median
# of ROUNDS; then the wall time of a 5-epoch resnet18 run on the real-data archive.
# Writes gpu-results.md and the raw JSON lines into OUT (default bench/gpu/out).
#   bench/gpu/measure.sh      (env: BACKENDS=wgpu ROUNDS=2 STEPS=20 EPOCHS=5 OUT=dir)
set -uo pipefail
cd "$(dirname "$0")/../.."
dist=bench/gpu/dist
out=${OUT:-bench/gpu/out}; mkdir -p "$out"
backends=${BACKENDS:-wgpu}; epochs=${EPOCHS:-5}
export LD_LIBRARY_PATH="$PWD/$dist${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}
# package.sh ships the binary compressed; Python's lzma unpacks it where xz is missing.
if [ ! -x "$dist/adanoise" ]; then
  python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
    "$dist/adanoise.xz" "$dist/adanoise" && chmod +x "$dist/adanoise"
fi
report="$out/gpu-results.md"
{
  echo "# adanoise vs PyTorch on $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null || echo 'an unknown GPU')"
  echo
  echo "PyTorch $(python3 -c 'import torch; print(torch.__version__, "cuDNN", torch.backends.cudnn.version())' 2>/dev/null);" \
    "batch ${BATCH:-128}, median of ${ROUNDS:-2} rounds of ${STEPS:-20} timed steps, SGD-momentum, adanoise with --device-data."
  ls /usr/share/vulkan/icd.d /etc/vulkan/icd.d 2>/dev/null | sed 's/^/Vulkan ICDs: /' | head -3
} > "$report"
for backend in $backends; do
  echo "## $backend" | tee -a "$report"
  if ! "$dist/adanoise" bench --model baby-cnn --steps 1 --warmup 0 --batch-size 8 --device "$backend" > "$out/$backend-probe.txt" 2>&1; then
    { echo; echo "The $backend backend did not start:"; echo '```'; tail -5 "$out/$backend-probe.txt"; echo '```'; } | tee -a "$report"
    continue
  fi
  ADANOISE="$dist/adanoise" DEVICE=$backend ADANOISE_ARGS=--device-data STEPS=${STEPS:-20} RAW="$out/$backend-raw.jsonl" \
    timeout 900 bench/compare.sh 2> "$out/$backend-compare.log" | tee -a "$report"
done
if [ -f "$dist/cifar10-jpeg.tar.gz" ]; then
  data=$(mktemp -d) && tar xzf "$dist/cifar10-jpeg.tar.gz" -C "$data"
  backend=${backends%% *}
  echo "## $epochs-epoch resnet18 run on the real-data archive ($backend)" | tee -a "$report"
  start=$(date +%s.%N)
  "$dist/adanoise" train --model resnet18 --optimizer sgd-momentum --lr 0.01 --epochs "$epochs" --device "$backend" \
    --data-dir "$data" --out "$out/resnet18-$backend" --offline > "$out/resnet18-$backend.log" 2>&1
  rc=$?
  end=$(date +%s.%N)
  python3 - "$out/resnet18-$backend" "$start" "$end" "$rc" <<'PY' | tee -a "$report"
import json, sys, os
run, start, end, rc = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
print(f"wall time {end - start:.1f} s (exit status {rc})")
path = os.path.join(run, "metrics.jsonl")
for line in open(path) if os.path.exists(path) else []:
    m = json.loads(line)
    print(f"- epoch {m['epoch']}: {m['images_per_s']:.0f} images/s training, {m['seconds']:.1f} s, val acc {m['val_acc']:.4f}")
PY
fi
echo "results in $report"
