#!/usr/bin/env bash
# CI: the GPU measurement, run here on the CPU before any GPU time is spent on it.
#  1. bench/gpu/measure.sh end to end on --device libtorch-cpu (DRY_RUN=1: every step, tiny
#     sizes), from a folder laid out as bench/gpu/package.sh makes it around
#     target/release/adanoise (a build with the tch feature); fails when an output file or
#     a section of the report is missing, or a step failed;
#  2. its time caps: with a deadline too short for all of it, it ends in time and says what
#     it skipped;
#  3. bench/gpu/check-package.sh passes on that folder and fails on a CPU-only libtorch, on
#     another libtorch version and on a folder over the size limit;
#  4. the PyTorch baseline's device-resident batches (bench/test_pytorch_baseline.py).
# About 2 minutes on 2 cores.
#
#   PYTHON=target/test-venv/bin/python ci/gpu-dry-run.sh      (env: ADANOISE=binary)
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
python=${PYTHON:-$PWD/target/test-venv/bin/python}
bin=$(readlink -f "${ADANOISE:-target/release/adanoise}")
[ -x "$bin" ] || { echo "error: no adanoise at $bin: build it with cargo build --release --features tch (or set ADANOISE)" >&2; exit 1; }
"$python" -c 'import torch' 2>/dev/null || { echo "error: $python cannot import torch (set PYTHON)" >&2; exit 1; }
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
problems=0
check() { if eval "$2"; then echo "ok: $1"; else echo "MISSING: $1"; problems=$((problems + 1)); fi; }
stage() { echo "== $* ($(( $(date +%s) - started )) s in)"; }

# A folder as package.sh makes it (the binary linked, not compressed: xz -9 would take minutes).
dist=$work/dist-tch; mkdir -p "$dist"
ln -s "$bin" "$dist/adanoise"
echo libtorch > "$dist/backends"; echo "f32 bf16" > "$dist/precisions"

stage "1. bench/gpu/measure.sh, dry run on libtorch-cpu"
out=$work/out
rc=0
timeout 170 env DRY_RUN=1 DISTS="$dist" OUT="$out" PYTHON="$python" bench/gpu/measure.sh > "$work/stdout" 2>&1 || rc=$?
check "measure.sh exited 0 (exit $rc)" '[ "$rc" = 0 ]'
for f in gpu-results.md steps.jsonl concurrency.jsonl results.jsonl measure.log train-metrics.jsonl; do
  check "$f written" "[ -s '$out/$f' ]"
done
check "at most 8 files in OUT (what a device command brings back)" "[ \$(ls '$out' | wc -l) -le 8 ]"
report=$out/gpu-results.md
section() {
  if grep -qF -- "$1" "$report"; then echo "ok: report: $1"; else echo "MISSING: report: $1"; problems=$((problems + 1)); fi
}
section "## a. Smoke: one step of baby-cnn on libtorch-cpu"
section "- f32: trained a step"
section "- bf16: refused, as it must be on the CPU"
section "## b. Training step, batch 8: adanoise on libtorch-cpu vs PyTorch on cpu, 2 round(s)"
section "- adanoise f32 (as the LibTorch engine's code sets it"
section "- PyTorch f32: device cpu, precision f32, channels_last True"
section "optimizer SGD fused, momentum 0.9"
section "batch gather from normalised padded f32 on the device"
section "### libtorch-cpu, f32"
for model in baby-cnn resnet18; do
  # A row with both sides' medians, their ratio and the two rounds' ratios.
  check "step table row for $model with both rounds' ratios" \
    "grep -qE '^\| $model \| [0-9,.]+ \| [0-9,.]+ \| [0-9.]+ \([0-9.]+, [0-9.]+\) \|$' '$report'"
  check "steps.jsonl: 2 rounds of adanoise and of PyTorch for $model" \
    "[ \$(grep -c '^adanoise.*\"model\": *\"$model\"' '$out/steps.jsonl') = 2 ] && [ \$(grep -c '^PyTorch.*\"model\": *\"$model\"' '$out/steps.jsonl') = 2 ]"
done
section "## c. baby-cnn, 2 epochs on synthetic data"
section "rate from epoch 2 on (median)"
section "## c. Stop and resume"
section "- PASS: the run was stopped, resumed and finished"
section "## d. Several cells at once"
check "report: concurrency row for 2 cells of baby-cnn, both sides finished" \
  "grep -qE '^\| baby-cnn \| 2 \| [0-9,]+ \| [0-9,]+ \| [0-9.]+ \|$' '$report'"
