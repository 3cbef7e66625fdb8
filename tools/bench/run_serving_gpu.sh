#!/usr/bin/env bash
# The GPU serving path end to end on the GPU machine: `asyncspade launch deploy/h200.yaml` (one decode
# worker on GPU 0, Qwen3-8B random weights), then token-id requests under dense, quest and oracle
# through `asyncspade generate`, one asyncspade request (refused: no selectors in that file),
# `asyncspade ctl status`, and a clean stop.
#
#   tools/bench/run_serving_gpu.sh BIN_DIR OUT_DIR
#
# BIN_DIR holds asyncspade, asyncspade-controller, asyncspade-decode-worker and
# asyncspade-kv-selector. Writes launch.out/launch.err, gen_<policy>.txt, ctl_status.txt and the
# processes' logs under OUT_DIR/logs; prints a summary; exits non-zero if a dense/quest/oracle
# request failed.
set -uo pipefail
[[ $# -eq 2 ]] || { echo "usage: $0 BIN_DIR OUT_DIR" >&2; exit 2; }
bin=$(cd "$1" && pwd)
out=$2
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
mkdir -p "$out/logs"
export NCCL_NVLS_ENABLE=0

"$bin/asyncspade" launch "$root/deploy/h200.yaml" --build-dir "$(dirname "$bin")" --log-dir "$out/logs" \
  > "$out/launch.out" 2> "$out/launch.err" &
launcher=$!
endpoint=""
for _ in $(seq 1 400); do
  endpoint=$(sed -n 's/^grpc: //p' "$out/launch.out")
  [[ -n $endpoint ]] && break
  kill -0 "$launcher" 2>/dev/null || break
  sleep 1
done
if [[ -z $endpoint ]]; then
  echo "FAIL launch: no 'grpc:' line"; tail -n 30 "$out/launch.err"; kill -TERM "$launcher" 2>/dev/null; wait
  exit 1
fi
echo "launched: grpc $endpoint"

prompt=$(seq -s, 1000 5095)  # 4096 prompt tokens: quest/oracle (budget 2048 + 16 + 64) attend sparsely
failed=0
for policy in dense quest oracle asyncspade; do
  start=$(date +%s%N)
  timeout 300 "$bin/asyncspade" generate --endpoint "$endpoint" --prompt-ids "$prompt" --max-tokens 64 \
    --policy "$policy" --print-ids > "$out/gen_$policy.txt" 2> "$out/gen_$policy.err"
  rc=$?
  took=$(( ($(date +%s%N) - start) / 1000000 ))
  ids=$(tail -n 1 "$out/gen_$policy.txt" | wc -w)
  if [[ $policy == asyncspade ]]; then
    echo "asyncspade (expected to be refused without selectors): exit $rc: $(head -c 300 "$out/gen_$policy.err")"
  elif [[ $rc -eq 0 && $ids -eq 64 ]]; then
    echo "PASS generate --policy $policy: 64 tokens in ${took} ms (4096-token prompt)"
  else
    echo "FAIL generate --policy $policy: exit $rc, $ids ids: $(head -c 300 "$out/gen_$policy.err")"; failed=1
  fi
done
"$bin/asyncspade" ctl --endpoint "$endpoint" status > "$out/ctl_status.txt" 2>&1
head -n 20 "$out/ctl_status.txt"
kill -TERM "$launcher"
wait "$launcher"
echo "launcher exited with $?"
tail -n 5 "$out/launch.err"
exit $failed
