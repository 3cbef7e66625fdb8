#include <cub/block/block_scan.cuh>

#include "kernels/cuda_utils.cuh"
#include "kernels/topk.h"

namespace asyncspade::kernels::cuda {
namespace {

using selection::kFullMask;
using selection::kNegInfKey;
using selection::OrderedKey;

constexpr int kThreads = 1024;
constexpr int kMaxBins = 2048;
// Rows up to kThreads * kMaxItemsInRegisters positions are read once into registers.
constexpr int kMaxItemsInRegisters = 32;

// The radix digits, most significant first: 11 + 11 + 10 bits of the 32-bit key.
__host__ __device__ constexpr int PassShift(int pass) { return pass == 0 ? 21 : pass == 1 ? 10 : 0; }
__host__ __device__ constexpr int PassBits(int pass) { return pass == 2 ? 10 : 11; }

using BlockScan = cub::BlockScan<int, kThreads>;

struct TopKShared {
  int hist[kMaxBins];
  BlockScan::TempStorage scan;
  int selectable;   // positions of the row whose key is above kNegInfKey
  int digit;        // the digit chosen by the current pass
  int remaining;    // how many of the k must still come from the chosen bin
  int bin_count;    // population of the chosen bin
  int next_slot;    // output slots handed out so far (positions strictly above the threshold)
};

__device__ __forceinline__ int LaneId() { return threadIdx.x & 31; }

// hist[digit] += 1 for every active lane, one shared atomic per distinct digit of the warp: scores
// are concentrated in few exponents, and same-address atomics from one warp would serialise.
__device__ __forceinline__ void CountDigit(int* hist, bool active, uint32_t digit) {
  if (!__any_sync(kFullMask, active)) return;
  const unsigned peers = __match_any_sync(kFullMask, active ? digit : 0xffffffffu);
  if (active && LaneId() == __ffs(peers) - 1) atomicAdd(&hist[digit], __popc(peers));
}

// A distinct output slot for every active lane (one shared atomic per warp); -1 for the others.
__device__ __forceinline__ int TakeSlot(int* counter, bool active) {
  const unsigned ballot = __ballot_sync(kFullMask, active);
  if (ballot == 0) return -1;
  const int leader = __ffs(ballot) - 1;
  int base = 0;
  if (LaneId() == leader) base = atomicAdd(counter, __popc(ballot));
  base = __shfl_sync(kFullMask, base, leader);
  const unsigned lower_lanes = (1u << LaneId()) - 1u;
  return active ? base + __popc(ballot & lower_lanes) : -1;
}

// One CTA per row. kItems > 0: the row (at most kItems * kThreads positions) is read once into
// registers, striped (item i of thread t is position i * kThreads + t); kItems == 0: every pass
// re-reads it from global memory in the same striped order.
template <int kItems>
__global__ void __launch_bounds__(kThreads, 1)
    TopKKernel(const float* __restrict__ scores, int64_t row_stride, const int32_t* __restrict__ lengths,
               int max_len, int k, int32_t* __restrict__ indices, float* __restrict__ values) {
  __shared__ TopKShared sh;
  const int tid = threadIdx.x;
  const float* in = scores + int64_t{blockIdx.x} * row_stride;
  const int len = lengths != nullptr ? min(max(lengths[blockIdx.x], 0), max_len) : max_len;
  int32_t* out_indices = indices + int64_t{blockIdx.x} * k;
  float* out_values = values != nullptr ? values + int64_t{blockIdx.x} * k : nullptr;

  uint32_t keys[kItems > 0 ? kItems : 1];
  if constexpr (kItems > 0) {
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      const int j = i * kThreads + tid;
      keys[i] = j < len ? OrderedKey(in[j]) : 0u;
    }
  }
  // Calls visit(position, key) for every position of the row, stripe by stripe in position order.
  // Every thread makes the same number of calls, so `visit` may use warp and block collectives.
  // Positions past the row's length have key 0 (never selected).
  const auto for_each = [&](auto&& visit) {
    if constexpr (kItems > 0) {
#pragma unroll
      for (int i = 0; i < kItems; ++i) visit(i * kThreads + tid, keys[i]);
    } else {
      for (int base = 0; base < len; base += kThreads) {
        const int j = base + tid;
        visit(j, j < len ? OrderedKey(in[j]) : 0u);
      }
    }
  };
  // The same walk, always re-reading the scores: for the rare paths (short rows, ties at the
  // threshold), so that they do not hold the register copy live.
  const auto for_each_from_memory = [&](auto&& visit) {
    const int stripes = kItems > 0 ? kItems : (len + kThreads - 1) / kThreads;
    for (int stripe = 0; stripe < stripes; ++stripe) {
      const int j = stripe * kThreads + tid;
      visit(j, j < len ? OrderedKey(in[j]) : 0u);
    }
  };
  const auto emit = [&](int slot, int position) {
    out_indices[slot] = position;
    if (out_values != nullptr) out_values[slot] = in[position];
  };

  for (int b = tid; b < kMaxBins; b += kThreads) sh.hist[b] = 0;
  if (tid == 0) {
    sh.selectable = 0;
    sh.next_slot = 0;
  }
  __syncthreads();

