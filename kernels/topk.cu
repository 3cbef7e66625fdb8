#include <algorithm>
#include <atomic>
#include <cub/block/block_scan.cuh>

#include "kernels/cuda_utils.cuh"
#include "kernels/topk.h"

namespace asyncspade::kernels::cuda {
namespace {

using selection::kFullMask;
using selection::kNegInfKey;
using selection::OrderedKey;

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

// `n` consecutive slots for every lane (lanes in order), one shared atomic per warp; returns the
// lane's first slot. Every lane of the warp must call it.
__device__ __forceinline__ int WarpReserve(int* counter, int n) {
  if (!__any_sync(kFullMask, n != 0)) return 0;
  const int lane = LaneId();
  int inclusive = n;
#pragma unroll
  for (int offset = 1; offset < 32; offset <<= 1) {
    const int other = __shfl_up_sync(kFullMask, inclusive, offset);
    if (lane >= offset) inclusive += other;
  }
  int base = 0;
  if (lane == 31) base = atomicAdd(counter, inclusive);
  base = __shfl_sync(kFullMask, base, 31);
  return base + inclusive - n;
}

// ---- The first implementation: radix select with the row in registers ------------------------

namespace register_radix {

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

// One CTA per row. kItems > 0: the row (at most kItems * kThreads positions) is read once into
// registers, striped (item i of thread t is position i * kThreads + t); kItems == 0: every pass
// re-reads it from global memory in the same striped order.
template <int kItems>
__global__ void __launch_bounds__(kThreads, 1)
    RegisterRadixTopKKernel(const float* __restrict__ scores, int64_t row_stride, const int32_t* __restrict__ lengths,
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
cudaError_t LaunchItems(const float* scores, int rows, int64_t row_stride, const int32_t* lengths, int max_len,
                        int k, int32_t* indices, float* values, cudaStream_t stream) {
  RegisterRadixTopKKernel<kItems><<<rows, kThreads, 0, stream>>>(scores, row_stride, lengths, max_len, k, indices, values);
  return cudaGetLastError();
}

cudaError_t Launch(const float* scores, int rows, int64_t row_stride, const int32_t* lengths, int max_len, int k,
                   int32_t* indices, float* values, cudaStream_t stream) {
  if (max_len <= 4 * kThreads) return LaunchItems<4>(scores, rows, row_stride, lengths, max_len, k, indices, values, stream);
  if (max_len <= 8 * kThreads) return LaunchItems<8>(scores, rows, row_stride, lengths, max_len, k, indices, values, stream);
  if (max_len <= 16 * kThreads) {
    return LaunchItems<16>(scores, rows, row_stride, lengths, max_len, k, indices, values, stream);
  }
  if (max_len <= kMaxItemsInRegisters * kThreads) {
    return LaunchItems<kMaxItemsInRegisters>(scores, rows, row_stride, lengths, max_len, k, indices, values, stream);
  }
  return LaunchItems<0>(scores, rows, row_stride, lengths, max_len, k, indices, values, stream);
}

}  // namespace register_radix

// ---- Streaming: one histogram pass over HBM, one re-read (L2), the rest on chip ---------------
//
// (1) Histogram of the top 12 bits of every selectable key (plain shared atomics: 4096 bins spread
//     same-warp collisions enough that warp aggregation costs more than it saves). The bin holding
//     the k-th largest key is the "top bin".
// (2) Re-read the row (it is still in L2): keys above the top bin are selected at once; the top
//     bin's keys are counted by their next 10 bits and, when they fit (`capacity`), stored with
//     their positions in shared memory.
// (3), (4) Two more 10-bit digits over the stored candidates (or, when the top bin overflowed
//     shared memory, over the row re-read with the top-bin filter) give the exact key of the k-th
//     largest score, selecting everything above it on the way.
// (5) When only some of the keys equal to that threshold are needed, the lowest positions win:
//     an ordered block scan over the row, stopping as soon as enough ties are found.
// Slots are reserved with one shared atomic per warp and batch, so the output order within a row
// is arbitrary; the set is exactly the CPU reference's.
namespace streaming {

// Many rows (more than SMs): 512 threads, two CTAs per SM. Few rows: 1024 threads, one CTA per SM,
// so that a CTA keeps twice as many loads in flight.
constexpr int kThreadsManyRows = 512;
constexpr int kThreadsFewRows = 1024;
constexpr int kVecsPerThread = 4;  // float4 loads in flight per thread and batch
constexpr int kBatch = 4 * kVecsPerThread;
constexpr int kTopShift = 20;  // digit 1: key bits 31..20
constexpr int kTopBins = 4096;
constexpr int kLowBits = 10;  // digits 2 and 3: bits 19..10 and 9..0
constexpr int kLowBins = 1 << kLowBits;
constexpr uint32_t kLowMask = kLowBins - 1;
// Candidate capacity (8 bytes each): with many rows two CTAs share an SM (64 KB each); with at most
// one row per SM a CTA may take most of the SM's shared memory.
constexpr int kCandidatesManyRows = 8192;
constexpr int kCandidatesFewRows = 24576;

template <int kThreads>
struct Shared {
  using BlockScan = cub::BlockScan<int, kThreads>;
  int hist[kTopBins];
  typename BlockScan::TempStorage scan;
  int digit;           // the bin chosen by the last SelectBin
  int remaining;       // how many of the k must still come from that bin
  int bin_count;       // population of that bin
  int total;           // population of all bins
  int next_slot;       // output slots handed out so far
  int num_candidates;  // top-bin keys stored in shared memory
};

// The bin holding the `remaining`-th largest counted key, scanning from the top bin (thread t owns
// bins kBins-1-t*kPerThread downwards). Ends with a barrier; hist may be overwritten afterwards.
template <int kThreads, int kBins>
__device__ __forceinline__ void SelectBin(Shared<kThreads>& sh, int remaining) {
  constexpr int kPerThread = kBins / kThreads;
  static_assert(kPerThread * kThreads == kBins, "bins tile the threads");
  const int top = kBins - 1 - static_cast<int>(threadIdx.x) * kPerThread;
  int counts[kPerThread];
  int sum = 0;
#pragma unroll
  for (int i = 0; i < kPerThread; ++i) {
    counts[i] = sh.hist[top - i];
    sum += counts[i];
  }
  int above = 0;
  int total = 0;
  typename Shared<kThreads>::BlockScan(sh.scan).ExclusiveSum(sum, above, total);
#pragma unroll
  for (int i = 0; i < kPerThread; ++i) {
    if (above < remaining && remaining <= above + counts[i]) {
      sh.digit = top - i;
      sh.remaining = remaining - above;
      sh.bin_count = counts[i];
    }
    above += counts[i];
  }
  if (threadIdx.x == 0) sh.total = total;
  __syncthreads();
}

// Walks the `len` scores at `in` in batches: every thread calls visit(x, valid, first, stride) the
// same number of times, so `visit` may use warp collectives. Item i of a batch is the score at
// position first + (i / 4) * stride + i % 4, present when bit i of `valid` is set. The body is read
// as aligned float4s (kVecsPerThread per thread in flight); the unaligned head and the tail (at most
// 3 + 3 scores) come first, as item 0 of one batch.
template <int kThreads, int kVecs = kVecsPerThread, typename Visit>
__device__ __forceinline__ void ForEachBatch(const float* __restrict__ in, int len, Visit&& visit) {
  constexpr int kItems = 4 * kVecs;
  static_assert(kItems <= 32, "one bit of `valid` per item");
  const int misaligned = static_cast<int>((reinterpret_cast<uintptr_t>(in) >> 2) & 3);
  const int head = min(len, (4 - misaligned) & 3);
  const int num_vecs = (len - head) >> 2;
  const int tail_begin = head + 4 * num_vecs;
  const int leftovers = head + (len - tail_begin);
  if (leftovers > 0) {  // the same in every thread
    float x[kItems];
#pragma unroll
    for (int i = 0; i < kItems; ++i) x[i] = 0.0f;
    uint32_t valid = 0;
    int first = 0;
    const int t = static_cast<int>(threadIdx.x);
    if (t < leftovers) {
      first = t < head ? t : tail_begin + (t - head);
      x[0] = in[first];
      valid = 1;
    }
    visit(x, valid, first, 0);
  }
  const float4* vecs = reinterpret_cast<const float4*>(in + head);
  for (int v0 = 0; v0 < num_vecs; v0 += kThreads * kVecs) {
    float x[kItems];
    uint32_t valid = 0;
#pragma unroll
    for (int u = 0; u < kVecs; ++u) {
      const int v = v0 + u * kThreads + static_cast<int>(threadIdx.x);
      float4 f = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      if (v < num_vecs) {
        f = vecs[v];
        valid |= 0xfu << (4 * u);
      }
      x[4 * u] = f.x;
      x[4 * u + 1] = f.y;
      x[4 * u + 2] = f.z;
      x[4 * u + 3] = f.w;
    }
    visit(x, valid, head + 4 * (v0 + static_cast<int>(threadIdx.x)), 4 * kThreads);
  }
}

__device__ __forceinline__ int ItemPosition(int first, int stride, int i) { return first + (i >> 2) * stride + (i & 3); }

// The whole kStreaming selection of one row (`len` scores at `in`) by the calling CTA, into
// out_indices / out_values [k]. `candidates` holds `capacity` (key, position) pairs. Starts by
// initialising `sh`; call it from every thread, with no output slot written yet.
template <int kThreads>
__device__ __forceinline__ void StreamingSelectRow(Shared<kThreads>& sh, uint2* candidates,
                                                   const float* __restrict__ in, int len, int k,
                                                   int capacity, int32_t* __restrict__ out_indices,
                                                   float* __restrict__ out_values) {
  const int tid = static_cast<int>(threadIdx.x);
  const auto emit = [&](int slot, int position, float value) {
    out_indices[slot] = position;
    if (out_values != nullptr) out_values[slot] = value;
  };
  const auto emit_from_memory = [&](int slot, int position) {
    out_indices[slot] = position;
    if (out_values != nullptr) out_values[slot] = in[position];
  };

  for (int b = tid; b < kTopBins; b += kThreads) sh.hist[b] = 0;
  if (tid == 0) {
    sh.next_slot = 0;
    sh.num_candidates = 0;
  }
  __syncthreads();

  // (1) Histogram of the top 12 bits of the selectable keys (NaN and −inf have bins < 8, below
  // every finite score's, and are not counted).
  ForEachBatch<kThreads>(in, len, [&](const float(&x)[kBatch], uint32_t valid, int, int) {
#pragma unroll
    for (int i = 0; i < kBatch; ++i) {
      if ((valid >> i) & 1u) {
        const uint32_t key = OrderedKey(x[i]);
        if (key > kNegInfKey) atomicAdd(&sh.hist[key >> kTopShift], 1);
      }
    }
  });
  __syncthreads();
  SelectBin<kThreads, kTopBins>(sh, k);

  if (sh.total <= k) {
    // Every selectable score is selected; the rest of the row's k slots are padding.
    const int total = sh.total;
    ForEachBatch<kThreads>(in, len, [&](const float(&x)[kBatch], uint32_t valid, int first, int stride) {
      uint32_t take = 0;
#pragma unroll
      for (int i = 0; i < kBatch; ++i) {
        if (((valid >> i) & 1u) && OrderedKey(x[i]) > kNegInfKey) take |= 1u << i;
      }
      int slot = WarpReserve(&sh.next_slot, __popc(take));
#pragma unroll
      for (int i = 0; i < kBatch; ++i) {
        if ((take >> i) & 1u) emit(slot++, ItemPosition(first, stride, i), x[i]);
      }
    });
    for (int i = total + tid; i < k; i += kThreads) emit(i, -1, -INFINITY);
    return;
  }

  const uint32_t top_bin = static_cast<uint32_t>(sh.digit);  // ≥ 8: it holds selectable keys
  int remaining = sh.remaining;
  const bool buffered = sh.bin_count <= capacity;
  for (int b = tid; b < kLowBins; b += kThreads) sh.hist[b] = 0;  // SelectBin ended with a barrier
  __syncthreads();

  // (2) Keys above the top bin are selected; the top bin's are counted by digit 2 and stored.
  ForEachBatch<kThreads>(in, len, [&](const float(&x)[kBatch], uint32_t valid, int first, int stride) {
    uint32_t above = 0;
    uint32_t in_bin = 0;
#pragma unroll
    for (int i = 0; i < kBatch; ++i) {
      if ((valid >> i) & 1u) {
        const uint32_t key = OrderedKey(x[i]);
        const uint32_t bin = key >> kTopShift;
        if (bin > top_bin) {
          above |= 1u << i;
        } else if (bin == top_bin) {
          in_bin |= 1u << i;
          atomicAdd(&sh.hist[(key >> kLowBits) & kLowMask], 1);
        }
      }
    }
    int slot = WarpReserve(&sh.next_slot, __popc(above));
#pragma unroll
    for (int i = 0; i < kBatch; ++i) {
      if ((above >> i) & 1u) emit(slot++, ItemPosition(first, stride, i), x[i]);
    }
    if (buffered) {
      int c = WarpReserve(&sh.num_candidates, __popc(in_bin));
#pragma unroll
      for (int i = 0; i < kBatch; ++i) {
        if ((in_bin >> i) & 1u) {
          // c < capacity always holds (the bin's population was counted in (1)); the guard only
          // keeps shared memory safe should the scores change under the kernel.
          if (c < capacity) candidates[c] = make_uint2(OrderedKey(x[i]), static_cast<uint32_t>(ItemPosition(first, stride, i)));
          ++c;
        }
      }
    }
  });
  __syncthreads();
  SelectBin<kThreads, kLowBins>(sh, remaining);
  const uint32_t prefix22 = (top_bin << kLowBits) | static_cast<uint32_t>(sh.digit);  // threshold >> 10
  remaining = sh.remaining;
  const int num_candidates = min(sh.num_candidates, capacity);
  for (int b = tid; b < kLowBins; b += kThreads) sh.hist[b] = 0;
  __syncthreads();

  // visit(valid, key, position) for every key of the top bin (and invalid fillers), the same number
  // of times in every thread: from shared memory, or re-reading the row when the bin overflowed.
  const auto for_each_candidate = [&](auto&& visit) {
    if (buffered) {
      for (int c0 = 0; c0 < num_candidates; c0 += kThreads) {
        const int c = c0 + tid;
        const bool valid = c < num_candidates;
        const uint2 entry = valid ? candidates[c] : make_uint2(0u, 0u);
        visit(valid, entry.x, static_cast<int>(entry.y));
      }
    } else {
      ForEachBatch<kThreads>(in, len, [&](const float(&x)[kBatch], uint32_t valid, int first, int stride) {
#pragma unroll
        for (int i = 0; i < kBatch; ++i) {
          const bool present = ((valid >> i) & 1u) != 0;
          const uint32_t key = present ? OrderedKey(x[i]) : 0u;
          visit(present && (key >> kTopShift) == top_bin, key, ItemPosition(first, stride, i));
        }
      });
    }
  };

  // (3) Top-bin keys above digit 2 are selected; those on it are counted by digit 3.
  for_each_candidate([&](bool valid, uint32_t key, int position) {
    const uint32_t high = key >> kLowBits;
    const int slot = TakeSlot(&sh.next_slot, valid && high > prefix22);
    if (slot >= 0) emit_from_memory(slot, position);
    if (valid && high == prefix22) atomicAdd(&sh.hist[key & kLowMask], 1);
  });
  __syncthreads();
  SelectBin<kThreads, kLowBins>(sh, remaining);
  const uint32_t threshold = (prefix22 << kLowBits) | static_cast<uint32_t>(sh.digit);  // the k-th largest key
  remaining = sh.remaining;  // how many keys equal to the threshold are selected
  const bool take_all_ties = sh.bin_count == remaining;

  // (4) Keys above the threshold (within prefix22), and the ties when all of them are selected.
  for_each_candidate([&](bool valid, uint32_t key, int position) {
    const bool take =
        valid && (key >> kLowBits) == prefix22 && (key > threshold || (take_all_ties && key == threshold));
    const int slot = TakeSlot(&sh.next_slot, take);
    if (slot >= 0) emit_from_memory(slot, position);
  });
  if (take_all_ties) return;

  // (5) The first `remaining` ties in position order take slots k − remaining … k − 1. Stripes of
  // 4 consecutive positions per thread; stops once enough ties are found (uniform condition).
  using ItemsScan = cub::BlockScan<int, kThreads>;
  const int above_threshold = k - remaining;
  int ties_before = 0;  // ties in earlier stripes, the same in every thread
  for (int base = 0; base < len && ties_before < remaining; base += 4 * kThreads) {
    int tie[4];
    int rank[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int j = base + 4 * tid + i;
      tie[i] = j < len && OrderedKey(in[j]) == threshold ? 1 : 0;
    }
    int stripe_ties = 0;
    ItemsScan(sh.scan).ExclusiveSum(tie, rank, stripe_ties);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      if (tie[i] && ties_before + rank[i] < remaining) emit_from_memory(above_threshold + ties_before + rank[i], base + 4 * tid + i);
    }
    ties_before += stripe_ties;
    __syncthreads();  // sh.scan is reused by the next stripe
  }
}

template <int kThreads, int kMinBlocksPerSm>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    StreamingTopKKernel(const float* __restrict__ scores, int64_t row_stride, const int32_t* __restrict__ lengths,
                        int max_len, int k, int capacity, int32_t* __restrict__ indices, float* __restrict__ values) {
  __shared__ Shared<kThreads> sh;
  extern __shared__ uint2 candidates[];  // (key, position) of the top bin's scores
  const float* in = scores + int64_t{blockIdx.x} * row_stride;
  const int len = lengths != nullptr ? min(max(lengths[blockIdx.x], 0), max_len) : max_len;
  int32_t* out_indices = indices + int64_t{blockIdx.x} * k;
  float* out_values = values != nullptr ? values + int64_t{blockIdx.x} * k : nullptr;
  StreamingSelectRow<kThreads>(sh, candidates, in, len, k, capacity, out_indices, out_values);
}

// ---- kSampledThreshold: one read of the row, the selection on chip ----
//
// kStreaming reads every row twice (a histogram, then a re-read to pick the scores above the
// k-th's bin) and counts every score with a shared atomic. This variant reads the row once and
// keeps what matters in shared memory:
// (1) A sample of the row (one float4 per thread, spread evenly over the row) estimates a filter
//     key F such that about T = sqrt(k · capacity) scores are ≥ F (two histogram levels, 12 + 10
//     bits, over the sample: F is the lower boundary of the 22-bit bin holding the sample's
//     (T · sample / len)-th largest key). Rows that fit the buffer (len ≤ capacity) skip it: F is
//     the lowest selectable key.
// (2) One read of the row stores every score with key ≥ F, with its position, in shared memory
//     (one shared atomic per warp and batch; no histogram).
// (3) When k ≤ count ≤ capacity, the top k of the row are the top k of the stored scores (every
//     score not stored is below F, and at least k stored scores are ≥ F): three digits (12, 10, 10
//     bits) over the stored scores find the exact k-th largest key, selecting everything above it
//     on the way; ties at it are taken in position order by an ordered scan over the row, as in
//     kStreaming (only when some but not all of them are needed). When the sample misled (fewer
//     than k or more than `capacity` scores ≥ F) or k > capacity / 2, the row runs the kStreaming
//     algorithm instead (StreamingSelectRow), so the result is exact whatever the data.
constexpr int kFilterVecs = 4;  // float4 loads in flight per thread in pass (2)

template <int kThreads, int kMinBlocksPerSm>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    SampledTopKKernel(const float* __restrict__ scores, int64_t row_stride, const int32_t* __restrict__ lengths,
                      int max_len, int k, int capacity, int32_t* __restrict__ indices, float* __restrict__ values) {
  __shared__ Shared<kThreads> sh;
  extern __shared__ uint2 candidates[];  // (score bits, position) of the scores with key ≥ the filter
  const int tid = static_cast<int>(threadIdx.x);
  const float* in = scores + int64_t{blockIdx.x} * row_stride;
  const int len = lengths != nullptr ? min(max(lengths[blockIdx.x], 0), max_len) : max_len;
  int32_t* out_indices = indices + int64_t{blockIdx.x} * k;
  float* out_values = values != nullptr ? values + int64_t{blockIdx.x} * k : nullptr;
  const auto emit = [&](int slot, int position, float value) {
    out_indices[slot] = position;
    if (out_values != nullptr) out_values[slot] = value;
  };

  const bool whole_row = len <= capacity;  // every selectable score fits the buffer
  if (!whole_row && 2 * k > capacity) {
    StreamingSelectRow<kThreads>(sh, candidates, in, len, k, capacity, out_indices, out_values);
    return;
  }
  for (int b = tid; b < kTopBins; b += kThreads) sh.hist[b] = 0;
  if (tid == 0) {
    sh.next_slot = 0;
    sh.num_candidates = 0;
  }
  __syncthreads();

  // (1) The filter key: candidates are the keys ≥ filter (never NaN or −inf).
  uint32_t filter = kNegInfKey + 1;
  if (!whole_row) {
    const int misaligned = static_cast<int>((reinterpret_cast<uintptr_t>(in) >> 2) & 3);
    const int head = (4 - misaligned) & 3;  // len > capacity ≥ 32: the head is whole
    const int num_vecs = (len - head) >> 2;  // ≥ 7
    const float4* vecs = reinterpret_cast<const float4*>(in + head);
    const int sample_vecs = min(num_vecs, kThreads);
    uint32_t keys[4] = {0u, 0u, 0u, 0u};  // key 0 (NaN's) is never counted
    if (tid < sample_vecs) {
      const float4 f = vecs[int64_t{tid} * num_vecs / sample_vecs];
      keys[0] = OrderedKey(f.x);
      keys[1] = OrderedKey(f.y);
      keys[2] = OrderedKey(f.z);
      keys[3] = OrderedKey(f.w);
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) CountDigit(sh.hist, keys[i] > kNegInfKey, keys[i] >> kTopShift);
    __syncthreads();
    // The sample rank whose key should have about T scores of the row at or above it.
    const float target = sqrtf(static_cast<float>(k) * static_cast<float>(capacity));
    const int sample_size = 4 * sample_vecs;
    const int rank = max(1, min(sample_size, static_cast<int>(ceilf(target * static_cast<float>(sample_size) /
                                                                      static_cast<float>(len)))));
    SelectBin<kThreads, kTopBins>(sh, rank);
    if (sh.total >= rank) {  // else fewer selectable samples than the rank: take every selectable score
      const uint32_t top_bin = static_cast<uint32_t>(sh.digit);
      const int rank_in_bin = sh.remaining;
      for (int b = tid; b < kLowBins; b += kThreads) sh.hist[b] = 0;  // SelectBin ended with a barrier
      __syncthreads();
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        CountDigit(sh.hist, keys[i] > kNegInfKey && (keys[i] >> kTopShift) == top_bin,
                   (keys[i] >> kLowBits) & kLowMask);
      }
      __syncthreads();
      SelectBin<kThreads, kLowBins>(sh, rank_in_bin);  // found: the bin holds ≥ rank_in_bin samples
      filter = (top_bin << kTopShift) | (static_cast<uint32_t>(sh.digit) << kLowBits);
    }
  }
  const bool all_selectable = filter == kNegInfKey + 1;

