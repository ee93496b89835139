#!/usr/bin/env bash
# Alternates `adanoise bench` and bench/pytorch_baseline.py for each model, ROUNDS
# times, and prints the median images/s of each and their ratio, as a Markdown table.
#   bench/compare.sh [models...]
# env: ROUNDS=2 THREADS=2 BATCH=128 STEPS=10 DEVICE=cpu (or wgpu, vulkan, cuda: PyTorch then
#      runs on cuda), ADANOISE=path/to/adanoise, ADANOISE_ARGS="--device-data",
#      TORCH_ROWS="label:args;label:args" (PyTorch variants, each a column pair; default one
#      plain eager row, or on a GPU cuDNN channels_last and the same with bf16 autocast;
#      set and empty: adanoise alone),
#      RAW=file (keep every measurement as JSON lines).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-2}; threads=${THREADS:-2}; batch=${BATCH:-128}; steps=${STEPS:-10}; device=${DEVICE:-cpu}
models=("$@"); [ ${#models[@]} -gt 0 ] || models=(baby-cnn tiny-cnn simple-cnn resnet18)
bin=${ADANOISE:-./target/release/adanoise}
[ -x "$bin" ] || cargo build --release
if [ "$device" = cpu ]; then
  torch_device=cpu; default_rows="PyTorch eager:"
else
  torch_device=cuda; default_rows="PyTorch cuDNN channels_last:--channels-last;PyTorch cuDNN channels_last + bf16 autocast:--channels-last --amp"
fi
IFS=';' read -r -a torch_rows <<< "${TORCH_ROWS-$default_rows}"
# shellcheck disable=SC2206
adanoise_args=(${ADANOISE_ARGS:-})
results=${RAW:-$(mktemp)}
: > "$results"
for model in "${models[@]}"; do
  for round in $(seq "$rounds"); do
    echo "# $model round $round/$rounds" >&2
    "$bin" bench --model "$model" --batch-size "$batch" --steps "$steps" --threads "$threads" --device "$device" \
      "${adanoise_args[@]}" --json | sed 's/^/adanoise\t/' >> "$results"
    for row in "${torch_rows[@]}"; do
      label=${row%%:*}
      # shellcheck disable=SC2206
      args=(${row#*:})
      python3 bench/pytorch_baseline.py --model "$model" --batch-size "$batch" --steps "$steps" --threads "$threads" \
        --device "$torch_device" "${args[@]}" --json | sed "s/^/$label\t/" >> "$results"
    done
  done
done
python3 bench/ratio_table.py "$results"
