// Batched sampling on the GPU, reproducing cpu::Sample (see kernels/sampling.h for the recipe).
//
// One CTA of 1024 threads per row. Candidates are ordered as the CPU orders them (probability
// descending, id ascending) through a 64-bit key, (probability bits << 32) | (2^32 − 1 − id): the
// probabilities are non-negative floats, so their bit patterns order like their values, and keys
// are distinct. The walk over the sorted candidates is split into chunks of up to 4096 keys: chunk
// c is the set of the largest keys below the last key of chunk c − 1, found by an 8-bit radix
// select (shared-memory histograms, usually 4 passes, up to 8 when probabilities tie at the
// boundary), gathered and bitonic-sorted in shared memory. Thread 0 then walks the chunk with the
// CPU's double-precision running sums, so the kept mass, the nucleus and the drawn token match.
// With top_k ≤ 4096 (the usual case) everything happens in the first chunk.
//
// Without top-k (or with top_k > 4096) the nucleus may hold tens of thousands of candidates, and
// walking them chunk by chunk is slow. There, an exactness argument replaces the walk: every fp32
// probability p ≥ 2^-29 is an integer multiple of 2^-52, and any sum of such values below 2 is a
// multiple of 2^-52 below 2, i.e. exactly representable in double. So while the CPU's sequential
// sums run over candidates ≥ 2^-29 (the "exact region", a prefix of the sorted order), they are
// exact, equal to integer sums in units of 2^-52 in any order. One pass bins those candidates by
// probability (1024 bins of the fp32 bit pattern) with their exact uint64 mass; a scan over the bins
// finds the bin where the running mass crosses the nucleus threshold, and only that bin is
// gathered, sorted and walked (by one warp, with an integer prefix sum). The inverse-CDF draw
// inside the nucleus is found the same way. When a crossing falls below 2^-29 (the tail: at most
// vocab × 2^-29 ≈ 3e-4 of mass), or its bin holds more than 4096 candidates, the chunk walk
// runs instead, so the result never depends on which path ran.
#include <cmath>

#include "kernels/bf16_utils.cuh"
#include "kernels/sampling.h"

namespace asyncspade::kernels::cuda {
namespace {

constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;
constexpr int kChunk = 4096;

// The exact region: fp32 probabilities from 2^-29 (bit pattern 0x31000000) up are multiples of
// 2^-52 (the mass unit). Its bins: the bit pattern above 0x31000000 >> 18 (3% wide in value); up
// to p = 1 that is bins 0..928.
constexpr uint32_t kExactMinBits = 0x31000000u;
constexpr int kMassBinShift = 18;
constexpr int kMassBins = 1024;
static_assert(kMassBins == kThreads, "the bin scan gives one bin to each thread");
static_assert(((0x3f800000u - kExactMinBits) >> kMassBinShift) < kMassBins, "p = 1 has a bin");

struct SampleShared {
  uint64_t keys[kChunk];
  int hist[256];
  // Per mass bin; after the scan, the totals of all higher bins (exclusive prefix from the top).
  unsigned long long bin_mass[kMassBins];
  int bin_count[kMassBins];
  unsigned long long scan_mass[kWarps];
  int scan_count[kWarps];
  unsigned long long exact_mass;  // all bins: the exact region's mass in units of 2^-52
  int exact_count;
  int found_bin;
  int found_index;
  unsigned long long found_mass;  // running mass up to and including found_index
  uint64_t found_key;
  double reduce_double[kWarps];
  float reduce_float[kWarps];
  int reduce_int[kWarps];
  int reduce_index[kWarps];
  uint64_t select_prefix;
  int select_needed;
  int select_done;
  int count;
  double walk_cumulative;
  int walk_count;
  int walk_found;
  uint64_t walk_last_key;
  int answer;
};

__device__ __forceinline__ uint64_t CandidateKey(float prob, int id) {
  return (static_cast<uint64_t>(__float_as_uint(prob)) << 32) |
         (0xffffffffu - static_cast<uint32_t>(id));
}
__device__ __forceinline__ float KeyProb(uint64_t key) {
  return __uint_as_float(static_cast<uint32_t>(key >> 32));
}
__device__ __forceinline__ int KeyId(uint64_t key) {
  return static_cast<int>(0xffffffffu - static_cast<uint32_t>(key & 0xffffffffu));
}

// Every pass over a row reads four consecutive values per lane (one 16-byte load of fp32, 8 bytes
// of bf16) when the row is aligned for it: a CTA streams a 150K-entry row several times, and
// scalar loads leave it latency-bound.
__device__ __forceinline__ void LoadFour(const float* data, int i, int n, bool vectorised,
                                        float (&v)[4]) {
  if (vectorised && i + 4 <= n) {
    const float4 q = *reinterpret_cast<const float4*>(data + i);
    v[0] = q.x, v[1] = q.y, v[2] = q.z, v[3] = q.w;
    return;
  }
#pragma unroll
  for (int e = 0; e < 4; ++e) v[e] = i + e < n ? data[i + e] : 0.0f;
}

__device__ __forceinline__ void LoadFour(const __nv_bfloat16* data, int i, int n, bool vectorised,
                                        float (&v)[4]) {
  if (vectorised && i + 4 <= n) {
    const uint2 q = *reinterpret_cast<const uint2*>(data + i);
    v[0] = __uint_as_float(q.x << 16), v[1] = __uint_as_float(q.x & 0xffff0000u);
    v[2] = __uint_as_float(q.y << 16), v[3] = __uint_as_float(q.y & 0xffff0000u);
    return;
  }
#pragma unroll
  for (int e = 0; e < 4; ++e) v[e] = i + e < n ? __bfloat162float(data[i + e]) : 0.0f;
}

template <typename T>
__device__ __forceinline__ bool AlignedForFour(const T* p) {
  return (reinterpret_cast<uintptr_t>(p) & (4 * sizeof(T) - 1)) == 0;
}

// Block reductions: a fixed butterfly within warps, then every thread folds the warp results in
// warp order, so results are deterministic and identical in every thread. Call from all threads.
__device__ __forceinline__ double BlockSumDouble(double v, SampleShared& s) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    v += __shfl_xor_sync(detail::kFullWarpMask, v, offset);
  }
  __syncthreads();
  if ((threadIdx.x & 31) == 0) s.reduce_double[threadIdx.x >> 5] = v;
  __syncthreads();
  double total = s.reduce_double[0];
  for (int w = 1; w < kWarps; ++w) total += s.reduce_double[w];
  return total;
}

