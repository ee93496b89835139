#!/usr/bin/env bash
# Training-step cost of the noise machinery: plain step, + global gradient norm,
# + gradient noise, alternated ROUNDS times per model; prints medians and overheads.
#   bench/noise_overhead.sh [models...]   (env: ROUNDS=3 THREADS=2 BATCH=128 STEPS=10 DEVICE=cpu)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-3}; threads=${THREADS:-2}; batch=${BATCH:-128}; steps=${STEPS:-10}; device=${DEVICE:-cpu}
models=("$@"); [ ${#models[@]} -gt 0 ] || models=(tiny-cnn resnet18)
bin=${ADANOISE:-./target/release/adanoise}
[ -x "$bin" ] || cargo build --release
results=$(mktemp)
for model in "${models[@]}"; do
  for _ in $(seq "$rounds"); do
    for variant in plain norm noise; do
      case $variant in
        plain) extra=() ;;
        norm) extra=(--grad-norm) ;;
        noise) extra=(--grad-noise 0.01) ;;
      esac
      "$bin" bench --model "$model" --batch-size "$batch" --steps "$steps" --threads "$threads" --device "$device" \
        "${extra[@]}" --json | sed "s/^/$variant /" >> "$results"
    done
  done
done
python3 - "$results" <<'PY'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    variant, payload = line.split(" ", 1)
    r = json.loads(payload)
    rows.setdefault(r["model"], {}).setdefault(variant, []).append(r["median_step_ms"])
print("| model | plain step (ms) | + grad norm | + grad norm + gradient noise | noise overhead vs plain |")
print("| --- | ---: | ---: | ---: | ---: |")
for model, d in rows.items():
    p, n, z = (statistics.median(d[k]) for k in ("plain", "norm", "noise"))
    print(f"| {model} | {p:.1f} | {n:.1f} ({100*(n/p-1):+.1f}%) | {z:.1f} ({100*(z/p-1):+.1f}%) | {100*(z/p-1):+.1f}% |")
PY
