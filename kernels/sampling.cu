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
#include <cmath>

#include "kernels/bf16_utils.cuh"
#include "kernels/sampling.h"

namespace asyncspade::kernels::cuda {
namespace {

constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;
constexpr int kChunk = 4096;

struct SampleShared {
  uint64_t keys[kChunk];
  int hist[256];
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

__device__ __forceinline__ float ToFloat(float x) { return x; }
__device__ __forceinline__ float ToFloat(__nv_bfloat16 x) { return __bfloat162float(x); }

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
  __device__ __forceinline__ uint64_t Key(int i) const {
    return CandidateKey(unnormalised[i] * inv_sum, i);
  }
};

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
    for (int i = threadIdx.x; i < c.vocab; i += kThreads) {
      const uint64_t key = c.Key(i);
      if ((!has_bound || key < bound) && (key & mask) == prefix) {
        atomicAdd(&s.hist[(key >> shift) & 0xff], 1);
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

// Gathers the keys below `bound` whose bits under `mask` are ≥ `prefix` into s.keys and sorts them
// descending. Returns how many there are (at most kChunk by construction).
__device__ int GatherSorted(const Candidates& c, bool has_bound, uint64_t bound, uint64_t prefix,
                            uint64_t mask, SampleShared& s) {
  if (threadIdx.x == 0) s.count = 0;
  __syncthreads();
  for (int i = threadIdx.x; i < c.vocab; i += kThreads) {
    const uint64_t key = c.Key(i);
    if ((!has_bound || key < bound) && (key & mask) >= prefix) {
      const int slot = atomicAdd(&s.count, 1);
      if (slot < kChunk) s.keys[slot] = key;
    }
  }
  __syncthreads();
  const int n = min(s.count, kChunk);
  int padded = 1;
  while (padded < n) padded <<= 1;
  // Key 0 would need id 2^32 − 1: padding with it sorts after every real key.
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

// The next chunk of the sorted order: the min(kChunk, limit) largest keys below `bound`, sorted
// into s.keys. Returns its size (0 when nothing is left).
__device__ int NextChunk(const Candidates& c, bool has_bound, uint64_t bound, int limit,
                         SampleShared& s) {
  int eligible = c.vocab;
  if (has_bound) {
    int local = 0;
    for (int i = threadIdx.x; i < c.vocab; i += kThreads) local += c.Key(i) < bound ? 1 : 0;
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
    for (int i = threadIdx.x; i < vocab; i += kThreads) {
      const float v = ToFloat(row[i]);
      if (Better(v, i, best_v, best_i)) best_v = v, best_i = i;
    }
    const int answer = BlockArgmax(best_v, best_i, s);
    if (threadIdx.x == 0) out[row_index] = answer;
    return;
  }

  // p = softmax(logits / T) exactly as the CPU computes it: fp32 argument, exp rounded to fp32
  // (evaluated in double, hence correctly rounded but for rare last-ulp cases), double sum, fp32
  // normaliser.
  const float inv_temperature = 1.0f / param.temperature;
  float local_max = -INFINITY;
  for (int i = threadIdx.x; i < vocab; i += kThreads) local_max = fmaxf(local_max, ToFloat(row[i]));
  const float max_logit = BlockMaxFloat(local_max, s);
  float* unnormalised = workspace + row_index * vocab;
  double local_sum = 0.0;
  for (int i = threadIdx.x; i < vocab; i += kThreads) {
    const float argument = (ToFloat(row[i]) - max_logit) * inv_temperature;
    const float prob = static_cast<float>(exp(static_cast<double>(argument)));
    unnormalised[i] = prob;
    local_sum += prob;
  }
  const double sum = BlockSumDouble(local_sum, s);
  const Candidates candidates{unnormalised, vocab, static_cast<float>(1.0 / sum)};
  __syncthreads();  // the stored probabilities are visible block-wide (each thread wrote its own)

  const int kept_by_top_k =
      param.top_k > 0 && param.top_k < vocab ? param.top_k : vocab;
  ChunkCache cache;
  // Mass of the first kept_by_top_k candidates in sorted order.
  double kept_mass = 0.0;
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
    uint64_t prefix = 0;
    uint64_t mask = 0;
    if (kept_by_top_k < vocab) {
      RadixSelect(candidates, false, 0, kept_by_top_k, s, &prefix, &mask);
    }
    double local = 0.0;
    for (int i = threadIdx.x; i < vocab; i += kThreads) {
      const uint64_t key = candidates.Key(i);
      if ((key & mask) >= prefix) local += KeyProb(key);
    }
    kept_mass = BlockSumDouble(local, s);
  }

  // Nucleus: the smallest sorted prefix whose running mass reaches top_p × kept mass.
  int kept = kept_by_top_k;
  if (param.top_p < 1.0f) {
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
  const double target = SamplingUniform(param.seed, rng_step[row_index]) * kept_mass;
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
  if (threadIdx.x == 0) out[row_index] = s.answer;
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