__device__ __forceinline__ int BlockSumInt(int v, SampleShared& s) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    v += __shfl_xor_sync(detail::kFullWarpMask, v, offset);
  }
  __syncthreads();
  if ((threadIdx.x & 31) == 0) s.reduce_int[threadIdx.x >> 5] = v;
  __syncthreads();
  int total = 0;
  for (int w = 0; w < kWarps; ++w) total += s.reduce_int[w];
  return total;
}

__device__ __forceinline__ float BlockMaxFloat(float v, SampleShared& s) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    v = fmaxf(v, __shfl_xor_sync(detail::kFullWarpMask, v, offset));
  }
  __syncthreads();
  if ((threadIdx.x & 31) == 0) s.reduce_float[threadIdx.x >> 5] = v;
  __syncthreads();
  float result = s.reduce_float[0];
  for (int w = 1; w < kWarps; ++w) result = fmaxf(result, s.reduce_float[w]);
  return result;
}

// (value, index) of the maximum, ties → lowest index (cpu::Sample's strict '>' scan).
__device__ __forceinline__ bool Better(float v, int i, float best_v, int best_i) {
  return v > best_v || (v == best_v && i < best_i);
}

__device__ __forceinline__ int BlockArgmax(float v, int i, SampleShared& s) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    const float other_v = __shfl_xor_sync(detail::kFullWarpMask, v, offset);
    const int other_i = __shfl_xor_sync(detail::kFullWarpMask, i, offset);
    if (Better(other_v, other_i, v, i)) v = other_v, i = other_i;
  }
  __syncthreads();
  if ((threadIdx.x & 31) == 0) {
    s.reduce_float[threadIdx.x >> 5] = v;
    s.reduce_index[threadIdx.x >> 5] = i;
  }
  __syncthreads();
  float best_v = s.reduce_float[0];
  int best_i = s.reduce_index[0];
  for (int w = 1; w < kWarps; ++w) {
    if (Better(s.reduce_float[w], s.reduce_index[w], best_v, best_i)) {
      best_v = s.reduce_float[w];
      best_i = s.reduce_index[w];
    }
  }
  return best_i;
}

