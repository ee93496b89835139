#!/usr/bin/env bash
# The GPU measurement: adanoise's LibTorch engine against PyTorch on one NVIDIA GPU, within
# one short device window. Runs on the GPU machine (x86-64, NVIDIA driver, PyTorch 2.11 in
# python3; no Rust, no network) with the folder bench/gpu/package.sh made here
# (bench/gpu/dist-tch), and on a CPU-only machine as a dry run of every step (DRY_RUN=1,
# on --device libtorch-cpu; ci/gpu-dry-run.sh).
#
# In order of priority, each part written into OUT as soon as it is measured (the report
# gpu-results.md appended to, JSON lines beside it), so that a window cut short still
# leaves what finished:
#   a. smoke: one tiny training step on the device in f32 and in bf16, so a broken build
#      is known in seconds; the GPU, driver, PyTorch, CUDA and cuDNN versions;
#   b. steps: the four models at batch 128, adanoise (--device-data) against PyTorch set
#      the same way (cuDNN channels_last, cudnn.benchmark, TF32 as PyTorch's defaults, fused
#      SGD, the batch cut out of a dataset on the device, correct predictions counted on
#      the device), in f32 and bf16 autocast, alternated over ROUNDS rounds (ABBA: the
#      side that goes first swaps every round), medians and each round's ratio; each side's
#      settings in one line;
#   c. train: a short resnet18 run on the real-data archive (synthetic data when no folder
#      carries it), its rate from epoch 2 on; resume: a tiny run stopped by SIGTERM and
#      resumed (`train --resume`), which must finish;
#   d. concurrency: N cells at once on the one GPU (`sweep --workers N`, the rate of epochs
#      2 and later) against N PyTorch processes timed together; then the projected wall
#      time of configs/paper.toml (bench/gpu/project.py). Only while time is left.
# The LibTorch folders go first; the CubeCL (cuda) and wgpu folders are measured after
# them (parts a and b), and only when DISTS names them.
#
# Every step runs under `timeout`, its cap the smaller of its own and what is left before
# DEADLINE (less RESERVE, kept for the final summary), so the script ends within DEADLINE
# seconds: 360 by default, well inside one device command's 600 s, leaving room in a
# 15-minute window for a rerun (docs/gpu.md).
#
#   bench/gpu/measure.sh
#   env: OUT=dir  DISTS="bench/gpu/dist-tch [bench/gpu/dist-cuda ...]"  DEADLINE=360
#        PARTS="smoke steps train resume concurrency project"  ROUNDS=2 STEPS=20 WARMUP=3
#        BATCH=128 MODELS="baby-cnn tiny-cnn simple-cnn resnet18" EPOCHS=3
#        CONCURRENCY="4 8" CONCURRENT_MODELS="baby-cnn resnet18" PYTHON=python3
#        ARCHIVE=cifar10-jpeg.tar.gz (else a folder's own)  ADANOISE=binary (instead of a
#        folder's)  DEVICE=libtorch-cpu (run a LibTorch folder on the CPU)  DRY_RUN=1
#
# Writes into OUT (at most 8 files come back from a device command): gpu-results.md,
# steps.jsonl (the step table's measurements, `who<TAB>json`), concurrency.jsonl,
# results.jsonl (every other measurement and check), train-metrics.jsonl (the real-data
# run's metrics.jsonl) and measure.log (every command's output).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
started=$(date +%s)
export PYTHONUNBUFFERED=1 XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}

# --- Settings. A dry run keeps every step and shrinks its work to seconds on 2 cores.
dry=${DRY_RUN:-0}
if [ "$dry" = 1 ]; then
  d_device=libtorch-cpu d_deadline=110 d_rounds=2 d_steps=2 d_warmup=1 d_batch=8
  d_models="baby-cnn resnet18" d_epochs=2 d_train_model=baby-cnn d_train_subset=512
  d_concurrency="2" d_conc_models="baby-cnn" d_conc_subset=256 d_conc_steps=3 d_syn_train=1024 d_syn_test=128
  d_resume_epochs=4 d_resume_subset=256 d_threads=1 conc_min=15
