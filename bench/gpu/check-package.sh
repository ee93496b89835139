#!/usr/bin/env bash
# Checks here, before any GPU time is spent, that the folders bench/gpu/package.sh made will
# work on the GPU machine, and fails, saying what is wrong, when:
#   - a LibTorch folder's adanoise does not link libtorch_cuda (built against a CPU-only
#     libtorch, or the linker dropped it): there LibTorch would see no GPU;
#   - the libtorch it was built against, or the one checked (LIBTORCH, or PYTHON's PyTorch),
#     lacks libtorch_cuda.so or is another version than the GPU machine's (EXPECT_TORCH,
#     2.11.0+cu130): adanoise refuses a libtorch of another version than its build's, and
#     the GPU machine's python3 holds PyTorch 2.11.0+cu130;
#   - the binary needs a newer glibc than GLIBC_MAX (the GPU machine's, assumed 2.39);
#   - the binary does not start and train one step on libtorch's CPU device here (SMOKE=0
#     leaves that out);
#   - the repository (tracked and untracked-not-ignored files, which the device tool sends)
#     plus the folders carried exceed LIMIT_MIB (64 MiB, the device tool's limit).
#
#   bench/gpu/check-package.sh [FOLDER ...]        (default bench/gpu/dist-tch)
#   env: PYTHON (as ci/libtorch-env.sh: the PyTorch whose libtorch the build used), LIBTORCH
#        (a libtorch folder to check instead), EXPECT_TORCH=2.11.0+cu130, LIMIT_MIB=64,
#        GLIBC_MAX=2.39, SMOKE=1, CARRY (the folders that travel, for the size; default the
#        folders checked)
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
expect=${EXPECT_TORCH:-2.11.0+cu130}; limit_mib=${LIMIT_MIB:-64}; glibc_max=${GLIBC_MAX:-2.39}
python=${PYTHON:-python3}
folders=("$@"); [ ${#folders[@]} -gt 0 ] || folders=(bench/gpu/dist-tch)
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
ok() { echo "ok: $*"; }

# The version of a libtorch folder (PyTorch's torch/ folder or a standalone libtorch/):
# version.py's __version__, or the standalone's build-version file.
libtorch_version() {
  if [ -f "$1/version.py" ]; then
    sed -n "s/^__version__ = ['\"]\([^'\"]*\)['\"].*/\1/p" "$1/version.py" | head -1
  elif [ -f "$1/build-version" ]; then
    head -1 "$1/build-version"
  fi
}
# Checks a libtorch folder ($2 says which one it is): a CUDA build of the expected version.
check_libtorch() {
  local dir=$1 what=$2 version
  if [ ! -d "$dir/lib" ]; then fail "$what ($dir) has no lib/ folder: not a libtorch"; return; fi
  if [ -e "$dir/lib/libtorch_cuda.so" ]; then ok "$what has libtorch_cuda.so ($dir/lib)"
  else fail "$what ($dir) has no lib/libtorch_cuda.so: a CPU-only libtorch, whose build sees no GPU; install PyTorch's CUDA wheel (pip install torch==${expect%%+*} --index-url https://download.pytorch.org/whl/${expect##*+}) and rebuild"; fi
  version=$(libtorch_version "$dir")
  if [ "$version" = "$expect" ]; then ok "$what is libtorch $version"
  else fail "$what ($dir) is libtorch ${version:-of unknown version}, not $expect (the GPU machine's PyTorch): adanoise would refuse to start there; build against PyTorch $expect (or set EXPECT_TORCH if the GPU machine's is another)"; fi
}

for dist in "${folders[@]}"; do
  echo "== $dist"; torch_dir=""; runpath=""
  [ -d "$dist" ] || { fail "$dist is not a folder: make it with bench/gpu/package.sh"; continue; }
  for f in backends precisions; do [ -s "$dist/$f" ] || fail "$dist/$f is missing (bench/gpu/package.sh writes it)"; done
  if [ -x "$dist/adanoise" ]; then bin=$dist/adanoise
  elif [ -f "$dist/adanoise.xz" ]; then
    bin=$work/$(basename "$dist")-adanoise
    xz -dc "$dist/adanoise.xz" > "$bin" && chmod +x "$bin" || { fail "$dist/adanoise.xz does not decompress"; continue; }
  else fail "$dist holds no adanoise or adanoise.xz"; continue; fi
  [ -e "$dist/adanoise" ] && [ -e "$dist/adanoise.xz" ] && \
    fail "$dist holds both adanoise and adanoise.xz: the uncompressed binary would travel too (remove it)"
  readelf -h "$bin" 2>/dev/null | grep -q 'Advanced Micro Devices X86-64' || fail "$dist's adanoise is not an x86-64 ELF binary (the GPU machine is x86-64)"
  grep -qw libtorch "$dist/backends" 2>/dev/null || { ok "$dist measures $(cat "$dist/backends" 2>/dev/null): no libtorch to check"; continue; }

  # The binary's needs: libtorch_cuda must be among them (build.rs links it when the
  # libtorch it builds against has it), and the run path says which libtorch it was built with.
  dynamic=$(readelf -d "$bin" 2>/dev/null)
  needed=$(sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' <<< "$dynamic")
  if grep -qx 'libtorch_cuda.so' <<< "$needed"; then ok "adanoise links libtorch_cuda.so"
  elif ! grep -q '^libtorch' <<< "$needed"; then
    fail "adanoise links no libtorch at all: it was built without the tch feature (FEATURES=tch bench/gpu/package.sh)"
  else fail "adanoise does not link libtorch_cuda.so (it needs: $(echo $needed)): it was built against a CPU-only libtorch, and on the GPU machine LibTorch would see no GPU"; fi
  runpath=$(sed -n 's/.*(R\(UN\)\{0,1\}PATH).*\[\(.*\)\]/\2/p' <<< "$dynamic" | tr ':' '\n' | grep -m1 '/lib$')
  if [ -n "$runpath" ] && [ -d "$runpath" ]; then
    check_libtorch "$(dirname "$runpath")" "the libtorch adanoise was built against"
    missing=$(for lib in $needed; do case $lib in libtorch*|libc10*) [ -e "$runpath/$lib" ] || echo "$lib" ;; esac; done)
    [ -z "$missing" ] && ok "its libtorch libraries are all in $runpath" || fail "$runpath lacks $(echo $missing)"
  else
    echo "note: adanoise's run path (${runpath:-none}) is not a folder here: the libtorch it was built against is not checked"
  fi
  # The version adanoise itself will insist on (compiled in from the build's libtorch).
  if grep -qaF "$expect" "$bin"; then ok "adanoise was compiled for libtorch $expect"
  else fail "adanoise does not name libtorch $expect: it was built against another version and would refuse the GPU machine's"; fi
  # The libtorch checked besides: LIBTORCH, or the PyTorch of PYTHON (as ci/libtorch-env.sh).
  if [ -n "${LIBTORCH:-}" ]; then
    check_libtorch "$LIBTORCH" "LIBTORCH"
  elif torch_dir=$("$python" -c 'import importlib.util as u; print(u.find_spec("torch").submodule_search_locations[0])' 2>/dev/null); then
    check_libtorch "$torch_dir" "the PyTorch of $python"
  elif [ -z "$runpath" ]; then
    fail "no libtorch to check: set PYTHON to the interpreter whose PyTorch the build used, or LIBTORCH"
  fi
  glibc=$(objdump -T "$bin" 2>/dev/null | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1)
  if [ -z "$glibc" ] || [ "$(printf '%s\n%s\n' "${glibc#GLIBC_}" "$glibc_max" | sort -V | tail -1)" = "$glibc_max" ]; then
    ok "adanoise needs glibc ${glibc#GLIBC_} (at most $glibc_max)"
  else fail "adanoise needs ${glibc}, newer than the GPU machine's $glibc_max: build it on an older system"; fi

  # One step on libtorch's CPU device: the binary loads its libtorch (libtorch_cuda included)
  # and passes its own version check.
  if [ "${SMOKE:-1}" = 1 ]; then
    lib=${LIBTORCH:+$LIBTORCH/lib}; lib=${lib:-${torch_dir:+$torch_dir/lib}}; lib=${lib:-$runpath}
    if out=$(LD_LIBRARY_PATH="$lib" timeout 120 "$bin" bench --model baby-cnn --steps 1 --warmup 0 --batch-size 8 \
        --device libtorch-cpu --threads 1 --json 2>&1); then
      ok "adanoise trained a step on libtorch-cpu here (libtorch from $lib)"
    else fail "adanoise did not train a step on libtorch-cpu here (libtorch from $lib): $(tail -3 <<< "$out")"; fi
  fi
done

# What the device tool sends: tracked and untracked-not-ignored files, and the carried folders.
echo "== size"
read -r -a carry <<< "${CARRY-${folders[*]}}"
tree=$(git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
dists=0; [ ${#carry[@]} -gt 0 ] && dists=$(du -cb "${carry[@]}" 2>/dev/null | tail -1 | cut -f1)
total=$((tree + dists))
mib() { awk "BEGIN { printf \"%.1f\", $1 / 1048576 }"; }
if [ "$total" -le $((limit_mib * 1048576)) ]; then
  ok "the repository ($(mib "$tree") MiB) and ${carry[*]} ($(mib "$dists") MiB): $(mib "$total") MiB, within $limit_mib MiB"
else
  fail "the repository ($(mib "$tree") MiB) and ${carry[*]} ($(mib "$dists") MiB) make $(mib "$total") MiB, over the $limit_mib MiB that travel: leave the archive out (ARCHIVE unset) or carry fewer folders"
fi

if [ "$failures" -gt 0 ]; then echo "check-package: $failures problem(s): fix them before spending GPU time"; exit 1; fi
echo "check-package: all checks passed"