section "## Projected wall time of configs/paper.toml"
section "Done in"
for part in env smoke steps train resume "done"; do
  check "results.jsonl: part $part" "grep -q '\"part\": \"$part\"' '$out/results.jsonl'"
done
check "no step was stopped or skipped" "! grep -qE 'stopped \(exit|skipped, [0-9]+ s in|FAILED|FAIL:' '$report'"
seconds=$("$python" -c 'import json,sys; print([json.loads(l) for l in open(sys.argv[1])][-1]["seconds"])' "$out/results.jsonl" 2>/dev/null || echo "?")
echo "   dry run: $seconds s"
[ "$problems" = 0 ] || { echo "--- the report:"; cat "$report"; echo "--- its output (tail):"; tail -30 "$work/stdout"; }

stage "2. the time caps: a 20 s deadline for everything"
short=$work/short
started_short=$(date +%s)
timeout 60 env DRY_RUN=1 DEADLINE=20 RESERVE=5 MODELS=baby-cnn DISTS="$dist" OUT="$short" PYTHON="$python" bench/gpu/measure.sh > "$work/short.stdout" 2>&1 || true
took=$(( $(date +%s) - started_short ))
check "it ended by its deadline ($took s: 20 s, and 10 s for the last summary)" "[ $took -le 30 ]"
check "it says what it skipped for time" "grep -q 'skipped, [0-9]* s in, too little time left' '$short/gpu-results.md'"
check "it still wrote the smoke step" "grep -qF -- '- f32: trained a step' '$short/gpu-results.md'"

stage "3. bench/gpu/check-package.sh"
check "passes on the folder (a tch build against PyTorch's CUDA libtorch 2.11.0+cu130)" \
  "PYTHON='$python' SMOKE=0 bench/gpu/check-package.sh '$dist' > '$work/pass.log' 2>&1"
# A CPU-only libtorch: no libtorch_cuda.so, version 2.11.0+cpu.
cpu=$work/libtorch-cpu; mkdir -p "$cpu/lib"; touch "$cpu/lib/libtorch_cpu.so" "$cpu/lib/libc10.so"
echo "__version__ = '2.11.0+cpu'" > "$cpu/version.py"
check "fails on a CPU-only libtorch" \
  "! LIBTORCH='$cpu' SMOKE=0 bench/gpu/check-package.sh '$dist' > '$work/cpu.log' 2>&1 && grep -q 'no lib/libtorch_cuda.so' '$work/cpu.log'"
# A binary that links libtorch_cpu and not libtorch_cuda, as one built against a CPU-only
# libtorch: PyTorch's own libshm.so stands in for it.
torch_lib=$("$python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
nocuda=$work/dist-nocuda; mkdir -p "$nocuda"; cp "$dist/backends" "$dist/precisions" "$nocuda/"
cp "$torch_lib/libshm.so" "$nocuda/adanoise"; chmod +x "$nocuda/adanoise"
check "fails on a binary that does not link libtorch_cuda" \
  "! PYTHON='$python' SMOKE=0 bench/gpu/check-package.sh '$nocuda' > '$work/nocuda.log' 2>&1 && grep -q 'does not link libtorch_cuda.so' '$work/nocuda.log'"
check "fails when the GPU machine's libtorch is another version" \
  "! EXPECT_TORCH=2.10.0+cu128 PYTHON='$python' SMOKE=0 bench/gpu/check-package.sh '$dist' > '$work/version.log' 2>&1 && grep -q 'not 2.10.0+cu128' '$work/version.log'"
check "fails over the size limit" \
  "! LIMIT_MIB=1 PYTHON='$python' SMOKE=0 bench/gpu/check-package.sh '$dist' > '$work/size.log' 2>&1 && grep -q 'over the 1 MiB' '$work/size.log'"
[ "$problems" = 0 ] || tail -n +1 "$work"/*.log

stage "4. the PyTorch baseline's batches"
check "bench/test_pytorch_baseline.py" "'$python' bench/test_pytorch_baseline.py > '$work/baseline.log' 2>&1 || { cat '$work/baseline.log'; false; }"

stage "done: $problems problem(s)"
[ "$problems" = 0 ]
