#!/usr/bin/env bash
# Alternates `adanoise bench` and bench/pytorch_baseline.py for each model, ROUNDS
# times, and prints the median images/s of each and their ratio, as a Markdown table.
#   bench/compare.sh [models...]
# env: ROUNDS=2 THREADS=2 BATCH=128 STEPS=10 DEVICE=cpu (or libtorch-cpu, PyTorch then on the
#      CPU too; or wgpu, vulkan, cuda, libtorch: PyTorch then runs on cuda),
#      PRECISION=f32 (or bf16, f16: both sides; PyTorch as autocast),
#      ADANOISE=path/to/adanoise, ADANOISE_ARGS (default on a GPU: --device-data),
#      TORCH_ROWS="label:args;label:args" (PyTorch variants, each a column pair; default one
#      plain eager row on the CPU; on a GPU one row set as adanoise's engine sets itself:
#      cuDNN channels_last, cudnn.benchmark, fused SGD, the batch cut out of a dataset on
#      the device the way that engine does it, correct predictions counted; set and empty:
#      adanoise alone),
#      RAW=file (keep every measurement as JSON lines),
#      TORCH_ALLOCATOR=glibc (PyTorch on the CPU with glibc's default allocator settings; by
#      default it gets adanoise's own, which keeps freed buffers: see src/memory.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-2}; threads=${THREADS:-2}; batch=${BATCH:-128}; steps=${STEPS:-10}; device=${DEVICE:-cpu}
precision=${PRECISION:-f32}
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
  # Like for like on a GPU: what adanoise's engines set (src/engine/torch/mod.rs), and the
  # batch cut out on the device as each engine does it (the LibTorch engine: one gather from
  # normalised padded images; the Burn engine: bytes, then converted and normalised).
  torch_device=cuda
  pipeline=uint8; [ "$device" = libtorch ] && pipeline=padded
  default_rows="PyTorch (same settings):--channels-last --fused --cudnn-benchmark --device-data $pipeline --metrics"
  default_adanoise_args="--device-data"
fi
IFS=';' read -r -a torch_rows <<< "${TORCH_ROWS-$default_rows}"
# shellcheck disable=SC2206
adanoise_args=(${ADANOISE_ARGS-${default_adanoise_args:-}} --precision "$precision")
results=${RAW:-$(mktemp)}
: > "$results"
for model in "${models[@]}"; do
  for round in $(seq "$rounds"); do
    echo "# $model round $round/$rounds" >&2
    "$bin" bench --model "$model" --batch-size "$batch" --steps "$steps" --threads "$threads" --device "$device" \
      "${adanoise_args[@]}" --json | sed "s/^{/adanoise\t{\"round\": $round, /" >> "$results"
    for row in "${torch_rows[@]}"; do
      label=${row%%:*}
      # shellcheck disable=SC2206
      args=(${row#*:})
      "${torch_env[@]}" "${PYTHON:-python3}" bench/pytorch_baseline.py --model "$model" --batch-size "$batch" --steps "$steps" --threads "$threads" \
        --device "$torch_device" --precision "$precision" "${args[@]}" --json | sed "s/^{/$label\t{\"round\": $round, /" >> "$results"
    done
  done
done
python3 bench/ratio_table.py "$results"