// The row's candidates: key of id i from the stored unnormalised probability (the CPU's
// `probs[i] *= inv_sum` in fp32, recomputed identically on every pass).
struct Candidates {
  const float* unnormalised;
  int vocab;
  float inv_sum;
  bool vectorised;  // unnormalised is 16-byte aligned
  // Keys of ids [i, i + 4); valid[e] is false past the vocabulary.
  __device__ __forceinline__ void Keys4(int i, uint64_t (&keys)[4], bool (&valid)[4]) const {
    float v[4];
    LoadFour(unnormalised, i, vocab, vectorised, v);
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      valid[e] = i + e < vocab;
      keys[e] = CandidateKey(v[e] * inv_sum, i + e);
    }
  }
};

// Loops over a row four ids per lane with a warp-uniform trip count (the loop bodies use warp
// collectives): lane L of warp W takes ids base + 4L .. + 3 with base = 128 W, 128 W + 4096, ...
#define FOR_EACH_FOUR_IDS(base_var, vocab)                                                \
  for (int base_var = (threadIdx.x & ~31) * 4; base_var < (vocab); base_var += kThreads * 4)


// The m largest keys below `bound` (every key when !has_bound) are those whose bits under `mask`
// are ≥ `prefix`. Requires 1 ≤ m < number of eligible keys.
__device__ void RadixSelect(const Candidates& c, bool has_bound, uint64_t bound, int m,
                            SampleShared& s, uint64_t* prefix_out, uint64_t* mask_out) {
  uint64_t prefix = 0;
  uint64_t mask = 0;
  int needed = m;
  for (int shift = 56; shift >= 0; shift -= 8) {
    for (int b = threadIdx.x; b < 256; b += kThreads) s.hist[b] = 0;
    __syncthreads();
    // Warp-aggregated: the leading byte of probabilities takes only a few values, so per-element
    // shared atomics would serialise on a handful of bins.
    const int lane = threadIdx.x & 31;
    FOR_EACH_FOUR_IDS(base, c.vocab) {
      uint64_t keys[4];
      bool valid[4];
      c.Keys4(base + 4 * lane, keys, valid);
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const uint64_t key = keys[e];
        const int bin = valid[e] && (!has_bound || key < bound) && (key & mask) == prefix
                            ? static_cast<int>((key >> shift) & 0xff)
                            : -1;
        const unsigned peers = __match_any_sync(detail::kFullWarpMask, bin);
        if (bin >= 0 && lane == __ffs(peers) - 1) atomicAdd(&s.hist[bin], __popc(peers));
      }
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      int before = 0;  // keys in higher bins: all taken
      int bin = 255;
      for (; bin > 0; --bin) {
        if (before + s.hist[bin] >= needed) break;
        before += s.hist[bin];
      }
      s.select_needed = needed - before;
      s.select_done = s.hist[bin] == needed - before;
      s.select_prefix = prefix | (static_cast<uint64_t>(bin) << shift);
    }
    __syncthreads();
    prefix = s.select_prefix;
    needed = s.select_needed;
    mask |= uint64_t{0xff} << shift;
    const bool done = s.select_done != 0;
    __syncthreads();  // everyone has read the slots before they are written again
    if (done) break;
  }
  *prefix_out = prefix;
  *mask_out = mask;
}

// Appends `key` to s.keys when `take` (up to kChunk; s.count counts them all). One shared atomic
// per warp. Call from every lane of the warp.
__device__ __forceinline__ void AppendKey(bool take, uint64_t key, SampleShared& s) {
  const int lane = threadIdx.x & 31;
  const unsigned takers = __ballot_sync(detail::kFullWarpMask, take);
  if (takers == 0) return;
  const int leader = __ffs(takers) - 1;
  int first = 0;
  if (lane == leader) first = atomicAdd(&s.count, __popc(takers));
  first = __shfl_sync(detail::kFullWarpMask, first, leader);
  if (take) {
    const int slot = first + __popc(takers & ((1u << lane) - 1u));
    if (slot < kChunk) s.keys[slot] = key;
  }
}

// Sorts s.keys[0, n) descending (bitonic, padded with key 0, which would need id 2^32 − 1 and so
// sorts after every real key). Returns n.
__device__ int SortKeysDescending(int n, SampleShared& s) {
  int padded = 1;
  while (padded < n) padded <<= 1;
  for (int i = n + threadIdx.x; i < padded; i += kThreads) s.keys[i] = 0;
  __syncthreads();
  for (int k = 2; k <= padded; k <<= 1) {
    for (int j = k >> 1; j > 0; j >>= 1) {
      for (int i = threadIdx.x; i < padded; i += kThreads) {
        const int partner = i ^ j;
        if (partner > i) {
          const uint64_t a = s.keys[i];
          const uint64_t b = s.keys[partner];
          const bool descending = (i & k) == 0;
          if (descending ? a < b : a > b) {
            s.keys[i] = b;
            s.keys[partner] = a;
          }
        }
      }
      __syncthreads();
    }
  }
  return n;
}

