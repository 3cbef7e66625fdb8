// Row-wise top-k: the k largest scores of each row, as positions. The selection step of every
// sparse-attention policy (token scores of the oracle and of the KV selector, page scores of Quest).
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/kernel_types.h"

namespace asyncspade::kernels {

// The order both implementations select by: larger value first; equal values (−0 == +0) by lower
// position. NaN and −inf are never selected: −inf is how the scoring kernels mark positions that
// are attended anyway (sinks, recent window, past the end), and NaN has no rank.
//
// Shapes: `scores` is [rows, row_stride] fp32; row r holds `lengths[r]` scores (clamped to
// [0, max_len]), or `max_len` when `lengths` is null; max_len ≤ row_stride. `indices` is [rows, k]:
// the positions of the row's k largest scores; a row with fewer than k selectable scores returns all
// of them and pads with −1. `values` ([rows, k], may be null) gets the score of each returned
// position (−inf for padding).

namespace cpu {

// Reference: nth_element + sort per row. Within a row, the output is sorted by the order above.
void TopK(const float* scores, int rows, int64_t row_stride, const int32_t* lengths, int max_len,
          int k, int32_t* indices, float* values);

}  // namespace cpu

// Which CUDA implementation TopK runs (both return the same sets; the benchmark times both).
enum class TopKAlgorithm : uint8_t {
  kAuto,             // the default: kSampledThreshold for rows of 32K and more, else kStreaming
  kStreaming,        // histogram pass + one re-read, refinement on chip (see cuda::TopK)
  kRegisterRadix,    // the first implementation: 1024-thread radix select with the row in registers
  kSampledThreshold, // a sampled filter, one read of the row into shared memory, selection on chip
};

namespace cuda {

// Device workspace the launcher needs (bytes, 256-byte aligned pointer). Currently 0: every row is
// selected by one CTA that keeps its histograms in shared memory; call it anyway, so that a future
// multi-CTA schedule for very long rows does not change the callers.
size_t TopKWorkspaceBytes(int rows, int max_len, int k);

// One CTA per row. kStreaming (512 threads and two CTAs per SM when rows > SMs, else 1024 threads
// and one CTA per SM, for more loads in flight per row): (1) one read of the row builds a
// 4096-bin histogram of the top 12 bits of the order-preserving uint32 image of the scores; (2) a
// second read (served by L2) selects every score above the bin holding the k-th largest and stores
// that bin's scores in shared memory (up to 8K of them, 24K when rows ≤ SMs; otherwise later
// passes re-read the row); two 10-bit digits over the stored scores give the exact k-th largest
// key; only when some but not all of the scores equal to it are selected does an ordered block
// scan over the row pick the lowest positions. kSampledThreshold (the default; kStreaming's CTA
// shapes and buffer): a sample of the row sets a filter key expected to keep ~sqrt(k · buffer)
// scores; one read stores every score at or above it in shared memory, and the exact selection
// (three digits, the same tie scan) runs over those; rows that fit the buffer are stored whole,
// and when the sample misleads (fewer than k or more than the buffer kept) or k exceeds half the
// buffer, the row runs kStreaming instead. kRegisterRadix: 1024 threads, three histogram
// passes (11, 11, 10 bits) with the row in registers up to 32768 scores, re-read beyond. Kernel
// variants depend only on host values (`max_len`, `rows`), so the launch can be captured in a CUDA
// graph while `lengths` and the scores change between replays.
//
// Returns exactly the set the CPU reference returns (ties included), in unspecified order within a
// row. Device pointers: scores, lengths (optional), indices, values (optional). cudaErrorInvalidValue
// for negative sizes, row_stride < max_len, or missing pointers; no allocation, no synchronisation.
cudaError_t TopK(const float* scores, int rows, int64_t row_stride, const int32_t* lengths,
                 int max_len, int k, int32_t* indices, float* values, void* workspace,
                 size_t workspace_bytes, cudaStream_t stream,
                 TopKAlgorithm algorithm = TopKAlgorithm::kAuto);

}  // namespace cuda
}  // namespace asyncspade::kernels