else
  d_device="" d_deadline=360 d_rounds=2 d_steps=20 d_warmup=3 d_batch=128
  d_models="baby-cnn tiny-cnn simple-cnn resnet18" d_epochs=3 d_train_model=resnet18 d_train_subset=""
  d_concurrency="4 8" d_conc_models="baby-cnn resnet18" d_conc_subset=20000 d_conc_steps=60
  d_syn_train=50000 d_syn_test=1000 d_resume_epochs=10 d_resume_subset=5000 d_threads=""
  # Less than this left, N cells and N PyTorch processes would not both finish.
  conc_min=40
fi
device_override=${DEVICE:-$d_device}
deadline=${DEADLINE:-$d_deadline}; reserve=${RESERVE:-10}
rounds=${ROUNDS:-$d_rounds}; steps=${STEPS:-$d_steps}; warmup=${WARMUP:-$d_warmup}; batch=${BATCH:-$d_batch}
models=${MODELS:-$d_models}; epochs=${EPOCHS:-$d_epochs}
train_model=${TRAIN_MODEL:-$d_train_model}; train_subset=${TRAIN_SUBSET:-$d_train_subset}
concurrency=${CONCURRENCY-$d_concurrency}; conc_models=${CONCURRENT_MODELS:-$d_conc_models}
conc_subset=${CONCURRENT_SUBSET:-$d_conc_subset}; conc_steps=${CONCURRENT_STEPS:-$d_conc_steps}
threads=${THREADS:-$d_threads}
parts=" ${PARTS:-smoke steps train resume concurrency project} "
python=${PYTHON:-python3}
dists=${DISTS:-bench/gpu/dist-tch}
out=${OUT:-bench/gpu/out}; mkdir -p "$out"
report=$out/gpu-results.md; steps_raw=$out/steps.jsonl; conc=$out/concurrency.jsonl
results=$out/results.jsonl; log=$out/measure.log; train_metrics=$out/train-metrics.jsonl
: > "$report"; : > "$steps_raw"; : > "$conc"; : > "$results"; : > "$log"; rm -f "$train_metrics"
# Scratch space outside OUT (only what is meant to come back goes there).
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
thread_args=(); [ -n "$threads" ] && thread_args=(--threads "$threads")

# --- Helpers.
elapsed() { echo $(($(date +%s) - started)); }
# Seconds a step may run: its cap ($1), or what is left before the deadline less the
# reserve, if that is less. Fails (prints 0) when less than $2 (default 5) is left.
budget() {
  local left=$((deadline - reserve - $(elapsed))) min=${2:-5}
  [ "$left" -gt "$1" ] && left=$1
  if [ "$left" -lt "$min" ]; then echo 0; return 1; fi
  echo "$left"
}
# Runs "$@" under a time cap of $1 seconds (a TERM, then a KILL 5 s later).
capped() { local s=$1; shift; timeout -k 5 "$s" "$@"; }
say() { printf '%s\n' "$*" | tee -a "$report"; }
logline() { echo "# [$(elapsed) s] $*" >> "$log"; }
# Appends one JSON object to results.jsonl: the arguments KEY=VALUE, each value read as
# JSON where it is JSON (numbers, true, false, null, objects), else kept as a string.
record() {
  "$python" - "$(elapsed)" "$@" >> "$results" <<'PY'
import json, sys
def value(v):
    try:
        return json.loads(v)
    except ValueError:
        return v
print(json.dumps(dict([(k, value(v)) for k, _, v in (a.partition("=") for a in sys.argv[2:])], t=int(sys.argv[1]))))
PY
}
has_part() { [[ "$parts" == *" $1 "* ]]; }
skipped_for_time() { say ""; say "($1: skipped, $(elapsed) s in, too little time left before the ${deadline} s deadline)"; record part="$1" status="skipped for time"; }