  // (2) One read of the row: every key ≥ filter is stored (as long as it fits) and counted.
  ForEachBatch<kThreads, kFilterVecs>(in, len, [&](const float(&x)[4 * kFilterVecs], uint32_t valid, int first,
                                                   int stride) {
    uint32_t take = 0;
#pragma unroll
    for (int i = 0; i < 4 * kFilterVecs; ++i) {
      if (((valid >> i) & 1u) && OrderedKey(x[i]) >= filter) take |= 1u << i;
    }
    int c = WarpReserve(&sh.num_candidates, __popc(take));
#pragma unroll
    for (int i = 0; i < 4 * kFilterVecs; ++i) {
      if ((take >> i) & 1u) {
        if (c < capacity) candidates[c] = make_uint2(__float_as_uint(x[i]), static_cast<uint32_t>(ItemPosition(first, stride, i)));
        ++c;
      }
    }
  });
  __syncthreads();
  const int num_candidates = sh.num_candidates;
  if (num_candidates > capacity || (num_candidates < k && !all_selectable)) {
    __syncthreads();  // every thread has read sh before StreamingSelectRow reinitialises it
    StreamingSelectRow<kThreads>(sh, candidates, in, len, k, capacity, out_indices, out_values);
    return;
  }
  if (num_candidates <= k) {
    // All of them: every selectable score (padded to k), or exactly the k scores ≥ filter.
    for (int c = tid; c < num_candidates; c += kThreads) {
      const uint2 entry = candidates[c];
      emit(c, static_cast<int>(entry.y), __uint_as_float(entry.x));
    }
    for (int i = num_candidates + tid; i < k; i += kThreads) emit(i, -1, -INFINITY);
    return;
  }

