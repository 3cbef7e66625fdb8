#!/usr/bin/env bash
# Runs the whole CPU test suite (what CI runs): unit, integration and fault tests, through CTest.
# GPU tests live in tests/gpu and are run by hand on a GPU machine (see docs/gpu.md).
# Extra arguments go to ctest (e.g. -R tokenizer, -L unit).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${ASYNCSPADE_BUILD_DIR:-$root/build}
[[ -f $build/build.ninja || -f $build/Makefile ]] || {
  echo "test: no build in $build; run ./tools/setup.sh first" >&2
  exit 2
}
cmake --build "$build" -j "${ASYNCSPADE_JOBS:-$(nproc)}"
cd "$build"
ctest --output-on-failure -j "${ASYNCSPADE_TEST_JOBS:-$(nproc)}" -LE gpu "$@"