# PyTorch's libtorch, which a LibTorch build loads (the version it was built against), and
# the versions the report names, in one start of Python (importing torch takes seconds).
{ read -r torch_lib; read -r torch_env; } < <("$python" - 2>>"$log" <<'PY'
import json, os, platform, torch
cuda = torch.cuda.is_available()
print(os.path.join(os.path.dirname(torch.__file__), "lib"))
print(json.dumps({"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
                  "cudnn": torch.backends.cudnn.version() if cuda else None, "cuda_available": cuda,
                  "device": torch.cuda.get_device_name(0) if cuda else "cpu"}))
PY
)
nvidia_icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if ! ls /usr/share/vulkan/icd.d/*.json /etc/vulkan/icd.d/*.json >/dev/null 2>&1 && [ -f "$nvidia_icd" ]; then
  export VK_DRIVER_FILES=$nvidia_icd VK_ICD_FILENAMES=$nvidia_icd
fi

# Each folder: its binary (unpacked into scratch space, never into the folder, which may be
# carried again), the backends it measures and its precisions. LibTorch folders first.
declare -A bin_of backend_of precisions_of dir_of
ordered=()
for dist in $dists; do
  [ -d "$dist" ] || { say "warning: $dist is not a folder: skipped"; continue; }
  grep -qw libtorch "$dist/backends" 2>/dev/null && ordered=("$dist" "${ordered[@]}") || ordered+=("$dist")
done
for dist in "${ordered[@]}"; do
  name=$(basename "$dist")
  if [ -n "${ADANOISE:-}" ]; then bin=$ADANOISE
  elif [ -x "$dist/adanoise" ]; then bin=$dist/adanoise
  else
    mkdir -p "$work/$name"; bin=$work/$name/adanoise
    "$python" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
      "$dist/adanoise.xz" "$bin" 2>>"$log" && chmod +x "$bin"
  fi
  bin_of[$dist]=$(readlink -f "$bin"); dir_of[$dist]=$(cd "$dist" && pwd)
  backend=$(cat "$dist/backends" 2>/dev/null || echo libtorch)
  precisions=$(cat "$dist/precisions" 2>/dev/null || echo "f32 bf16")
  if [ -n "$device_override" ] && [ "$backend" = libtorch ]; then
    backend=$device_override
    # libtorch has no autocast on the CPU: the smoke step shows the refusal; without it, f32.
    [ "$backend" = libtorch-cpu ] && ! has_part smoke && precisions=f32
  fi
  backend_of[$dist]=$backend; precisions_of[$dist]=$precisions
done

# The command that runs the adanoise of folder $1 (to be followed by its arguments): the
# folder first on the library path (wgpu's carries the Vulkan loader), then PyTorch's
# libtorch. Through env, which execs the binary: a signal sent to its process reaches it.
# `ours CAP DIST ARGS...` runs it under a time cap; `ours 0 DIST ARGS...` without one.
ours() {
  local cap=$1 dist=$2; shift 2
  local cmd=(env "LD_LIBRARY_PATH=${dir_of[$dist]}:$torch_lib" "${bin_of[$dist]}" "$@")
  if [ "$cap" = 0 ]; then "${cmd[@]}"; else timeout -k 5 "$cap" "${cmd[@]}"; fi
}
# The PyTorch device set against a backend, and how the batch is cut out on the device
# there: the LibTorch engine gathers from normalised padded images, the Burn engine
# converts and normalises bytes (src/engine/torch/data.rs; docs/gpu.md, "Data on the device").
torch_device_for() { case "$1" in cpu|libtorch-cpu) echo cpu ;; *) echo cuda ;; esac; }
pipeline_for() { case "$1" in libtorch|libtorch-cpu) echo padded ;; *) echo uint8 ;; esac; }

# --- a. The machine, and one tiny step per precision.
gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)
{
  echo "# adanoise's LibTorch engine vs PyTorch on ${gpu:-a machine without nvidia-smi (CPU)}"
  echo
  echo "PyTorch: ${torch_env:-not importable by $python}; libtorch loaded from ${torch_lib:-?}."
  echo "Started $(date -u +%Y-%m-%dT%H:%M:%SZ), deadline ${deadline} s$([ "$dry" = 1 ] && echo ', DRY RUN: tiny sizes, nothing here is a measurement')."
  echo "Folders: ${ordered[*]:-none}; devices: $(for d in "${ordered[@]}"; do printf '%s ' "${backend_of[$d]}"; done)."
} | tee -a "$report"
record part=env gpu="${gpu:-}" torch="${torch_env:-null}" dry_run="$dry"

working=()   # folders whose engine trained a step
for dist in "${ordered[@]}"; do
  backend=${backend_of[$dist]}; ok_precisions=""
  has_part smoke || { working+=("$dist"); continue; }
  say ""; say "## a. Smoke: one step of baby-cnn on $backend ($dist)"; say ""
  for precision in f32 ${precisions_of[$dist]/f32/}; do
    s=$(budget 120 10) || { skipped_for_time "smoke $backend $precision"; continue; }
    logline "smoke $backend $precision (cap $s s)"
    t0=$(date +%s.%N)
    : > "$work/smoke.out"
    ours "$s" "$dist" bench --model baby-cnn --steps 1 --warmup 0 --batch-size 8 --device "$backend" \
      --device-data --precision "$precision" "${thread_args[@]}" --json > "$work/smoke.out" 2>"$work/smoke.err"
    rc=$?
    cat "$work/smoke.err" >> "$log"
    line=$(grep '^{' "$work/smoke.out")
    secs=$(awk "BEGIN { printf \"%.1f\", $(date +%s.%N) - $t0 }")
    if [ -n "$line" ]; then
      say "- $precision: trained a step ($secs s with start-up; $(grep -o '"device": *"[^"]*"' <<< "$line" | head -1), $(grep -o '"precision": *"[^"]*"' <<< "$line" | head -1))"
      record part=smoke backend="$backend" precision="$precision" ok=true seconds="$secs" result="$line"
      ok_precisions+=" $precision"
    elif [ "$backend" = libtorch-cpu ] && [ "$precision" != f32 ] && grep -q "needs a GPU" "$work/smoke.err"; then
      say "- $precision: refused, as it must be on the CPU (libtorch's autocast is CUDA-only)"
      record part=smoke backend="$backend" precision="$precision" ok=false refused=true
    else
      say "- $precision: FAILED (exit $rc, $secs s); the last lines it printed:"
      { echo '```'; tail -4 "$work/smoke.err"; echo '```'; } | tee -a "$report"
      record part=smoke backend="$backend" precision="$precision" ok=false exit="$rc"
    fi
  done
  if [[ "$ok_precisions" == *f32* ]]; then
    precisions_of[$dist]=$ok_precisions; working+=("$dist")
  else
    say "- $backend does not train: its other parts are skipped."
  fi
done
[ ${#working[@]} -gt 0 ] || { say ""; say "No engine trained a step: nothing else to measure ($(elapsed) s)."; exit 1; }
primary=${working[0]}; primary_backend=${backend_of[$primary]}

# --- b. The step table, alternated with PyTorch set the same way.
# One line of each side's settings, as the step table's JSON lines say them. adanoise bench
# prints its device, precision and batch pipeline; the rest is fixed in the engine's code.
settings_lines() {
  "$python" - "$steps_raw" "$1" <<'PY'
import json, sys
raw, backend = sys.argv[1], sys.argv[2]
seen = set()
for line in open(raw):
    who, payload = line.rstrip("\n").split("\t", 1)
    r = json.loads(payload)
    if r.get("backend") != backend or (who, r["precision"]) in seen:
        continue
    seen.add((who, r["precision"]))
    if who == "adanoise" and backend.startswith("libtorch"):
        gpu = backend == "libtorch"
        na = "n/a (cpu)"
        s = {"device": r["device"] + (" (cuda:0)" if gpu else ""),
             "precision": r["precision"] + (" autocast around the forward pass, loss in f32" if r["precision"] != "f32" else ""),
             "channels_last": True, "cudnn_benchmark": True if gpu else na, "tf32_cudnn_conv": True if gpu else na,
             "float32_matmul_precision": "highest" if gpu else na,
             "optimizer": "SGD fused (torch's _fused_sgd_), momentum 0.9, weight decay 1e-4",
             "batch": ("gather from normalised padded f32 on the device, epoch plan uploaded per epoch"
                       if r["device_data"] else "a prepared batch uploaded"),
             "metrics": "loss sum and correct count on the device"}
        print(f"- adanoise {r['precision']} (as the LibTorch engine's code sets it: src/engine/torch/mod.rs, shim.cpp; "
              f"`adanoise bench` reports device {r['device']}, precision {r['precision']}, device_data {r['device_data']}): "
              + ", ".join(f"{k} {v}" for k, v in s.items()))
    elif who == "adanoise":
        print(f"- adanoise {r['precision']} (Burn engine): device {r['device']}, device_data {r['device_data']}")
    else:
        print(f"- {who} {r['precision']}: " + ", ".join(f"{k} {v}" for k, v in r["settings"].items()))
PY
}

step_table() {
  local dist=$1 backend=${backend_of[$1]} tdev pipeline
  tdev=$(torch_device_for "$backend"); pipeline=$(pipeline_for "$backend")
  say ""; say "## b. Training step, batch $batch: adanoise on $backend vs PyTorch on $tdev, $rounds round(s) of $steps timed steps after $warmup"
  for round in $(seq "$rounds"); do
    for precision in ${precisions_of[$dist]}; do
      # adanoise's rows: one process per model, as `adanoise bench` measures one.
      ours_rows() {
        for model in $models; do
          s=$(budget 90 10) || return 1
          logline "adanoise $backend $precision $model round $round (cap $s s)"
          ours "$s" "$dist" bench --model "$model" \
            --batch-size "$batch" --steps "$steps" --warmup "$warmup" --device "$backend" --device-data \
            --precision "$precision" "${thread_args[@]}" --json 2>>"$log" \
            | sed -n "s/^{/adanoise\t{\"round\": $round, \"backend\": \"$backend\", /p" >> "$steps_raw" \
            || { say "- adanoise $model $precision round $round: stopped (exit ${PIPESTATUS[0]})"; }
        done
      }
      # PyTorch's rows: one process for all the models (its start-up costs seconds).
      torch_rows() {
        s=$(budget 150 10) || return 1
        logline "PyTorch $tdev $precision round $round (cap $s s)"
        capped "$s" "$python" bench/pytorch_baseline.py --model $models --batch-size "$batch" --steps "$steps" \
          --warmup "$warmup" --device "$tdev" --precision "$precision" --channels-last --fused --cudnn-benchmark \
          --device-data "$pipeline" --metrics "${thread_args[@]}" --json 2>>"$log" \
          | sed -n "s/^{/PyTorch\t{\"round\": $round, \"backend\": \"$backend\", /p" >> "$steps_raw" \
          || { say "- PyTorch $precision round $round: stopped (exit ${PIPESTATUS[0]})"; }
      }
      # ABBA: whoever goes first swaps every round, so a drift in clocks favours neither.
      if [ $((round % 2)) = 1 ]; then ours_rows; torch_rows; else torch_rows; ours_rows; fi
    done
    [ "$(budget 60 20)" != 0 ] || { say "- (later rounds skipped: too little time left)"; break; }
  done
  say ""; say "Settings of each side:"; settings_lines "$backend" | tee -a "$report"
  for precision in ${precisions_of[$dist]}; do
    say ""; say "### $backend, $precision$([ "$precision" != f32 ] && echo ' (autocast on both sides)'): median images/s; ratio adanoise / PyTorch of the medians, each round's ratio in brackets"; say ""
    "$python" bench/ratio_table.py "$steps_raw" --where backend="$backend" --where precision="$precision" | tee -a "$report"
  done
  record part=steps backend="$backend" rows="$(grep -c "\"backend\": \"$backend\"" "$steps_raw")"
}
if has_part steps; then
  if [ "$(budget 30 10)" != 0 ]; then step_table "$primary"; else skipped_for_time "steps $primary_backend"; fi
fi

# Synthetic data (the binary release format) for the runs that need no real images.
synthetic() {
  [ -d "$work/synthetic" ] && return 0
  local s; s=$(budget 60 10) || return 1
  ours "$s" "$primary" data synthetic \
    --data-dir "$work/synthetic" --train "$d_syn_train" --test "$d_syn_test" >> "$log" 2>&1
}

# --- c. A short real-data run, and a stop and resume.
if has_part train; then
  archive=${ARCHIVE:-}
  for d in "${ordered[@]}"; do [ -z "$archive" ] && [ -f "$d/cifar10-jpeg.tar.gz" ] && archive=$d/cifar10-jpeg.tar.gz; done
  if s=$(budget 150 20); then
    data=""; what=""
    if [ -n "$archive" ] && mkdir -p "$work/real" && capped "$s" tar xzf "$archive" -C "$work/real" 2>>"$log"; then
      data=$work/real; what="the real-data archive ($(basename "$archive"))"
    elif synthetic; then
      data=$work/synthetic; what="synthetic data (no archive travelled)"
    fi
    subset_args=(); [ -n "$train_subset" ] && subset_args=(--train-subset "$train_subset")
    say ""; say "## c. $train_model, $epochs epochs on $what, $primary_backend, f32"; say ""
    run=$work/train-run
    if [ -z "$data" ]; then
      say "(no data to train on: see measure.log)"
    elif s=$(budget 150 20); then
      logline "train $train_model on $data (cap $s s)"
      t0=$(date +%s)
      ours "$s" "$primary" train --model "$train_model" \
        --optimizer sgd-momentum --lr 0.01 --epochs "$epochs" --device "$primary_backend" --data-dir "$data" \
        "${subset_args[@]}" "${thread_args[@]}" --out "$run" --offline >> "$log" 2>&1
      rc=$?
      wall=$(($(date +%s) - t0))
      cp "$run/metrics.jsonl" "$train_metrics" 2>/dev/null
      "$python" - "$run" "$wall" "$rc" "$results" <<'PY' | tee -a "$report"
import json, os, statistics, sys
run, wall, rc, results = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
path = os.path.join(run, "metrics.jsonl")
lines = [json.loads(l) for l in open(path)] if os.path.exists(path) else []
note = " (stopped at its time cap)" if rc in ("124", "137") else ""
print(f"wall time {wall} s, data loading and start-up included (exit status {rc}{note})")
print()
for m in lines:
    print(f"- epoch {m['epoch']}: {m['images_per_s']:,.0f} images/s training, {m['seconds']:.1f} s with evaluation, "
          f"val acc {m['val_acc']:.4f}")
later = [m["images_per_s"] for m in lines if m["epoch"] >= 2]
rate = statistics.median(later) if later else None
print()
print(f"rate from epoch 2 on (median): {rate:,.0f} images/s" if rate else "no epoch past the first finished: no warmed-up rate")
with open(results, "a") as f:
    f.write(json.dumps({"part": "train", "epochs": len(lines), "exit": int(rc), "wall_s": int(wall),
                        "images_per_s_from_epoch_2": rate, "val_acc": [m["val_acc"] for m in lines]}) + "\n")
PY
    else
      skipped_for_time "train"
    fi
  else
    skipped_for_time "train"
  fi
fi

if has_part resume; then
  if s=$(budget 90 20) && synthetic; then
    say ""; say "## c. Stop and resume: tiny-cnn, $d_resume_epochs epochs, $primary_backend, stopped by SIGTERM after its first epoch"; say ""
    run=$work/resume-run
    args=(train --model tiny-cnn --optimizer sgd-momentum --lr 0.01 --epochs "$d_resume_epochs" --train-subset "$d_resume_subset"
      --device "$primary_backend" --data-dir "$work/synthetic" "${thread_args[@]}" --out "$run" --offline)
    logline "resume: first part (cap $s s)"
    # Not through timeout: $! must be adanoise's own process (env execs it), which the TERM
    # must reach; the wait below has its own limit.
    env "LD_LIBRARY_PATH=${dir_of[$primary]}:$torch_lib" "${bin_of[$primary]}" "${args[@]}" >> "$log" 2>&1 &
    pid=$!
    # The signal goes once the first epoch is recorded (a checkpoint then exists), or at the cap.
    limit=$(($(date +%s) + s / 2))
    until [ -s "$run/metrics.jsonl" ] || ! kill -0 "$pid" 2>/dev/null || [ "$(date +%s)" -ge "$limit" ]; do
      sleep 0.1
    done
    kill -TERM "$pid" 2>/dev/null
    wait "$pid"; first=$?
    before=$(wc -l < "$run/metrics.jsonl" 2>/dev/null || echo 0)
    s=$(budget 90 5); logline "resume: --resume (cap $s s)"
    ours "$s" "$primary" "${args[@]}" --resume >> "$log" 2>&1
    second=$?
    "$python" - "$run" "$first" "$second" "$before" "$d_resume_epochs" "$results" <<'PY' | tee -a "$report"
import json, os, sys
run, first, second, before, epochs, results = sys.argv[1:7]
epochs = int(epochs)
path = os.path.join(run, "metrics.jsonl")
seen = [json.loads(l)["epoch"] for l in open(path)] if os.path.exists(path) else []
summary = os.path.join(run, "summary.json")
status = json.load(open(summary)).get("status") if os.path.exists(summary) else None
stopped = first == "75"
ok = stopped and second == "0" and status == "finished" and seen == list(range(1, epochs + 1))
print(f"- first run: exit {first} ({'stopped by SIGTERM with a checkpoint' if stopped else 'NOT stopped by the signal as expected'}), "
      f"{before} epoch(s) recorded")
print(f"- --resume: exit {second}, status {status}, epochs recorded {seen}")
print(f"- {'PASS' if ok else 'FAIL'}: the run {'was stopped, resumed and finished' if ok else 'did not stop and resume as expected'}")
with open(results, "a") as f:
    f.write(json.dumps({"part": "resume", "ok": ok, "first_exit": int(first), "resume_exit": int(second),
                        "status": status, "epochs": seen}) + "\n")
PY
  else
    skipped_for_time "resume"
  fi
fi

# --- d. Several cells at once on the one GPU, against as many PyTorch processes.
if has_part concurrency && [ -n "$concurrency" ]; then
  tdev=$(torch_device_for "$primary_backend"); pipeline=$(pipeline_for "$primary_backend")
  say ""; say "## d. Several cells at once ($primary_backend, f32, $d_syn_test-image test set): adanoise from epoch 2 on, PyTorch timed together after its warm-up"; say ""
  # Every model at the first N before any at the next: each model's rate feeds the projection.
  for n in $concurrency; do
    for model in $conc_models; do
      s=$(budget 100 "$conc_min") || { skipped_for_time "concurrency $model x$n"; continue; }
      synthetic || continue
      sweep=$work/sweep-$model-$n; mkdir -p "$sweep"
      printf 'out = "%s"\n[base]\nmodel = "%s"\noptimizer = "sgd-momentum"\nlr = 0.01\nepochs = 3\nbatch_size = %s\ntrain_subset = %s\ndevice = "%s"\ndata_dir = "%s"\n[grid]\nseed = [%s]\n' \
        "$sweep/out" "$model" "$batch" "$conc_subset" "$primary_backend" "$work/synthetic" "$(seq -s, 0 $((n - 1)))" > "$sweep/s.toml"
      logline "concurrency adanoise $model x$n (cap $s s)"
      t0=$(date +%s.%N)
      ours "$s" "$primary" sweep "$sweep/s.toml" \
        --workers "$n" --threads "${threads:-2}" >> "$log" 2>&1
      t1=$(date +%s.%N)
      "$python" - "$sweep/out" "$model" "$n" "$t0" "$t1" >> "$conc" <<'PY'
import glob, json, statistics, sys
out, model, n, t0, t1 = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
rates = []
for path in glob.glob(f"{out}/*/metrics.jsonl"):
    later = [m["images_per_s"] for m in map(json.loads, open(path)) if m["epoch"] >= 2]
    if later:
        rates.append(statistics.median(later))