  // (3) The exact k-th largest key among the candidates. visit(valid, key, entry) for every
  // candidate (and invalid fillers), the same number of times in every thread.
  const auto for_each_candidate = [&](auto&& visit) {
    for (int c0 = 0; c0 < num_candidates; c0 += kThreads) {
      const int c = c0 + tid;
      const bool valid = c < num_candidates;
      const uint2 entry = valid ? candidates[c] : make_uint2(0u, 0u);
      visit(valid, OrderedKey(__uint_as_float(entry.x)), entry);
    }
  };
  const auto emit_entry = [&](int slot, const uint2& entry) {
    emit(slot, static_cast<int>(entry.y), __uint_as_float(entry.x));
  };
  for (int b = tid; b < kTopBins; b += kThreads) sh.hist[b] = 0;
  __syncthreads();
  for_each_candidate([&](bool valid, uint32_t key, const uint2&) { CountDigit(sh.hist, valid, key >> kTopShift); });
  __syncthreads();
  SelectBin<kThreads, kTopBins>(sh, k);  // found: num_candidates > k
  const uint32_t top_bin = static_cast<uint32_t>(sh.digit);
  int remaining = sh.remaining;
  for (int b = tid; b < kLowBins; b += kThreads) sh.hist[b] = 0;
  __syncthreads();

