#!/usr/bin/env bash
# Runs on a GPU machine (x86-64, NVIDIA driver, PyTorch; no Rust, no network) with the
# folders bench/gpu/package.sh prepared, and measures, against PyTorch (cuDNN, channels_last;
# and + bf16 autocast):
#   1. the training step of the four models at batch 128, for each backend and precision a
#      folder lists, adanoise and PyTorch alternated, median of ROUNDS;
#   2. the aggregate images/s of N cells trained at once on the one GPU (`sweep --workers N`,
#      N in CONCURRENCY) for CONCURRENT_MODELS, against N concurrent PyTorch processes;
#   3. an EPOCHS-epoch resnet18 run on the real-data archive (when a folder carries it);
#   4. from those, the projected wall time of configs/paper.toml on one GPU.
# Every step has a time cap and the whole script ends within DEADLINE seconds, so a slow
# backend still leaves the tables of what finished. Writes gpu-results.md, raw.jsonl,
# concurrency.jsonl, measure.log and the real-data run's metrics.jsonl into OUT.
#
#   bench/gpu/measure.sh   (env: DISTS="bench/gpu/dist-cuda bench/gpu/dist-tch" ROUNDS=1 STEPS=20
#                           MODELS="baby-cnn tiny-cnn simple-cnn resnet18" CONCURRENCY="1 4 8"
#                           CONCURRENT_MODELS="baby-cnn resnet18" EPOCHS=3 DEADLINE=780 OUT=dir)
set -uo pipefail
cd "$(dirname "$0")/../.."
started=$(date +%s)
dists=${DISTS:-bench/gpu/dist-cuda bench/gpu/dist-tch}
out=${OUT:-bench/gpu/out}; mkdir -p "$out"
epochs=${EPOCHS:-3}; deadline=${DEADLINE:-780}; rounds=${ROUNDS:-1}; steps=${STEPS:-20}
models=${MODELS:-baby-cnn tiny-cnn simple-cnn resnet18}
concurrency=${CONCURRENCY:-1 4 8}; concurrent_models=${CONCURRENT_MODELS:-baby-cnn resnet18}
report="$out/gpu-results.md"; raw="$out/raw.jsonl"; conc="$out/concurrency.jsonl"; log="$out/measure.log"
: > "$raw"; : > "$conc"; : > "$log"
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}
# LibTorch builds load PyTorch's own libtorch, from the machine's PyTorch install.
torch_lib=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))' 2>/dev/null)
nvidia_icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if ! ls /usr/share/vulkan/icd.d/*.json /etc/vulkan/icd.d/*.json >/dev/null 2>&1 && [ -f "$nvidia_icd" ]; then
  export VK_DRIVER_FILES=$nvidia_icd VK_ICD_FILENAMES=$nvidia_icd
fi

# Seconds a step may take: its cap, or what is left before the deadline if that is less.
budget() {
  local left=$((deadline - ($(date +%s) - started)))
  [ "$left" -lt "$1" ] && echo "$((left > 1 ? left : 1))" || echo "$1"
}
# Runs adanoise of folder $1 with the rest of the arguments.
ours() {
  local dist=$1; shift
  LD_LIBRARY_PATH="$(cd "$dist" && pwd):${torch_lib}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$dist/adanoise" "$@"
}

{
  echo "# adanoise vs PyTorch on $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null || echo 'an unknown GPU')"
  echo
  echo "PyTorch $(python3 -c 'import torch; print(torch.__version__, "cuDNN", torch.backends.cudnn.version())' 2>/dev/null);" \
    "batch 128, median of $rounds round(s) of $steps timed steps, SGD-momentum, adanoise with --device-data."
} > "$report"

# 1. The training step, per backend and precision.
torch_done=""
first_backend=""; first_dist=""
for dist in $dists; do
  if [ ! -x "$dist/adanoise" ]; then
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
      "$dist/adanoise.xz" "$dist/adanoise" && chmod +x "$dist/adanoise"
  fi
  for backend in $(cat "$dist/backends"); do
    echo "## $backend" | tee -a "$report"
    if ! timeout "$(budget 120)" env LD_LIBRARY_PATH="$(cd "$dist" && pwd):$torch_lib" "$dist/adanoise" bench \
      --model baby-cnn --steps 1 --warmup 0 --batch-size 8 --device "$backend" >> "$log" 2>&1; then
      { echo; echo "The $backend backend did not start:"; echo '```'; tail -5 "$log"; echo '```'; } | tee -a "$report"
      continue
    fi
    [ -n "$first_backend" ] || { first_backend=$backend; first_dist=$dist; }
    for precision in $(cat "$dist/precisions"); do
      part=$(mktemp); mine=$(mktemp)
      # PyTorch's rows are measured once and set against every later table.
      if [ -z "$torch_done" ]; then no_torch=(); else no_torch=(TORCH_ROWS=); fi
      for model in $models; do
        echo "# $backend $precision $model, $(($(date +%s) - started)) s in" >> "$log"
        env "${no_torch[@]}" ADANOISE="$(cd "$dist" && pwd)/adanoise" LD_LIBRARY_PATH="$(cd "$dist" && pwd):$torch_lib" \
          DEVICE="$backend" ROUNDS="$rounds" STEPS="$steps" RAW="$part" \
          ADANOISE_ARGS="--device-data --precision $precision" timeout "$(budget 150)" bench/compare.sh "$model" >> "$log" 2>&1 \
          || echo "$model ($precision): stopped (exit $?)" | tee -a "$report"
        grep "^adanoise" "$part" >> "$mine"
        [ -z "$torch_done" ] && grep -v "^adanoise" "$part" >> "$out/torch.jsonl"
        sed "s/\t{/\t{\"backend\": \"$backend\", \"precision\": \"$precision\", /" "$part" >> "$raw"
      done
      torch_done=yes
      echo "### adanoise in $precision" | tee -a "$report"
      [ -s "$mine" ] && python3 bench/ratio_table.py "$mine" "$out/torch.jsonl" | tee -a "$report"
    done
  done
done

# 2. Several cells at once on the one GPU.
data=$(mktemp -d)
archive=""
for d in $dists; do [ -f "$d/cifar10-jpeg.tar.gz" ] && archive="$d/cifar10-jpeg.tar.gz" && break; done
if [ -n "$archive" ]; then tar xzf "$archive" -C "$data"; else ours "$first_dist" data synthetic --data-dir "$data" --train 50000 --test 10000 >> "$log" 2>&1; fi
if [ -n "$first_backend" ] && [ -n "$concurrency" ]; then
  echo "## Several cells at once ($first_backend, f32; PyTorch cuDNN channels_last)" | tee -a "$report"
  for model in $concurrent_models; do
    for n in $concurrency; do
      [ "$(budget 60)" -lt 30 ] && break
      sweep=$(mktemp -d)
      seeds=$(seq -s, 0 $((n - 1)))
      printf 'out = "%s"\n[base]\nmodel = "%s"\noptimizer = "sgd-momentum"\nlr = 0.01\nepochs = 1\ntrain_subset = 10000\ndevice = "%s"\ndata_dir = "%s"\n[grid]\nseed = [%s]\n' \
        "$sweep/out" "$model" "$first_backend" "$data" "$seeds" > "$sweep/s.toml"
      start=$(date +%s.%N)
      timeout "$(budget 180)" env LD_LIBRARY_PATH="$(cd "$first_dist" && pwd):$torch_lib" \
        "$first_dist/adanoise" sweep "$sweep/s.toml" --workers "$n" --threads 2 >> "$log" 2>&1
      end=$(date +%s.%N)
      python3 - "$sweep/out" "$model" "$n" "$start" "$end" >> "$conc" <<'PY'
import glob, json, sys
out, model, n, start, end = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
rates = [json.loads(open(p).readline())["images_per_s"] for p in glob.glob(f"{out}/*/metrics.jsonl")]
print(json.dumps({"who": "adanoise", "model": model, "n": n, "finished": len(rates),
                  "aggregate_images_per_s": sum(rates), "wall_s": end - start}))