print(json.dumps({"who": "adanoise", "model": model, "n": n, "finished": len(rates),
                  "aggregate_images_per_s": sum(rates), "per_cell": rates, "wall_s": t1 - t0}))
PY
      s=$(budget 100 20) || { skipped_for_time "concurrency PyTorch $model x$n"; continue; }
      logline "concurrency PyTorch $model x$n (cap $s s)"
      pids=(); tmp=$work/torch-$model-$n; mkdir -p "$tmp"
      for i in $(seq "$n"); do
        capped "$s" "$python" bench/pytorch_baseline.py --model "$model" --steps "$conc_steps" --warmup "$warmup" \
          --batch-size "$batch" --device "$tdev" --channels-last --fused --cudnn-benchmark --device-data "$pipeline" \
          --metrics --barrier "$tmp/barrier" --barrier-count "$n" "${thread_args[@]}" --json > "$tmp/$i.json" 2>> "$log" &
        pids+=($!)
      done
      wait "${pids[@]}"
      "$python" - "$tmp" "$model" "$n" >> "$conc" <<'PY'
import glob, json, sys
tmp, model, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
rates = [json.loads(t)["images_per_s"] for t in (open(p).read().strip() for p in glob.glob(f"{tmp}/*.json")) if t]
print(json.dumps({"who": "pytorch", "model": model, "n": n, "finished": len(rates),
                  "aggregate_images_per_s": sum(rates), "per_process": rates}))
