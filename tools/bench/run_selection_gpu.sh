#!/usr/bin/env bash
# Runs the selection-kernel GPU tests and benchmarks in one batch on the GPU machine (see
# docs/kernels.md): the five test binaries, asyncspade-bench-kernels --full and torch_baselines.py.
#
#   tools/bench/run_selection_gpu.sh BIN_DIR OUT_DIR
#
# Writes gpu_tests.log, bench_kernels.log, bench_kernels.json, torch_baselines.log and
# torch_baselines.json to OUT_DIR and ends with a summary; exits non-zero if anything failed.
set -uo pipefail
[[ $# -eq 2 ]] || { echo "usage: $0 BIN_DIR OUT_DIR" >&2; exit 2; }
bin=$1
out=$2
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mkdir -p "$out"
summary=()
failed=0

: > "$out/gpu_tests.log"
for t in topk key_scoring query_prediction quest sparse_attention; do
  exe="$bin/${t}_gpu_test"
  if [[ ! -x $exe ]]; then
    summary+=("FAIL ${t}_gpu_test: $exe not found")
    failed=1
    continue
  fi
  echo "===== ${t}_gpu_test" >> "$out/gpu_tests.log"
  timeout 300 "$exe" >> "$out/gpu_tests.log" 2>&1
  rc=$?
  if [[ $rc -eq 0 ]]; then
    summary+=("PASS ${t}_gpu_test")
  else
    summary+=("FAIL ${t}_gpu_test (exit $rc)")
    failed=1
  fi
done

timeout 500 "$bin/asyncspade-bench-kernels" --full --json "$out/bench_kernels.json" > "$out/bench_kernels.log" 2>&1
rc=$?
if [[ $rc -eq 0 ]]; then summary+=("PASS asyncspade-bench-kernels --full"); else summary+=("FAIL asyncspade-bench-kernels (exit $rc)"); failed=1; fi

timeout 300 python3 "$here/torch_baselines.py" --json "$out/torch_baselines.json" > "$out/torch_baselines.log" 2>&1
rc=$?
if [[ $rc -eq 0 ]]; then summary+=("PASS torch_baselines.py"); else summary+=("FAIL torch_baselines.py (exit $rc)"); failed=1; fi

grep -h '^\[ gpu \]\|^\[  FAILED  \]' "$out/gpu_tests.log"
echo
tail -n 70 "$out/bench_kernels.log"
echo
tail -n 12 "$out/torch_baselines.log"
echo
printf '%s\n' "${summary[@]}"
exit $failed
