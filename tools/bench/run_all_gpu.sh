#!/usr/bin/env bash
# Every GPU test and benchmark in one command on the GPU machine (docs/gpu.md):
#   1. run_engine_gpu.sh    engine_gpu_test (TP tests on two GPUs) + asyncspade-bench-decode
#   2. run_selection_gpu.sh selection-kernel tests + asyncspade-bench-kernels + torch baselines
#      run_model_kernels_gpu.sh model-kernel tests + attention/model-kernel benchmarks + torch
#      (2 in parallel, one per GPU, when two GPUs are visible; else one after the other)
#   3. run_serving_gpu.sh   asyncspade launch deploy/h200.yaml, generate under each policy, stop
#
#   tools/bench/run_all_gpu.sh BIN_DIR OUT_DIR [--quick]
#
# Each part writes its logs and JSON under OUT_DIR/<part>/ and its summary to
# OUT_DIR/<part>_summary.txt; this script ends with every PASS/FAIL line and exits non-zero if any
# part failed. ASYNCSPADE_SHARED_DIR must point at a shared/ holding models/stories260K.
set -uo pipefail
[[ $# -ge 2 ]] || { echo "usage: $0 BIN_DIR OUT_DIR [--quick]" >&2; exit 2; }
bin=$(cd "$1" && pwd)
out=$2
quick=${3:-}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mkdir -p "$out"
export ASYNCSPADE_SOURCE_DIR=${ASYNCSPADE_SOURCE_DIR:-$(cd "$here/../.." && pwd)}
export NCCL_NVLS_ENABLE=0
gpus=$(nvidia-smi -L 2> /dev/null | grep -c '^GPU' || true)
echo "run_all_gpu: ${gpus} GPU(s)"
failed=0

part() {  # part NAME COMMAND...: runs a part script, its output to OUT_DIR/NAME_summary.txt
  local name=$1
  shift
  "$@" > "$out/${name}_summary.txt" 2>&1
  local rc=$?
  echo "rc=$rc" >> "$out/${name}_summary.txt"
  return $rc
}

part engine "$here/run_engine_gpu.sh" "$bin" "$out/engine" $quick || failed=1
if [[ $gpus -ge 2 ]]; then
  CUDA_VISIBLE_DEVICES=0 part selection "$here/run_selection_gpu.sh" "$bin" "$out/selection" & sel=$!
  CUDA_VISIBLE_DEVICES=1 part model_kernels "$here/run_model_kernels_gpu.sh" "$bin" "$out/model_kernels" $quick & mk=$!
  wait $sel || failed=1
  wait $mk || failed=1
else
  part selection "$here/run_selection_gpu.sh" "$bin" "$out/selection" || failed=1
  part model_kernels "$here/run_model_kernels_gpu.sh" "$bin" "$out/model_kernels" $quick || failed=1
fi
CUDA_VISIBLE_DEVICES=0 part serving "$here/run_serving_gpu.sh" "$bin" "$out/serving" || failed=1

for name in engine selection model_kernels serving; do
  echo "== $name"
  grep -h '^PASS\|^FAIL\|^rc=' "$out/${name}_summary.txt"
done
echo "run_all_gpu: $([[ $failed -eq 0 ]] && echo 'every part passed' || echo 'SOME PART FAILED')"
exit $failed
