#!/usr/bin/env bash
# Runs the GPU engine's tests and decode-step benchmarks in one batch on the GPU machine (see
# docs/gpu_engine.md): engine_gpu_test (transformers fixtures, stories260K, CUDA graphs, prefill
# paths, quest/oracle, tensor parallelism when two GPUs are visible), then asyncspade-bench-decode.
#
#   tools/bench/run_engine_gpu.sh BIN_DIR OUT_DIR [--quick]
#
# The tests find the fixtures under the repository (ASYNCSPADE_SOURCE_DIR, set here to this
# checkout) and stories260K under ASYNCSPADE_SHARED_DIR (set it to the copied shared/ folder; the
# stories tests skip without it). Writes engine_gpu_test.log, bench_decode.log and bench_decode.json
# to OUT_DIR and ends with a summary; exits non-zero if anything failed.
set -uo pipefail
[[ $# -ge 2 ]] || { echo "usage: $0 BIN_DIR OUT_DIR [--quick]" >&2; exit 2; }
bin=$1
out=$2
quick=()
[[ ${3:-} == --quick ]] && quick=(--quick)
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export ASYNCSPADE_SOURCE_DIR=${ASYNCSPADE_SOURCE_DIR:-$(cd "$here/../.." && pwd)}
export NCCL_NVLS_ENABLE=0  # never NVLink multicast on the shared machine
mkdir -p "$out"
summary=()
failed=0

run() {  # run NAME TIMEOUT LOG COMMAND...
  local name=$1 limit=$2 log=$3
  shift 3
  local start=$SECONDS
  timeout "$limit" "$@" >> "$log" 2>&1
  local rc=$?
  local took=$((SECONDS - start))
  if [[ $rc -eq 0 ]]; then
    summary+=("PASS $name (${took}s)")
  else
    summary+=("FAIL $name (exit $rc$([[ $rc -eq 124 ]] && echo ', timed out'), ${took}s)")
    failed=1
  fi
}

nvidia-smi --query-gpu=index,name,memory.total,memory.used --format=csv > "$out/gpus.txt" 2>&1 || true

: > "$out/engine_gpu_test.log"
if [[ -x $bin/engine_gpu_test ]]; then
  run engine_gpu_test 240 "$out/engine_gpu_test.log" "$bin/engine_gpu_test"
else
  summary+=("FAIL engine_gpu_test: $bin/engine_gpu_test not found")
  failed=1
fi

: > "$out/bench_decode.log"
if [[ -x $bin/asyncspade-bench-decode ]]; then
  run asyncspade-bench-decode 300 "$out/bench_decode.log" \
    "$bin/asyncspade-bench-decode" "${quick[@]}" --json "$out/bench_decode.json"
else
  summary+=("FAIL asyncspade-bench-decode: $bin/asyncspade-bench-decode not found")
  failed=1
fi

cat "$out/gpus.txt"
echo
grep -h '^\[ gpu \]\|^\[  FAILED  \]\|^\[  PASSED  \]\|^\[  SKIPPED \] [0-9]\|^FAIL' "$out/engine_gpu_test.log"
# Why tests skipped (one line per reason).
grep -h -A1 ': Skipped$' "$out/engine_gpu_test.log" | grep -v -e ': Skipped$' -e '^--$' | sort | uniq -c
echo
cat "$out/bench_decode.log"
echo
printf '%s\n' "${summary[@]}"
exit $failed