PY
      pids=(); tmp=$(mktemp -d)
      for i in $(seq "$n"); do
        timeout "$(budget 120)" python3 bench/pytorch_baseline.py --model "$model" --steps 40 --device cuda \
          --channels-last --json > "$tmp/$i.json" 2>> "$log" & pids+=($!)
      done
      wait "${pids[@]}"
      python3 - "$tmp" "$model" "$n" >> "$conc" <<'PY'
import glob, json, sys
tmp, model, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
rates = [json.loads(open(p).read())["images_per_s"] for p in glob.glob(f"{tmp}/*.json") if open(p).read().strip()]
print(json.dumps({"who": "pytorch", "model": model, "n": n, "finished": len(rates),
                  "aggregate_images_per_s": sum(rates)}))
PY
    done
  done
  python3 bench/gpu/project.py table "$conc" | tee -a "$report"
fi

# 3. A real-data resnet18 run.
if [ -n "$archive" ] && [ -n "$first_backend" ]; then
  run=$(mktemp -d)/resnet18
  echo "## $epochs-epoch resnet18 run on the real-data archive ($first_backend)" | tee -a "$report"
  start=$(date +%s.%N)
  timeout "$(budget 240)" env LD_LIBRARY_PATH="$(cd "$first_dist" && pwd):$torch_lib" "$first_dist/adanoise" train \
    --model resnet18 --optimizer sgd-momentum --lr 0.01 --epochs "$epochs" --device "$first_backend" \
    --data-dir "$data" --out "$run" --offline > "$out/train.log" 2>&1
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

# 4. The study's grid on this GPU, projected from the rates above.
python3 bench/gpu/project.py paper "$raw" "$conc" configs/paper.toml | tee -a "$report"
echo "results in $report ($(($(date +%s) - started)) s)"