// Gathers the keys below `bound` whose bits under `mask` are ≥ `prefix` into s.keys and sorts them
// descending. Returns how many there are (at most kChunk by construction).
__device__ int GatherSorted(const Candidates& c, bool has_bound, uint64_t bound, uint64_t prefix,
                            uint64_t mask, SampleShared& s) {
  __syncthreads();  // s.count and s.keys may still be read by the previous step
  if (threadIdx.x == 0) s.count = 0;
  __syncthreads();
  const int lane = threadIdx.x & 31;
  FOR_EACH_FOUR_IDS(base, c.vocab) {
    uint64_t keys[4];
    bool valid[4];
    c.Keys4(base + 4 * lane, keys, valid);
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const uint64_t key = keys[e];
      AppendKey(valid[e] && (!has_bound || key < bound) && (key & mask) >= prefix, key, s);
    }
  }
  __syncthreads();
  return SortKeysDescending(min(s.count, kChunk), s);
}

// ---- The exact region (see the file comment) ----

// The mass bin of a candidate, or −1 below the exact region.
__device__ __forceinline__ int MassBin(uint64_t key) {
  const uint32_t bits = static_cast<uint32_t>(key >> 32);
  if (bits < kExactMinBits) return -1;
  return min(static_cast<int>((bits - kExactMinBits) >> kMassBinShift), kMassBins - 1);
}

// p · 2^52 for a candidate of the exact region: an integer, exactly.
__device__ __forceinline__ unsigned long long MassUnits(uint64_t key) {
  return static_cast<unsigned long long>(static_cast<double>(KeyProb(key)) * 0x1p52);
}

// The smallest mass I (in units of 2^-52, at least 1) with I · 2^-52 ≥ x, i.e. the running mass
// at which the CPU's `cumulative >= x` first holds; saturates for x beyond any mass.
__device__ __forceinline__ unsigned long long MassUnitsAtLeast(double x) {
  const double scaled = ceil(x * 0x1p52);
  if (!(scaled >= 1.0)) return 1;
  return scaled >= 0x1p62 ? (1ull << 62) : static_cast<unsigned long long>(scaled);
}

// The smallest mass I with I · 2^-52 > x (the CPU's `cumulative > x`).
__device__ __forceinline__ unsigned long long MassUnitsAbove(double x) {
  const double scaled = floor(x * 0x1p52);
  if (!(scaled >= 0.0)) return 1;
  return scaled >= 0x1p62 ? (1ull << 62) : static_cast<unsigned long long>(scaled) + 1;
}

// Bins the candidates of the kept set ((key & mask) ≥ prefix) that lie in the exact region by
// mass bin — count and exact mass, warp-aggregated — then turns the bins into exclusive prefixes
// from the top bin down and sets s.exact_mass / s.exact_count. Returns the mass of the kept
// candidates below the exact region (a tree sum in double).
__device__ double BuildMassBins(const Candidates& c, uint64_t prefix, uint64_t mask,
                                SampleShared& s) {
  __syncthreads();  // the bins may still be read by a previous step
  s.bin_mass[threadIdx.x] = 0;
  s.bin_count[threadIdx.x] = 0;
  __syncthreads();
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  double tail = 0.0;
  FOR_EACH_FOUR_IDS(base, c.vocab) {
    uint64_t keys[4];
    bool valid[4];
    c.Keys4(base + 4 * lane, keys, valid);
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const uint64_t key = keys[e];
      int bin = -1;
      unsigned long long units = 0;
      if (valid[e] && (key & mask) >= prefix) {
        bin = MassBin(key);
        if (bin >= 0) {
          units = MassUnits(key);
        } else {
          tail += KeyProb(key);
        }
      }
      // Lanes of one bin add their masses in two 32-bit halves (units ≤ 2^52: 27 + 26 bits, so
      // neither half overflows over 32 lanes), then one of them updates the bin.
      const unsigned peers = __match_any_sync(detail::kFullWarpMask, bin);
      const unsigned high = __reduce_add_sync(peers, static_cast<unsigned>(units >> 26));
      const unsigned low =
          __reduce_add_sync(peers, static_cast<unsigned>(units & ((1u << 26) - 1)));
      if (bin >= 0 && lane == __ffs(peers) - 1) {
        atomicAdd(&s.bin_mass[bin], (static_cast<unsigned long long>(high) << 26) + low);
        atomicAdd(&s.bin_count[bin], __popc(peers));
      }
    }
  }
  const double tail_mass = BlockSumDouble(tail, s);  // its barriers also complete the bins

  // Exclusive prefix over the bins in descending order: thread t holds bin kMassBins − 1 − t.
  const int bin = kMassBins - 1 - threadIdx.x;
  const unsigned long long mass = s.bin_mass[bin];
  const int count = s.bin_count[bin];
  unsigned long long mass_incl = mass;
  int count_incl = count;
