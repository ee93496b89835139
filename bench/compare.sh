#!/usr/bin/env bash
# Alternates `adanoise bench` and bench/pytorch_baseline.py for each model, ROUNDS
# times, and prints the median images/s of each and their ratio, as a Markdown table.
#   bench/compare.sh [models...]
# env: ROUNDS=2 THREADS=2 BATCH=128 STEPS=10 DEVICE=cpu (or libtorch-cpu, PyTorch then on the
#      CPU too; or wgpu, vulkan, cuda, libtorch: PyTorch then runs on cuda),
#      ADANOISE=path/to/adanoise, ADANOISE_ARGS="--device-data",
#      TORCH_ROWS="label:args;label:args" (PyTorch variants, each a column pair; default one
#      plain eager row, or on a GPU cuDNN channels_last and the same with bf16 autocast;
#      set and empty: adanoise alone),
#      RAW=file (keep every measurement as JSON lines),
#      TORCH_ALLOCATOR=glibc (PyTorch on the CPU with glibc's default allocator settings; by
#      default it gets adanoise's own, which keeps freed buffers: see src/memory.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-2}; threads=${THREADS:-2}; batch=${BATCH:-128}; steps=${STEPS:-10}; device=${DEVICE:-cpu}
models=("$@"); [ ${#models[@]} -gt 0 ] || models=(baby-cnn tiny-cnn simple-cnn resnet18)
bin=${ADANOISE:-./target/release/adanoise}
[ -x "$bin" ] || cargo build --release
# adanoise never returns freed buffers to the kernel (src/memory.rs); on the CPU PyTorch gets
# the same allocator settings, so that page faults do not decide the comparison.
same_allocator="glibc.malloc.mmap_max=0:glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=2147483647"
torch_env=()
if [ "$device" = cpu ] || [ "$device" = libtorch-cpu ]; then
  torch_device=cpu; default_rows="PyTorch eager:"
  [ "${TORCH_ALLOCATOR:-}" = glibc ] || torch_env=(env "GLIBC_TUNABLES=$same_allocator")
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
      "${torch_env[@]}" "${PYTHON:-python3}" bench/pytorch_baseline.py --model "$model" --batch-size "$batch" --steps "$steps" --threads "$threads" \
        --device "$torch_device" "${args[@]}" --json | sed "s/^/$label\t/" >> "$results"
    done
  done
done
python3 bench/ratio_table.py "$results"
