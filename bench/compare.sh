#!/usr/bin/env bash
# Alternates `adanoise bench` and bench/pytorch_baseline.py for each model, ROUNDS
# times, and prints the median images/s of each and their ratio.
#   bench/compare.sh [models...]     (env: ROUNDS=2 THREADS=2 BATCH=128 STEPS=10 DEVICE=cpu)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-2}; threads=${THREADS:-2}; batch=${BATCH:-128}; steps=${STEPS:-10}; device=${DEVICE:-cpu}
models=("$@"); [ ${#models[@]} -gt 0 ] || models=(baby-cnn tiny-cnn simple-cnn resnet18)
bin=${ADANOISE:-./target/release/adanoise}
[ -x "$bin" ] || cargo build --release
results=$(mktemp)
for model in "${models[@]}"; do
  for _ in $(seq "$rounds"); do
    "$bin" bench --model "$model" --batch-size "$batch" --steps "$steps" --threads "$threads" --device "$device" --json \
      | sed 's/^/adanoise /' >> "$results"
    torch_device=$([ "$device" = cpu ] && echo cpu || echo cuda)
    python3 bench/pytorch_baseline.py --model "$model" --batch-size "$batch" --steps "$steps" --threads "$threads" \
      --device "$torch_device" --json | sed 's/^/pytorch /' >> "$results"
  done
done
python3 - "$results" <<'PY'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    who, payload = line.split(" ", 1)
    r = json.loads(payload)
    rows.setdefault(r["model"], {}).setdefault(who, []).append(r["images_per_s"])
print("| model | adanoise images/s | PyTorch images/s | ratio |")
print("| --- | ---: | ---: | ---: |")
for model, d in rows.items():
    a, p = statistics.median(d["adanoise"]), statistics.median(d["pytorch"])
    print(f"| {model} | {a:.1f} | {p:.1f} | {a / p:.2f} |")
PY
