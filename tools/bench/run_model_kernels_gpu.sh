#!/usr/bin/env bash
# Runs the model-kernel GPU tests and benchmarks in one batch on the GPU machine (see
# docs/kernels_model.md): the eight test binaries, asyncspade-bench-attention,
# asyncspade-bench-model-kernels and torch_attention_baseline.py.
#
#   tools/bench/run_model_kernels_gpu.sh BIN_DIR OUT_DIR [--quick]
#
# Writes model_gpu_tests.log, bench_attention.{log,json}, bench_model_kernels.{log,json} and
# torch_attention.{log,json} to OUT_DIR and ends with a summary; exits non-zero if anything failed.
set -uo pipefail
[[ $# -ge 2 ]] || { echo "usage: $0 BIN_DIR OUT_DIR [--quick]" >&2; exit 2; }
bin=$1
out=$2
quick=()
[[ ${3:-} == --quick ]] && quick=(--quick)
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mkdir -p "$out"
summary=()
failed=0

run() {  # run NAME TIMEOUT LOG COMMAND...
  local name=$1 limit=$2 log=$3
  shift 3
  timeout "$limit" "$@" >> "$log" 2>&1
  local rc=$?
  if [[ $rc -eq 0 ]]; then
    summary+=("PASS $name")
  else
    summary+=("FAIL $name (exit $rc$([[ $rc -eq 124 ]] && echo ', timed out'))")
    failed=1
  fi
}

: > "$out/model_gpu_tests.log"
for t in embedding rms_norm rope activation gemm paged_kv_append paged_attention sampling; do
  exe="$bin/${t}_gpu_test"
  if [[ ! -x $exe ]]; then
    summary+=("FAIL ${t}_gpu_test: $exe not found")
    failed=1
    continue
  fi
  echo "===== ${t}_gpu_test" >> "$out/model_gpu_tests.log"
  run "${t}_gpu_test" 300 "$out/model_gpu_tests.log" "$exe"
done

: > "$out/bench_attention.log"
run asyncspade-bench-attention 300 "$out/bench_attention.log" \
  "$bin/asyncspade-bench-attention" "${quick[@]}" --json "$out/bench_attention.json"
: > "$out/bench_model_kernels.log"
run asyncspade-bench-model-kernels 300 "$out/bench_model_kernels.log" \
  "$bin/asyncspade-bench-model-kernels" "${quick[@]}" --json "$out/bench_model_kernels.json"
: > "$out/torch_attention.log"
run torch_attention_baseline.py 300 "$out/torch_attention.log" \
  python3 "$here/torch_attention_baseline.py" "${quick[@]}" --json "$out/torch_attention.json"

grep -h '^\[  FAILED  \]\|^\[  PASSED  \]\|^FAIL' "$out/model_gpu_tests.log"
echo
cat "$out/bench_attention.log"
echo
cat "$out/bench_model_kernels.log"
echo
cat "$out/torch_attention.log"
echo
printf '%s\n' "${summary[@]}"
exit $failed