  // Keys above the top bin are selected; the top bin's are counted by digit 2.
  for_each_candidate([&](bool valid, uint32_t key, const uint2& entry) {
    const uint32_t bin = key >> kTopShift;
    const int slot = TakeSlot(&sh.next_slot, valid && bin > top_bin);
    if (slot >= 0) emit_entry(slot, entry);
    CountDigit(sh.hist, valid && bin == top_bin, (key >> kLowBits) & kLowMask);
  });
  __syncthreads();
  SelectBin<kThreads, kLowBins>(sh, remaining);
  const uint32_t prefix22 = (top_bin << kLowBits) | static_cast<uint32_t>(sh.digit);  // threshold >> 10
  remaining = sh.remaining;
  for (int b = tid; b < kLowBins; b += kThreads) sh.hist[b] = 0;
  __syncthreads();

  // Top-bin keys above digit 2 are selected; those on it are counted by digit 3.
  for_each_candidate([&](bool valid, uint32_t key, const uint2& entry) {
    const uint32_t high = key >> kLowBits;
    const int slot = TakeSlot(&sh.next_slot, valid && (key >> kTopShift) == top_bin && high > prefix22);
    if (slot >= 0) emit_entry(slot, entry);
    CountDigit(sh.hist, valid && high == prefix22, key & kLowMask);
  });
  __syncthreads();
  SelectBin<kThreads, kLowBins>(sh, remaining);
  const uint32_t threshold = (prefix22 << kLowBits) | static_cast<uint32_t>(sh.digit);  // the k-th largest key
  remaining = sh.remaining;  // how many keys equal to the threshold are selected
  const bool take_all_ties = sh.bin_count == remaining;

