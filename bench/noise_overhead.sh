#!/usr/bin/env bash
# Training-step cost of the noise machinery: plain step, + global gradient norm,
# + gradient noise, interleaved step by step inside one process per model (so that
# machine noise hits all three alike), ROUNDS processes per model; prints the
# median of the per-step time ratios.
#   bench/noise_overhead.sh [models...]   (env: ROUNDS=2 THREADS=2 BATCH=128 STEPS=10 DEVICE=cpu)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-2}; threads=${THREADS:-2}; batch=${BATCH:-128}; steps=${STEPS:-10}; device=${DEVICE:-cpu}
models=("$@"); [ ${#models[@]} -gt 0 ] || models=(tiny-cnn resnet18)
bin=${ADANOISE:-./target/release/adanoise}
[ -x "$bin" ] || cargo build --release
results=$(mktemp)
for model in "${models[@]}"; do
  for _ in $(seq "$rounds"); do
    "$bin" bench --model "$model" --batch-size "$batch" --steps "$steps" --threads "$threads" --device "$device" \
      --noise-overhead --json >> "$results"
  done
done
python3 - "$results" <<'PY'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    rows.setdefault(r["model"], []).append(r)
print("| model | plain step (ms) | + grad norm | + grad norm + gradient noise (sigma 0.01) |")
print("| --- | ---: | ---: | ---: |")
for model, rs in rows.items():
    plain = statistics.median(r["variants"][0]["median_step_ms"] for r in rs)
    norm = statistics.median(r["variants"][1]["ratio_to_first"] for r in rs)
    noise = statistics.median(r["variants"][2]["ratio_to_first"] for r in rs)
    print(f"| {model} | {plain:.1f} | {100 * (norm - 1):+.1f}% | {100 * (noise - 1):+.1f}% |")
PY
