#!/usr/bin/env bash
# Runs on a GPU machine (x86-64, NVIDIA driver, PyTorch, no Rust, no network) with what
# bench/gpu/package.sh prepared: for each backend in BACKENDS and each adanoise precision in
# PRECISIONS (f32, then mixed f16: one table each), the four models' training step against
# PyTorch (cuDNN, channels_last; and with bf16 autocast; PyTorch runs with the first
# precision and the later tables reuse its figures), alternating, median of ROUNDS; then
# the wall time of an EPOCHS-epoch resnet18 run on the real-data archive (TRAIN_ARGS adds
# flags to it, such as --precision f16).
# Every step has a time cap and the whole script ends within DEADLINE seconds, so a slow
# backend still leaves the table of what finished. Writes into OUT (default bench/gpu/out)
# no more than six files: gpu-results.md, raw.jsonl, measure.log, and the run's
# train.log and metrics.jsonl.
#   bench/gpu/measure.sh   (env: BACKENDS=wgpu PRECISIONS="f32 f16" DIST=bench/gpu/dist ROUNDS=2 STEPS=20 EPOCHS=5
#                           MODELS="baby-cnn tiny-cnn simple-cnn resnet18" DEADLINE=420 OUT=dir)
# On a bare machine without a Vulkan loader or glvnd, unpack them first (as root):
#   for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
# where .gl/ (git-ignored) holds Debian's libvulkan1 libegl1 libglvnd0 libopengl0 libgl1
# libglx0 libgles2, fetched here with `apt-get download` (as on the H200, 2026-11-27).
set -uo pipefail
cd "$(dirname "$0")/../.."
started=$(date +%s)
dist=${DIST:-bench/gpu/dist}
out=${OUT:-bench/gpu/out}; mkdir -p "$out"
backends=${BACKENDS:-wgpu}; epochs=${EPOCHS:-5}; deadline=${DEADLINE:-420}
precisions=${PRECISIONS:-f32 f16}
models=${MODELS:-baby-cnn tiny-cnn simple-cnn resnet18}
report="$out/gpu-results.md"; raw="$out/raw.jsonl"; log="$out/measure.log"
: > "$raw"; : > "$log"
export LD_LIBRARY_PATH="$(cd "$dist" && pwd)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}
# The NVIDIA driver may be mounted without registering its Vulkan ICD where the loader looks.
nvidia_icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if ! ls /usr/share/vulkan/icd.d/*.json /etc/vulkan/icd.d/*.json >/dev/null 2>&1 && [ -f "$nvidia_icd" ]; then
  export VK_DRIVER_FILES=$nvidia_icd VK_ICD_FILENAMES=$nvidia_icd
fi

{
  echo "VK_DRIVER_FILES=${VK_DRIVER_FILES:-} LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
  ls -l /usr/share/vulkan/icd.d /etc/vulkan/icd.d /usr/local/nvidia/share/vulkan/icd.d 2>&1
  cat "$nvidia_icd" 2>&1
  ldconfig -p | grep -E 'libvulkan|GLX_nvidia|GLdispatch|nvidia-gpucomp' 2>&1
} >> "$log"

# Seconds a step may take: its cap, or what is left before the deadline if that is less.
budget() {
  local left=$((deadline - ($(date +%s) - started)))
  [ "$left" -lt "$1" ] && echo "$((left > 1 ? left : 1))" || echo "$1"
}

# package.sh ships the binary compressed; Python's lzma unpacks it where xz is missing.
if [ ! -x "$dist/adanoise" ]; then
  python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
    "$dist/adanoise.xz" "$dist/adanoise" && chmod +x "$dist/adanoise"
fi
{
  echo "# adanoise vs PyTorch on $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null || echo 'an unknown GPU')"
  echo
  echo "PyTorch $(python3 -c 'import torch; print(torch.__version__, "cuDNN", torch.backends.cudnn.version())' 2>/dev/null);" \
    "batch ${BATCH:-128}, median of ${ROUNDS:-2} rounds of ${STEPS:-20} timed steps, SGD-momentum, adanoise with --device-data." \
    "Vulkan ICD: ${VK_DRIVER_FILES:-$(ls /usr/share/vulkan/icd.d /etc/vulkan/icd.d 2>/dev/null | tr '\n' ' ')}"
} > "$report"
for backend in $backends; do
  echo "## $backend" | tee -a "$report"
  if ! timeout "$(budget 90)" "$dist/adanoise" bench --model baby-cnn --steps 1 --warmup 0 --batch-size 8 \
    --device "$backend" >> "$log" 2>&1; then
    { echo; echo "The $backend backend did not start:"; echo '```'; tail -5 "$log"; echo '```'; } | tee -a "$report"
    continue
  fi
  torch=$(mktemp)
  for precision in $precisions; do
    # PyTorch runs with the first precision only; later ones are set against the same figures.
    part=$(mktemp); ours=$(mktemp)
    if [ "$precision" = "${precisions%% *}" ]; then no_torch=(); else no_torch=(TORCH_ROWS=); fi
    for model in $models; do
      echo "# $backend $precision $model, $(($(date +%s) - started)) s in" >> "$log"
      env "${no_torch[@]}" ADANOISE="$dist/adanoise" DEVICE="$backend" STEPS="${STEPS:-20}" RAW="$part" \
        ADANOISE_ARGS="--device-data --precision $precision" timeout "$(budget 110)" bench/compare.sh "$model" >> "$log" 2>&1 || echo "$model ($precision): stopped (exit $?)" | tee -a "$report"
      grep "^adanoise" "$part" >> "$ours"
      [ "$precision" = "${precisions%% *}" ] && grep -v "^adanoise" "$part" >> "$torch"
      sed "s/\t{/\t{\"backend\": \"$backend\", \"precision\": \"$precision\", /" "$part" >> "$raw"
    done
    echo "### adanoise in $precision" | tee -a "$report"
    [ -s "$ours" ] && python3 bench/ratio_table.py "$ours" "$torch" | tee -a "$report"
  done
done
if [ -f "$dist/cifar10-jpeg.tar.gz" ]; then
  data=$(mktemp -d) && tar xzf "$dist/cifar10-jpeg.tar.gz" -C "$data"
  backend=${backends%% *}
  run=$(mktemp -d)/resnet18
  echo "## $epochs-epoch resnet18 run on the real-data archive ($backend${TRAIN_ARGS:+ $TRAIN_ARGS})" | tee -a "$report"
  start=$(date +%s.%N)
  timeout "$(budget 240)" "$dist/adanoise" train --model resnet18 --optimizer sgd-momentum --lr 0.01 --epochs "$epochs" \
    --device "$backend" --data-dir "$data" --out "$run" --offline ${TRAIN_ARGS:-} > "$out/train.log" 2>&1
  rc=$?
  end=$(date +%s.%N)
  cp "$run/metrics.jsonl" "$out/metrics.jsonl" 2>/dev/null
  python3 - "$run" "$start" "$end" "$rc" <<'PY' | tee -a "$report"
import json, sys, os
run, start, end, rc = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
note = " (stopped at its time cap)" if rc == "124" else ""
print(f"wall time {end - start:.1f} s, dataset decoding included (exit status {rc}{note})")
path = os.path.join(run, "metrics.jsonl")
for line in open(path) if os.path.exists(path) else []:
    m = json.loads(line)
    print(f"- epoch {m['epoch']}: {m['images_per_s']:.0f} images/s training, {m['seconds']:.1f} s, val acc {m['val_acc']:.4f}")
PY
fi
echo "results in $report ($(($(date +%s) - started)) s)"