#pragma unroll
  for (int offset = 1; offset < 32; offset <<= 1) {
    const unsigned long long other_mass = __shfl_up_sync(detail::kFullWarpMask, mass_incl, offset);
    const int other_count = __shfl_up_sync(detail::kFullWarpMask, count_incl, offset);
    if (lane >= offset) {
      mass_incl += other_mass;
      count_incl += other_count;
    }
  }
  if (lane == 31) {
    s.scan_mass[warp] = mass_incl;
    s.scan_count[warp] = count_incl;
  }
  __syncthreads();
  unsigned long long warp_mass = 0;
  int warp_count = 0;
  for (int w = 0; w < warp; ++w) {
    warp_mass += s.scan_mass[w];
    warp_count += s.scan_count[w];
  }
  s.bin_mass[bin] = warp_mass + mass_incl - mass;
  s.bin_count[bin] = warp_count + count_incl - count;
  if (threadIdx.x == kThreads - 1) {
    s.exact_mass = warp_mass + mass_incl;
    s.exact_count = warp_count + count_incl;
  }
  __syncthreads();
  return tail_mass;
}

// Mass and count of the bins above `bin` and including it (after BuildMassBins).
__device__ __forceinline__ unsigned long long MassThrough(int bin, const SampleShared& s) {
  return bin == 0 ? s.exact_mass : s.bin_mass[bin - 1];
}
__device__ __forceinline__ int CountThrough(int bin, const SampleShared& s) {
  return bin == 0 ? s.exact_count : s.bin_count[bin - 1];
}

// The bin in which the running mass (from the top) first reaches `target` (1 ≤ target ≤
// s.exact_mass), or −1 if none does.
__device__ int FindMassBin(unsigned long long target, SampleShared& s) {
  __syncthreads();
  if (threadIdx.x == 0) s.found_bin = -1;
  __syncthreads();
  const int bin = threadIdx.x;
  if (s.bin_mass[bin] < target && target <= MassThrough(bin, s)) s.found_bin = bin;
  __syncthreads();
  return s.found_bin;
}

// Gathers the kept candidates of mass bin `bin` into s.keys, sorted descending. The caller has
// checked that the bin holds at most kChunk of them.
__device__ int GatherMassBin(const Candidates& c, uint64_t prefix, uint64_t mask, int bin,
                             SampleShared& s) {
  __syncthreads();
  if (threadIdx.x == 0) s.count = 0;
  __syncthreads();
  const int lane = threadIdx.x & 31;
  FOR_EACH_FOUR_IDS(base, c.vocab) {
    uint64_t keys[4];
    bool valid[4];
    c.Keys4(base + 4 * lane, keys, valid);
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const uint64_t key = keys[e];
      AppendKey(valid[e] && (key & mask) >= prefix && MassBin(key) == bin, key, s);
    }
  }
  __syncthreads();
  return SortKeysDescending(min(s.count, kChunk), s);
}

// Walks the sorted s.keys[0, size) from running mass `start` (the bins above) and records the first
// position whose running mass reaches `target` in s.found_index / found_mass / found_key
// (found_index −1 if none). One warp, 32 candidates per step with an integer prefix sum.
__device__ void WalkMassBin(unsigned long long start, unsigned long long target, int size,
                            SampleShared& s) {
  __syncthreads();
  if (threadIdx.x == 0) s.found_index = -1;
  __syncthreads();
  if (threadIdx.x < 32) {
    const int lane = threadIdx.x;
    unsigned long long base = start;
    for (int offset = 0; offset < size; offset += 32) {
      const int i = offset + lane;
      unsigned long long running = i < size ? MassUnits(s.keys[i]) : 0;
#pragma unroll
      for (int step = 1; step < 32; step <<= 1) {
        const unsigned long long other = __shfl_up_sync(detail::kFullWarpMask, running, step);
        if (lane >= step) running += other;
      }
      const unsigned reached =
          __ballot_sync(detail::kFullWarpMask, i < size && base + running >= target);
      if (reached != 0) {
        if (lane == __ffs(reached) - 1) {
          s.found_index = i;
          s.found_mass = base + running;
          s.found_key = s.keys[i];
        }
        break;
      }
      base += __shfl_sync(detail::kFullWarpMask, running, 31);
    }
  }
  __syncthreads();
}