  // Keys above the threshold (within prefix22), and the ties when all of them are selected.
  for_each_candidate([&](bool valid, uint32_t key, const uint2& entry) {
    const bool take =
        valid && (key >> kLowBits) == prefix22 && (key > threshold || (take_all_ties && key == threshold));
    const int slot = TakeSlot(&sh.next_slot, take);
    if (slot >= 0) emit_entry(slot, entry);
  });
  if (take_all_ties) return;

  // The first `remaining` ties in position order take slots k − remaining … k − 1 (as kStreaming's
  // step 5: stripes of 4 consecutive positions per thread, stopping once enough ties are found).
  using ItemsScan = cub::BlockScan<int, kThreads>;
  const int above_threshold = k - remaining;
  int ties_before = 0;  // ties in earlier stripes, the same in every thread
  for (int base = 0; base < len && ties_before < remaining; base += 4 * kThreads) {
    int tie[4];
    int rank[4];
    float tie_value[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int j = base + 4 * tid + i;
      tie_value[i] = j < len ? in[j] : 0.0f;
      tie[i] = j < len && OrderedKey(tie_value[i]) == threshold ? 1 : 0;
    }
    int stripe_ties = 0;
    ItemsScan(sh.scan).ExclusiveSum(tie, rank, stripe_ties);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      if (tie[i] && ties_before + rank[i] < remaining) {
        emit(above_threshold + ties_before + rank[i], base + 4 * tid + i, tie_value[i]);
      }
    }
    ties_before += stripe_ties;
    __syncthreads();  // sh.scan is reused by the next stripe
  }
}

size_t DynamicSmemBytes(int capacity) { return size_t(capacity) * sizeof(uint2); }

template <bool kSampled, int kThreads, int kMinBlocksPerSm>
constexpr auto KernelFor() {
  if constexpr (kSampled) {
    return SampledTopKKernel<kThreads, kMinBlocksPerSm>;
  } else {
    return StreamingTopKKernel<kThreads, kMinBlocksPerSm>;
  }
}

// Dynamic shared memory above 48 KB is opt-in per kernel and device; done once per device.
template <bool kSampled, int kThreads, int kMinBlocksPerSm>
cudaError_t EnsureSharedMemoryConfigured(int capacity) {
  static std::atomic<uint64_t> configured_devices{0};
  int device = 0;
  if (cudaError_t e = cudaGetDevice(&device); e != cudaSuccess) return e;
  const uint64_t bit = device < 64 ? (uint64_t{1} << device) : 0;
  if (bit != 0 && (configured_devices.load(std::memory_order_acquire) & bit) != 0) return cudaSuccess;
  const cudaError_t e = cudaFuncSetAttribute(KernelFor<kSampled, kThreads, kMinBlocksPerSm>(),
                                             cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             static_cast<int>(DynamicSmemBytes(capacity)));
  if (e == cudaSuccess) configured_devices.fetch_or(bit, std::memory_order_acq_rel);
  return e;
}

// The current device's SM count, queried once per device (launches may be captured in graphs).
int MultiprocessorCount() {
  static std::atomic<int> cached[64] = {};
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return 132;  // only the kernel shape depends on it
  if (device >= 0 && device < 64) {
    if (const int known = cached[device].load(std::memory_order_relaxed); known > 0) return known;
  }
  int count = 0;
  if (cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || count <= 0) return 132;
  if (device >= 0 && device < 64) cached[device].store(count, std::memory_order_relaxed);
  return count;
}

template <bool kSampled, int kThreads, int kMinBlocksPerSm>
cudaError_t LaunchWith(int max_capacity, const float* scores, int rows, int64_t row_stride, const int32_t* lengths,
                       int max_len, int k, int32_t* indices, float* values, cudaStream_t stream) {
  if (cudaError_t e = EnsureSharedMemoryConfigured<kSampled, kThreads, kMinBlocksPerSm>(max_capacity);
      e != cudaSuccess) {
    return e;
  }
  const int capacity = std::max(32, std::min(max_capacity, (max_len + 31) / 32 * 32));
  KernelFor<kSampled, kThreads, kMinBlocksPerSm>()<<<rows, kThreads, DynamicSmemBytes(capacity), stream>>>(
      scores, row_stride, lengths, max_len, k, capacity, indices, values);
  return cudaGetLastError();
}

template <bool kSampled>
cudaError_t Launch(const float* scores, int rows, int64_t row_stride, const int32_t* lengths, int max_len, int k,
                   int32_t* indices, float* values, cudaStream_t stream) {
  if (rows > MultiprocessorCount()) {
    return LaunchWith<kSampled, kThreadsManyRows, 2>(kCandidatesManyRows, scores, rows, row_stride, lengths, max_len,
                                                     k, indices, values, stream);
  }
  return LaunchWith<kSampled, kThreadsFewRows, 1>(kCandidatesFewRows, scores, rows, row_stride, lengths, max_len, k,
                                                  indices, values, stream);
}

}  // namespace streaming
}  // namespace

