// Device helpers shared by the model-forward kernels: 16-byte bf16 vectors, warp reductions and
// cp.async. Header-only, device code only (included by kernels/*.cu).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/launch.h"

namespace asyncspade::kernels::cuda::detail {

constexpr unsigned kFullWarpMask = 0xffffffffu;
// Eight bf16 values: the unit of every vectorised load and store (16 bytes).
constexpr int kBf16PerVec = 8;

// A uint4 holds 8 bf16 values; element 2i is the low half of 32-bit word i (little-endian).
__device__ __forceinline__ void UnpackBf16x8(const uint4& packed, float (&out)[8]) {
  const uint32_t words[4] = {packed.x, packed.y, packed.z, packed.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    out[2 * i] = __uint_as_float(words[i] << 16);
    out[2 * i + 1] = __uint_as_float(words[i] & 0xffff0000u);
  }
}

__device__ __forceinline__ uint32_t PackBf16x2(float lo, float hi) {
  const __nv_bfloat162 pair = __floats2bfloat162_rn(lo, hi);  // .x (low half) = lo
  return *reinterpret_cast<const uint32_t*>(&pair);
}

__device__ __forceinline__ uint4 PackBf16x8(const float (&in)[8]) {
  uint4 packed;
  packed.x = PackBf16x2(in[0], in[1]);
  packed.y = PackBf16x2(in[2], in[3]);
  packed.z = PackBf16x2(in[4], in[5]);
  packed.w = PackBf16x2(in[6], in[7]);
  return packed;
}

// Programmatic dependent launch (kernels/launch.h; sm_90+, no-ops below). A decode-step kernel calls
// LetDependentGridsLaunch() first thing: the kernel launched after it with LaunchProgrammatic may
// then start early (the GEMV streams its first weights meanwhile). That kernel calls
// WaitForPrecedingGrid() before it touches anything earlier work writes: it returns once the kernel
// before it has completed and its writes are visible. Both are harmless in ordinary launches.
__device__ __forceinline__ void LetDependentGridsLaunch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

__device__ __forceinline__ void WaitForPrecedingGrid() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Launches `kernel` with programmatic dependent launch when UseProgrammaticLaunch() (kernels/
// launch.h), the ordinary way otherwise. The kernel must call WaitForPrecedingGrid() before it reads
// or writes memory that earlier work in the stream touches.
template <typename... Params, typename... Args>
cudaError_t LaunchProgrammatic(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem_bytes,
                               cudaStream_t stream, Args... args) {
  if (!UseProgrammaticLaunch()) {
    kernel<<<grid, block, smem_bytes, stream>>>(args...);
    return cudaGetLastError();
  }
  cudaLaunchConfig_t launch = {};
  launch.gridDim = grid;
  launch.blockDim = block;
  launch.dynamicSmemBytes = smem_bytes;
  launch.stream = stream;
  cudaLaunchAttribute attribute = {};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  launch.attrs = &attribute;
  launch.numAttrs = 1;
  return cudaLaunchKernelEx(&launch, kernel, static_cast<Params>(args)...);
}

__device__ __forceinline__ float RoundToBf16(float x) {
  return __bfloat162float(__float2bfloat16_rn(x));
}

__device__ __forceinline__ float WarpSum(float x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(kFullWarpMask, x, offset);
  return x;
}

__device__ __forceinline__ float WarpMax(float x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    x = fmaxf(x, __shfl_xor_sync(kFullWarpMask, x, offset));
  }
  return x;
}

// Sum over the whole CTA (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
// `scratch` holds 32 floats. Contains __syncthreads: call it from every thread.
__device__ __forceinline__ float BlockSum(float x, float* scratch) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int num_warps = blockDim.x >> 5;
  x = WarpSum(x);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = x;
  __syncthreads();
  x = lane < num_warps ? scratch[lane] : 0.0f;
  return WarpSum(x);
}

__host__ __device__ __forceinline__ bool IsAligned16(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & 15u) == 0;
}

// cp.async of 16 bytes, bypassing L1 (.cg). With `valid` false nothing is read and the 16 shared
// bytes are zero-filled (src-size 0), so masked rows never touch memory that may be unallocated.
__device__ __forceinline__ void CpAsync16(void* smem_dst, const void* gmem_src, bool valid) {
  const uint32_t dst = static_cast<uint32_t>(__cvta_generic_to_shared(smem_dst));
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem_src),
               "r"(src_bytes)
               : "memory");
}

// The same copy through L1 (.ca): for small operands that several warps of an SM read again
// (the activations of a skinny GEMM), while streamed ones use the .cg form above.
__device__ __forceinline__ void CpAsync16CacheAll(void* smem_dst, const void* gmem_src,
                                                  bool valid) {
  const uint32_t dst = static_cast<uint32_t>(__cvta_generic_to_shared(smem_dst));
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.ca.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem_src),
               "r"(src_bytes)
               : "memory");
}

__device__ __forceinline__ void CpAsyncCommit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}

// Waits until at most `kPending` committed groups are still in flight.
template <int kPending>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}


// ---- bf16 tensor-core fragments (mma.sync m16n8k16, ldmatrix), sm_80+ ----

// Element offset of 16-byte chunk `chunk` of row `row` in a [rows][kHeadDim] swizzled tile.
template <int kHeadDim>
__device__ __forceinline__ int SwizzledOffset(int row, int chunk) {
  return row * kHeadDim + ((chunk ^ (row & 7)) << 3);
}

__device__ __forceinline__ void LdMatrixX4(uint32_t (&r)[4], const __nv_bfloat16* smem_ptr) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem_ptr));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}

__device__ __forceinline__ void LdMatrixX4Trans(uint32_t (&r)[4], const __nv_bfloat16* smem_ptr) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem_ptr));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}

// d += a · b for one m16n8k16 tile (bf16 inputs, fp32 accumulators).
__device__ __forceinline__ void MmaBf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                        uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__host__ __device__ constexpr int CeilDiv(int a, int b) { return (a + b - 1) / b; }

}  // namespace asyncspade::kernels::cuda::detail