// The next chunk of the sorted order: the min(kChunk, limit) largest keys below `bound`, sorted
// into s.keys. Returns its size (0 when nothing is left).
__device__ int NextChunk(const Candidates& c, bool has_bound, uint64_t bound, int limit,
                         SampleShared& s) {
  int eligible = c.vocab;
  if (has_bound) {
    int local = 0;
    for (int i = threadIdx.x * 4; i < c.vocab; i += kThreads * 4) {
      uint64_t keys[4];
      bool valid[4];
      c.Keys4(i, keys, valid);
#pragma unroll
      for (int e = 0; e < 4; ++e) local += valid[e] && keys[e] < bound ? 1 : 0;
    }
    eligible = BlockSumInt(local, s);
  }
  const int m = min(min(kChunk, limit), eligible);
  if (m <= 0) return 0;
  uint64_t prefix = 0;
  uint64_t mask = 0;  // with mask 0 every eligible key qualifies
  if (m < eligible) RadixSelect(c, has_bound, bound, m, s, &prefix, &mask);
  return GatherSorted(c, has_bound, bound, prefix, mask, s);
}

// Walks the sorted order chunk by chunk. Chunk 0 may already be in s.keys (cached_chunk == 0).
// For each chunk, thread 0 runs `visit(keys, size)` which returns true to stop; the walk also stops
// after `limit` keys or when no key is left.
struct ChunkCache {
  int chunk = -1;
  int size = 0;
};

