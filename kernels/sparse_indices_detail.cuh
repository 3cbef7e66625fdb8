// The index-list writer of sparse attention, shared by kernels/sparse_attention.cu
// (BuildSparseIndices) and the decode worker's fused Quest expansion
// (services/decode_worker/model/cuda/runner_kernels.cu). Header-only, device code only.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <cub/block/block_scan.cuh>

namespace asyncspade::kernels::cuda::detail {

// One CTA writes one (sequence, KV head) row's list: the sinks [0, sinks_end), then the selected
// positions that are neither sinks nor recent, in their order (a block scan keeps it), then the
// recent window [recent_begin, kv_len), then −1 up to max_indices; thread 0 stores the count.
// selected_at(i), i < num_selected, is the i-th selected position or −1 (none).
template <int kThreads, typename SelectedAt>
__device__ __forceinline__ void WriteSparseIndexList(SelectedAt&& selected_at, int num_selected, int kv_len,
                                                     int sinks, int recent, int32_t* __restrict__ out,
                                                     int max_indices, int32_t* __restrict__ count,
                                                     typename cub::BlockScan<int, kThreads>::TempStorage& scan) {
  using BlockScan = cub::BlockScan<int, kThreads>;
  const int sinks_end = min(max(sinks, 0), kv_len);
  const int recent_begin = max(sinks_end, kv_len - max(recent, 0));
  for (int t = threadIdx.x; t < sinks_end; t += kThreads) out[t] = t;
  int next = sinks_end;  // the same in every thread
  for (int tile = 0; tile < num_selected; tile += kThreads) {
    const int i = tile + threadIdx.x;
    const int32_t j = i < num_selected ? selected_at(i) : -1;
    const int keep = j >= sinks_end && j < recent_begin ? 1 : 0;
    int rank = 0, kept = 0;
    BlockScan(scan).ExclusiveSum(keep, rank, kept);
    __syncthreads();  // `scan` is reused by the next tile
    if (keep) out[next + rank] = j;
    next += kept;
  }
  const int total = next + (kv_len - recent_begin);
  for (int t = threadIdx.x; t < kv_len - recent_begin; t += kThreads) out[next + t] = recent_begin + t;
  for (int t = total + threadIdx.x; t < max_indices; t += kThreads) out[t] = -1;
  if (threadIdx.x == 0) *count = total;
}

}  // namespace asyncspade::kernels::cuda::detail