size_t TopKWorkspaceBytes(int rows, int max_len, int k) { return 0; }

// kAuto runs the sampled threshold from this row length on, the streaming selection below it.
constexpr int kAutoSampledMinLen = 32768;

cudaError_t TopK(const float* scores, int rows, int64_t row_stride, const int32_t* lengths, int max_len,
                 int k, int32_t* indices, float* values, void* workspace, size_t workspace_bytes,
                 cudaStream_t stream, TopKAlgorithm algorithm) {
  if (rows < 0 || max_len < 0 || k < 0 || row_stride < max_len) return cudaErrorInvalidValue;
  if (rows == 0 || k == 0) return cudaSuccess;
  if (scores == nullptr || indices == nullptr) return cudaErrorInvalidValue;
  if (workspace_bytes < TopKWorkspaceBytes(rows, max_len, k)) return cudaErrorInvalidValue;
  switch (algorithm) {
    case TopKAlgorithm::kRegisterRadix:
      return register_radix::Launch(scores, rows, row_stride, lengths, max_len, k, indices, values, stream);
    case TopKAlgorithm::kStreaming:
      return streaming::Launch<false>(scores, rows, row_stride, lengths, max_len, k, indices, values, stream);
    case TopKAlgorithm::kAuto:
      // Measured on the H200 (docs/benchmarks.md): the sampled threshold wins on long rows (256 ×
      // 32K: 42 vs 45 µs; 32 × 128K: 55 vs 69 µs) and loses on short ones (256 × 8K: 46 vs 19 µs).
      if (max_len < kAutoSampledMinLen) {
        return streaming::Launch<false>(scores, rows, row_stride, lengths, max_len, k, indices, values, stream);
      }
      break;
    case TopKAlgorithm::kSampledThreshold:
      break;
  }
  return streaming::Launch<true>(scores, rows, row_stride, lengths, max_len, k, indices, values, stream);
}

}  // namespace asyncspade::kernels::cuda