  uint32_t prefix = 0;  // the threshold's digits found so far
  uint32_t mask = 0;    // which bits of `prefix` are known
  int remaining = k;
#pragma unroll 1
  for (int pass = 0; pass < 3; ++pass) {
    const int shift = PassShift(pass);
    const int num_bins = 1 << PassBits(pass);
    if (pass > 0) {
      for (int b = tid; b < kMaxBins; b += kThreads) sh.hist[b] = 0;
      __syncthreads();
    }
    int my_selectable = 0;
    for_each([&](int, uint32_t key) {
      const bool candidate = key > kNegInfKey && (key & mask) == prefix;
      my_selectable += candidate;
      CountDigit(sh.hist, candidate, (key >> shift) & uint32_t(num_bins - 1));
    });
    if (pass == 0) {
      const int warp_selectable = __reduce_add_sync(kFullMask, my_selectable);
      if (LaneId() == 0 && warp_selectable > 0) atomicAdd(&sh.selectable, warp_selectable);
    }
    __syncthreads();

    if (pass == 0 && sh.selectable <= k) {
      // Everything selectable is selected; the rest of the row's k slots are padding.
      const int selectable = sh.selectable;
      for_each_from_memory([&](int j, uint32_t key) {
        const int slot = TakeSlot(&sh.next_slot, key > kNegInfKey);
        if (slot >= 0) emit(slot, j);
      });
      for (int i = selectable + tid; i < k; i += kThreads) {
        out_indices[i] = -1;
        if (out_values != nullptr) out_values[i] = -INFINITY;
      }
      return;
    }

    // The bin holding the remaining-th largest candidate, scanning bins from the top: thread t owns
    // bins num_bins-1-2t and num_bins-2-2t (negative: none).
    const int hi_bin = num_bins - 1 - 2 * tid;
    const int lo_bin = hi_bin - 1;
    const int hi_count = hi_bin >= 0 ? sh.hist[hi_bin] : 0;
    const int lo_count = lo_bin >= 0 ? sh.hist[lo_bin] : 0;
    int above = 0;  // candidates in bins above hi_bin
    BlockScan(sh.scan).ExclusiveSum(hi_count + lo_count, above);
    if (above < remaining && remaining <= above + hi_count) {
      sh.digit = hi_bin;
      sh.remaining = remaining - above;
      sh.bin_count = hi_count;
    } else if (above + hi_count < remaining && remaining <= above + hi_count + lo_count) {
      sh.digit = lo_bin;
      sh.remaining = remaining - above - hi_count;
      sh.bin_count = lo_count;
    }
    __syncthreads();
    prefix |= uint32_t(sh.digit) << shift;
    mask |= uint32_t(num_bins - 1) << shift;
    remaining = sh.remaining;
  }

  // `prefix` is now the key of the k-th largest score: take every key above it, and the first
  // `remaining` keys equal to it in position order (all of them when that is all there are).
  const uint32_t threshold = prefix;
  const int ties = sh.bin_count;
  const int above_threshold = k - remaining;
  if (ties == remaining) {
    for_each([&](int j, uint32_t key) {
      const int slot = TakeSlot(&sh.next_slot, key >= threshold);
      if (slot >= 0) emit(slot, j);
    });
    return;
  }
  for_each([&](int j, uint32_t key) {
    const int slot = TakeSlot(&sh.next_slot, key > threshold);
    if (slot >= 0) emit(slot, j);
  });
  int ties_before = 0;  // ties in earlier stripes (the same in every thread)
  for_each_from_memory([&](int j, uint32_t key) {
    const int tie = key == threshold ? 1 : 0;
    int rank = 0, stripe_ties = 0;
    BlockScan(sh.scan).ExclusiveSum(tie, rank, stripe_ties);
    __syncthreads();  // sh.scan is reused by the next stripe
    if (tie && ties_before + rank < remaining) emit(above_threshold + ties_before + rank, j);
    ties_before += stripe_ties;
  });
}

template <int kItems>
cudaError_t Launch(const float* scores, int rows, int64_t row_stride, const int32_t* lengths, int max_len,
                   int k, int32_t* indices, float* values, cudaStream_t stream) {
  TopKKernel<kItems><<<rows, kThreads, 0, stream>>>(scores, row_stride, lengths, max_len, k, indices, values);
  return cudaGetLastError();
}

}  // namespace

size_t TopKWorkspaceBytes(int rows, int max_len, int k) { return 0; }

cudaError_t TopK(const float* scores, int rows, int64_t row_stride, const int32_t* lengths, int max_len,
                 int k, int32_t* indices, float* values, void* workspace, size_t workspace_bytes,
                 cudaStream_t stream) {
  if (rows < 0 || max_len < 0 || k < 0 || row_stride < max_len) return cudaErrorInvalidValue;
  if (rows == 0 || k == 0) return cudaSuccess;
  if (scores == nullptr || indices == nullptr) return cudaErrorInvalidValue;
  if (workspace_bytes < TopKWorkspaceBytes(rows, max_len, k)) return cudaErrorInvalidValue;
  if (max_len <= 4 * kThreads) return Launch<4>(scores, rows, row_stride, lengths, max_len, k, indices, values, stream);
  if (max_len <= 8 * kThreads) return Launch<8>(scores, rows, row_stride, lengths, max_len, k, indices, values, stream);
  if (max_len <= 16 * kThreads) {
    return Launch<16>(scores, rows, row_stride, lengths, max_len, k, indices, values, stream);
  }
  if (max_len <= kMaxItemsInRegisters * kThreads) {
    return Launch<kMaxItemsInRegisters>(scores, rows, row_stride, lengths, max_len, k, indices, values, stream);
  }
  return Launch<0>(scores, rows, row_stride, lengths, max_len, k, indices, values, stream);
}

}  // namespace asyncspade::kernels::cuda