template <typename Visit>
__device__ void WalkSorted(const Candidates& c, int limit, ChunkCache& cache, SampleShared& s,
                           Visit&& visit) {
  bool has_bound = false;
  uint64_t bound = 0;
  int walked = 0;
  for (int chunk = 0;; ++chunk) {
    int size;
    if (cache.chunk == chunk) {
      size = cache.size;
    } else {
      size = NextChunk(c, has_bound, bound, limit - walked, s);
      cache.chunk = chunk;
      cache.size = size;
    }
    if (threadIdx.x == 0) {
      s.walk_found = size > 0 ? visit(s.keys, size) : 1;
      if (size > 0) s.walk_last_key = s.keys[size - 1];
    }
    __syncthreads();
    const bool stop = s.walk_found != 0;
    bound = s.walk_last_key;
    has_bound = true;
    walked += size;
    __syncthreads();
    if (stop || walked >= limit) return;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    SampleKernel(const T* __restrict__ logits, int vocab, const SamplingParams* __restrict__ params,
                 const uint64_t* __restrict__ rng_step, float* __restrict__ workspace,
                 int32_t* __restrict__ out) {
  __shared__ SampleShared s;
  const int64_t row_index = blockIdx.x;
  const T* row = logits + row_index * vocab;
  const SamplingParams param = params[row_index];

  if (!(param.temperature > 0.0f)) {
    float best_v = -INFINITY;
    int best_i = 0;
    const bool row_vectorised = AlignedForFour(row);
    for (int i = threadIdx.x * 4; i < vocab; i += kThreads * 4) {
      float v[4];
      LoadFour(row, i, vocab, row_vectorised, v);
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        if (i + e < vocab && Better(v[e], i + e, best_v, best_i)) best_v = v[e], best_i = i + e;
      }
    }
    const int answer = BlockArgmax(best_v, best_i, s);
    if (threadIdx.x == 0) out[row_index] = answer;
    return;
  }

  // p = softmax(logits / T) exactly as the CPU computes it: fp32 argument, exp rounded to fp32
  // (evaluated in double, hence correctly rounded but for rare last-ulp cases), double sum, fp32
  // normaliser.
  const float inv_temperature = 1.0f / param.temperature;
  const bool row_vectorised = AlignedForFour(row);
  float local_max = -INFINITY;
  for (int i = threadIdx.x * 4; i < vocab; i += kThreads * 4) {
    float v[4];
    LoadFour(row, i, vocab, row_vectorised, v);
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      if (i + e < vocab) local_max = fmaxf(local_max, v[e]);
    }
  }
  const float max_logit = BlockMaxFloat(local_max, s);
  float* unnormalised = workspace + row_index * vocab;
  const bool work_vectorised = AlignedForFour(unnormalised);
  double local_sum = 0.0;
  for (int i = threadIdx.x * 4; i < vocab; i += kThreads * 4) {
    float v[4];
    LoadFour(row, i, vocab, row_vectorised, v);
    float prob[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const float argument = (v[e] - max_logit) * inv_temperature;
      prob[e] = i + e < vocab ? static_cast<float>(exp(static_cast<double>(argument))) : 0.0f;
      local_sum += prob[e];
    }
    if (work_vectorised && i + 4 <= vocab) {
      *reinterpret_cast<float4*>(unnormalised + i) = make_float4(prob[0], prob[1], prob[2], prob[3]);
    } else {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        if (i + e < vocab) unnormalised[i + e] = prob[e];
      }
    }
  }
  const double sum = BlockSumDouble(local_sum, s);
  const Candidates candidates{unnormalised, vocab, static_cast<float>(1.0 / sum), work_vectorised};
  __syncthreads();  // the stored probabilities are visible block-wide (each thread wrote its own)

  const int kept_by_top_k =
      param.top_k > 0 && param.top_k < vocab ? param.top_k : vocab;
  const double uniform = SamplingUniform(param.seed, rng_step[row_index]);
  ChunkCache cache;
  double kept_mass = 0.0;  // mass of the first kept_by_top_k candidates in sorted order
  int kept = kept_by_top_k;
  bool nucleus_done = !(param.top_p < 1.0f);  // kept / kept_mass final
  int answer = -1;                            // ≥ 0 once the draw is known
  if (kept_by_top_k <= kChunk) {
    WalkSorted(candidates, kept_by_top_k, cache, s, [&](const uint64_t* keys, int size) {
      double mass = 0.0;
      for (int i = 0; i < size; ++i) mass += KeyProb(keys[i]);
      s.walk_cumulative = mass;
      return true;
    });
    kept_mass = s.walk_cumulative;
    __syncthreads();
  } else {
    // The kept set: all candidates, or the top_k largest keys (those ≥ prefix under mask).
    uint64_t prefix = 0;
    uint64_t mask = 0;
    if (kept_by_top_k < vocab) {
      RadixSelect(candidates, false, 0, kept_by_top_k, s, &prefix, &mask);
    }
    const double tail_mass = BuildMassBins(candidates, prefix, mask, s);
    const unsigned long long exact_mass = s.exact_mass;
    // The CPU's sequential sum is exact over the exact region, so only the tail's part of this
    // can differ from it in the last bits.
    kept_mass = static_cast<double>(exact_mass) * 0x1p-52 + tail_mass;

    // Nucleus inside the exact region: the first candidate at which the running mass reaches
    // top_p × kept_mass.
    int sorted_bin = -1;  // the mass bin whose sorted candidates s.keys holds
    int sorted_size = 0;
    unsigned long long nucleus_units = 0;
    uint64_t nucleus_last_key = 0;
    if (!nucleus_done) {
      const unsigned long long needed =
          MassUnitsAtLeast(static_cast<double>(param.top_p) * kept_mass);
      if (needed <= exact_mass) {
        const int bin = FindMassBin(needed, s);
        if (bin >= 0 && CountThrough(bin, s) - s.bin_count[bin] <= kChunk) {
          sorted_size = GatherMassBin(candidates, prefix, mask, bin, s);
          sorted_bin = bin;
          WalkMassBin(s.bin_mass[bin], needed, sorted_size, s);
          if (s.found_index >= 0) {
            kept = s.bin_count[bin] + s.found_index + 1;
            nucleus_units = s.found_mass;
            nucleus_last_key = s.found_key;
            kept_mass = static_cast<double>(nucleus_units) * 0x1p-52;  // what the CPU holds
            nucleus_done = true;
          }
        }
      }
    }
    // Draw inside the exact region: the first kept candidate whose running mass exceeds
    // u × kept_mass. Without a nucleus the kept set may reach into the tail: then only a target
    // within the exact region is resolved here.
    if (nucleus_done) {
      const bool has_nucleus = param.top_p < 1.0f;
      const unsigned long long limit = has_nucleus ? nucleus_units : exact_mass;
      const unsigned long long above = MassUnitsAbove(uniform * kept_mass);
      if (above > limit) {
        // Rounding left no candidate above the target: the CPU takes the last kept one.
        if (has_nucleus) answer = KeyId(nucleus_last_key);
      } else {
        const int bin = FindMassBin(above, s);
        if (bin >= 0) {
          int size = -1;
          if (bin == sorted_bin) {
            size = sorted_size;
          } else if (CountThrough(bin, s) - s.bin_count[bin] <= kChunk) {
            size = GatherMassBin(candidates, prefix, mask, bin, s);
          }
          if (size >= 0) {
            WalkMassBin(s.bin_mass[bin], above, size, s);
            if (s.found_index >= 0) answer = KeyId(s.found_key);
          }
        }
      }
    }
    __syncthreads();  // s.keys is reused by the chunk walks below
  }

  // The chunk walks: every case the exact region did not settle.
  // Nucleus: the smallest sorted prefix whose running mass reaches top_p × kept mass.
  if (!nucleus_done) {
    const double threshold = static_cast<double>(param.top_p) * kept_mass;
    if (threadIdx.x == 0) {
      s.walk_cumulative = 0.0;
      s.walk_count = 0;
    }
    __syncthreads();
    WalkSorted(candidates, kept_by_top_k, cache, s, [&](const uint64_t* keys, int size) {
      double cumulative = s.walk_cumulative;
      int count = s.walk_count;
      bool reached = false;
      for (int i = 0; i < size && count < kept_by_top_k; ++i) {
        cumulative += KeyProb(keys[i]);
        ++count;
        if (cumulative >= threshold) {
          reached = true;
          break;
        }
      }
      s.walk_cumulative = cumulative;
      s.walk_count = count;
      return reached;
    });
    kept = s.walk_count;
    kept_mass = s.walk_cumulative;
    __syncthreads();
  }

  // Inverse CDF: the first kept candidate whose running mass exceeds u × kept mass, else the last.
  if (answer < 0) {
    const double target = uniform * kept_mass;
    if (threadIdx.x == 0) {
      s.walk_cumulative = 0.0;
      s.walk_count = 0;
      s.answer = -1;
    }
    __syncthreads();
    WalkSorted(candidates, kept, cache, s, [&](const uint64_t* keys, int size) {
      double cumulative = s.walk_cumulative;
      int count = s.walk_count;
      for (int i = 0; i < size && count < kept; ++i) {
        cumulative += KeyProb(keys[i]);
        ++count;
        s.answer = KeyId(keys[i]);  // the last kept candidate unless a later one is chosen
        if (cumulative > target) {
          s.walk_count = count;
          return true;
        }
      }
      s.walk_cumulative = cumulative;
      s.walk_count = count;
      return false;
    });
    answer = s.answer;
  }
  if (threadIdx.x == 0) out[row_index] = answer;
}

