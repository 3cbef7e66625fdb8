#!/usr/bin/env bash
# Builds every GPU test, benchmark and server binary with CUDA and packs them for the GPU machine
# (docs/gpu.md): .gpu/ (the binaries and the libraries that machine lacks, via
# ../shared/gpu/bundle.sh, plus models/stories260K for the engine tests), compressed into
# .gpu-pack/gpu.tar.xz so that the carried tree stays under the 64 MiB limit.
#
#   tools/gpu_bundle.sh [BUILD_DIR]      # default build-gpu; CUDA architectures: $CUDA_ARCHS or 90
#
# Then, on the GPU machine, with .gpu-pack carried (one command runs everything):
#   mkdir -p /tmp/g && tar -xJf .gpu-pack/gpu.tar.xz -C /tmp/g && source /tmp/g/.gpu/env.sh &&
#   ASYNCSPADE_SHARED_DIR=/tmp/g/.gpu/shared tools/bench/run_all_gpu.sh /tmp/g/.gpu/bin "$OUT/gpu"
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
build=${1:-build-gpu}
shared=${ASYNCSPADE_SHARED_DIR:-$root/../shared}
bundle=$shared/gpu/bundle.sh
[[ -x $bundle ]] || { echo "gpu_bundle: $bundle not found; set ASYNCSPADE_SHARED_DIR to the shared folder" >&2; exit 1; }
[[ -d $shared/models/stories260K ]] || { echo "gpu_bundle: $shared/models/stories260K not found (the engine tests need it)" >&2; exit 1; }
command -v nvcc > /dev/null || [[ -x /usr/local/cuda/bin/nvcc ]] || { echo "gpu_bundle: nvcc not found: install the CUDA toolkit" >&2; exit 1; }

kernel_tests=(topk key_scoring query_prediction quest sparse_attention embedding rms_norm rope activation gemm
              paged_kv_append paged_attention sampling)
targets=(engine_gpu_test asyncspade-bench-kernels asyncspade-bench-attention asyncspade-bench-model-kernels
         asyncspade-bench-decode asyncspade asyncspade-controller asyncspade-decode-worker asyncspade-kv-selector)
for t in "${kernel_tests[@]}"; do targets+=("${t}_gpu_test"); done

if [[ ! -f $build/CMakeCache.txt ]]; then
  generator=()
  command -v ninja > /dev/null && generator=(-G Ninja)
  cmake -S . -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DASYNCSPADE_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCHS:-90}"
fi
cmake --build "$build" --target "${targets[@]}" -j "$(nproc)"

rm -rf .gpu .gpu-pack
bins=()
for t in "${targets[@]}"; do bins+=("$build/bin/$t"); done
"$bundle" .gpu/ "${bins[@]}"
strip .gpu/bin/* 2> /dev/null || true
mkdir -p .gpu/shared/models .gpu-pack
cp -r "$shared/models/stories260K" .gpu/shared/models/
tar -cJf .gpu-pack/gpu.tar.xz .gpu
size=$(du -m .gpu-pack/gpu.tar.xz | cut -f1)
echo "gpu_bundle: .gpu-pack/gpu.tar.xz (${size} MiB); carry .gpu-pack and run (docs/gpu.md):"
echo '  mkdir -p /tmp/g && tar -xJf .gpu-pack/gpu.tar.xz -C /tmp/g && source /tmp/g/.gpu/env.sh &&'
echo '  ASYNCSPADE_SHARED_DIR=/tmp/g/.gpu/shared tools/bench/run_all_gpu.sh /tmp/g/.gpu/bin "$OUT/gpu"'