PY
    done
  done
  "$python" bench/gpu/project.py table "$conc" | tee -a "$report"
  say "(adanoise: each cell's median training images/s over epochs 2 and later, summed over the cells; its evaluation passes, between epochs, are not counted. PyTorch: each process's median step after a warm-up, the processes waiting for each other before timing, summed.)"
fi

# --- The other folders' step tables (CubeCL cuda, wgpu), when DISTS asks for them.
for dist in "${working[@]:1}"; do
  if has_part steps && [ "$(budget 60 60)" != 0 ]; then step_table "$dist"; else skipped_for_time "steps ${backend_of[$dist]}"; fi
done

# --- The study's grid on this GPU, projected from the rates above (quick: kept in RESERVE).
if has_part project; then
  say ""
  "$python" bench/gpu/project.py paper "$steps_raw" "$conc" configs/paper.toml | tee -a "$report"
fi

# The log comes back whole only below the device tool's 16 MiB a file.
if [ "$(stat -c %s "$log")" -gt 15000000 ]; then tail -c 14000000 "$log" > "$work/log" && mv "$work/log" "$log"; fi
say ""
say "Done in $(elapsed) s (deadline ${deadline} s). Files: $(cd "$out" && ls | tr '\n' ' ')"
record part=done seconds="$(elapsed)"