template <typename T>
cudaError_t LaunchSample(const T* logits, int batch, int vocab, const SamplingParams* params,
                         const uint64_t* rng_step, void* workspace, size_t workspace_bytes,
                         int32_t* out, cudaStream_t stream) {
  if (batch < 0 || vocab <= 0) return cudaErrorInvalidValue;
  if (batch == 0) return cudaSuccess;
  if (workspace == nullptr || workspace_bytes < SamplingWorkspaceBytes(batch, vocab) ||
      reinterpret_cast<uintptr_t>(workspace) % alignof(float) != 0) {
    return cudaErrorInvalidValue;
  }
  SampleKernel<T><<<batch, kThreads, 0, stream>>>(logits, vocab, params, rng_step,
                                                  static_cast<float*>(workspace), out);
  return cudaGetLastError();
}

#undef FOR_EACH_FOUR_IDS

}  // namespace

size_t SamplingWorkspaceBytes(int batch, int vocab) {
  return batch > 0 && vocab > 0 ? static_cast<size_t>(batch) * vocab * sizeof(float) : 0;
}

cudaError_t Sample(const float* logits, int batch, int vocab, const SamplingParams* params,
                   const uint64_t* rng_step, void* workspace, size_t workspace_bytes, int32_t* out,
                   cudaStream_t stream) {
  return LaunchSample(logits, batch, vocab, params, rng_step, workspace, workspace_bytes, out,
                      stream);
}

cudaError_t Sample(const __nv_bfloat16* logits, int batch, int vocab, const SamplingParams* params,
                   const uint64_t* rng_step, void* workspace, size_t workspace_bytes, int32_t* out,
                   cudaStream_t stream) {
  return LaunchSample(logits, batch, vocab, params, rng_step, workspace, workspace_bytes, out,
                      stream);
}

}  // namespace asyncspade::kernels::cuda
