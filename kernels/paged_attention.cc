#include "kernels/paged_attention.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace asyncspade::kernels::cpu {
namespace {

// A run of at least this many queries of one sequence (a prefill chunk) is computed with GEMMs;
// shorter runs (decode) query by query.
constexpr int kGemmMinQueries = 16;
// Queries per GEMM tile: bounds the score buffer to kQueryTile x kv_len floats.
constexpr int kQueryTile = 64;

struct SequenceRun {
  int q_begin;           // first query row of the sequence
  int q_len;             // its queries
  int kv_len;            // its keys, this step's included
  const int32_t* blocks;  // its block table
};

// q·k with independent partial sums, so the compiler can vectorise the reduction without
// -ffast-math (the summation order is fixed by this code, not by the compiler).
inline float Dot(const float* a, const float* b, int d) {
  constexpr int kLanes = 16;
  float partial[kLanes] = {};
  int c = 0;
  for (; c + kLanes <= d; c += kLanes) {
    for (int u = 0; u < kLanes; ++u) partial[u] += a[c + u] * b[c + u];
  }
  for (; c < d; ++c) partial[c % kLanes] += a[c] * b[c];
  float sum = 0.0f;
  for (int u = 0; u < kLanes; ++u) sum += partial[u];
  return sum;
}

// In place: row[0, valid) becomes softmax(row[0, valid)), row[valid, n) becomes 0.
inline void MaskedSoftmax(float* row, int valid, int n) {
  float max_score = row[0];
  for (int j = 1; j < valid; ++j) max_score = std::max(max_score, row[j]);
  float sum = 0.0f;
  for (int j = 0; j < valid; ++j) {
    row[j] = std::exp(row[j] - max_score);
    sum += row[j];
  }
  const float inv_sum = 1.0f / sum;
  for (int j = 0; j < valid; ++j) row[j] *= inv_sum;
  std::fill(row + valid, row + n, 0.0f);
}

// The reference formulation: for each query and each KV head, score every visible key page by
// page, softmax, then accumulate the values. Compiled for AVX-512, AVX2 and the baseline ISA; the
// loader picks the best the CPU has, so the binary stays portable.
__attribute__((target_clones("avx512f", "avx2", "default")))
void AttendQueryByQuery(const SequenceRun& seq, const float* q, int num_q_heads, const PagedKvLayout& layout,
                        const float* k_cache, const float* v_cache, float scale, std::vector<float>* scratch,
                        float* out) {
  const int d = layout.head_dim;
  const int page = layout.page_size;
  const int group = num_q_heads / layout.num_kv_heads;
  // Scores of the query heads of one KV group against every key: [group, kv_len].
  scratch->resize(static_cast<size_t>(group) * std::max(seq.kv_len, 0));
  float* scores = scratch->data();
  for (int i = 0; i < seq.q_len; ++i) {
    const int num_keys = seq.kv_len - seq.q_len + i + 1;  // causal: keys 0 .. own position
    const int64_t token = seq.q_begin + i;
    if (num_keys <= 0) {
      // A query that sees no key (an empty sequence in a decode batch) has no softmax to take:
      // zeros, as the CUDA kernels give. `scores` may be empty here, so nothing below may run.
      std::fill(out + token * num_q_heads * d, out + (token + 1) * num_q_heads * d, 0.0f);
      continue;
    }
    for (int g = 0; g < layout.num_kv_heads; ++g) {
      const float* q_group = q + (token * num_q_heads + int64_t{g} * group) * d;
      float* out_group = out + (token * num_q_heads + int64_t{g} * group) * d;
      // Scaled scores, page by page (a page of one KV head is contiguous).
      for (int start = 0; start < num_keys; start += page) {
        const int in_page = std::min(page, num_keys - start);
        const float* k_page = k_cache + layout.Offset(seq.blocks[start / page], g, 0);
        for (int hl = 0; hl < group; ++hl) {
          float* s = scores + int64_t{hl} * seq.kv_len + start;
          for (int j = 0; j < in_page; ++j) s[j] = Dot(q_group + int64_t{hl} * d, k_page + int64_t{j} * d, d) * scale;
        }
      }
      for (int hl = 0; hl < group; ++hl) {
        MaskedSoftmax(scores + int64_t{hl} * seq.kv_len, num_keys, num_keys);
        std::fill(out_group + int64_t{hl} * d, out_group + int64_t{hl + 1} * d, 0.0f);
      }
      // Probability-weighted sum of the values.
      for (int start = 0; start < num_keys; start += page) {
        const int in_page = std::min(page, num_keys - start);
        const float* v_page = v_cache + layout.Offset(seq.blocks[start / page], g, 0);
        for (int hl = 0; hl < group; ++hl) {
          const float* p = scores + int64_t{hl} * seq.kv_len + start;
          float* oh = out_group + int64_t{hl} * d;
          for (int j = 0; j < in_page; ++j) {
            const float* vj = v_page + int64_t{j} * d;
            for (int c = 0; c < d; ++c) oh[c] += p[j] * vj[c];
          }
        }
      }
    }
  }
}

// The same attention for a long run of queries, as GEMMs: per KV head, the keys and values are
// gathered from their pages into contiguous [kv_len, d] matrices; then per query head of the
// group and per tile of queries, S = scale · Q Kᵀ, causal mask + softmax per row, O = S V.
// Query head h of token t is row t of a [tokens, d] matrix with leading dimension num_q_heads · d,
// so Q and O are read and written in place.
void AttendWithGemm(const SequenceRun& seq, const float* q, int num_q_heads, const PagedKvLayout& layout,
                    const float* k_cache, const float* v_cache, float scale, std::vector<float>* scratch,
                    float* out) {
  const int d = layout.head_dim;
  const int page = layout.page_size;
  const int group = num_q_heads / layout.num_kv_heads;
  const int row_stride = num_q_heads * d;
  const size_t kv_floats = static_cast<size_t>(seq.kv_len) * d;
  scratch->resize(2 * kv_floats + static_cast<size_t>(kQueryTile) * seq.kv_len);
  float* keys = scratch->data();
  float* values = keys + kv_floats;
  float* scores = values + kv_floats;
  const int first_position = seq.kv_len - seq.q_len;  // position of query 0
  for (int g = 0; g < layout.num_kv_heads; ++g) {
    for (int start = 0; start < seq.kv_len; start += page) {
      const size_t bytes = sizeof(float) * static_cast<size_t>(std::min(page, seq.kv_len - start)) * d;
      std::memcpy(keys + int64_t{start} * d, k_cache + layout.Offset(seq.blocks[start / page], g, 0), bytes);
      std::memcpy(values + int64_t{start} * d, v_cache + layout.Offset(seq.blocks[start / page], g, 0), bytes);
    }
    for (int hl = 0; hl < group; ++hl) {
      const int64_t head_offset = (int64_t{seq.q_begin} * num_q_heads + int64_t{g} * group + hl) * d;
      for (int tile = 0; tile < seq.q_len; tile += kQueryTile) {
        const int rows = std::min(kQueryTile, seq.q_len - tile);
        const int num_keys = first_position + tile + rows;  // what the tile's last query sees
        const float* q_tile = q + head_offset + int64_t{tile} * row_stride;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, num_keys, d, scale, q_tile, row_stride, keys, d,
                    0.0f, scores, num_keys);
        for (int r = 0; r < rows; ++r) {
          MaskedSoftmax(scores + int64_t{r} * num_keys, first_position + tile + r + 1, num_keys);
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, d, num_keys, 1.0f, scores, num_keys, values, d,
                    0.0f, out + head_offset + int64_t{tile} * row_stride, row_stride);
      }
    }
  }
}

}  // namespace

void PagedAttention(const float* q, int num_q_heads, const int32_t* q_indptr,
                    const int32_t* kv_lens, int num_seqs, const int32_t* block_table,
                    int max_blocks_per_seq, const PagedKvLayout& layout, const float* k_cache,
                    const float* v_cache, float scale, float* out) {
  std::vector<float> scratch;  // one allocation per call, grown to the largest sequence
  for (int b = 0; b < num_seqs; ++b) {
    const SequenceRun seq{q_indptr[b], q_indptr[b + 1] - q_indptr[b], kv_lens[b],
                          block_table + int64_t{b} * max_blocks_per_seq};
    if (seq.q_len <= 0) continue;
    // The GEMM path assumes every query sees at least one key (kv_len ≥ q_len); shorter caches
    // go query by query, which gives the keyless queries zeros.
    if (seq.q_len >= kGemmMinQueries && seq.kv_len >= seq.q_len) {
      AttendWithGemm(seq, q, num_q_heads, layout, k_cache, v_cache, scale, &scratch, out);
    } else {
      AttendQueryByQuery(seq, q, num_q_heads, layout, k_cache, v_cache, scale, &scratch, out);
    }
  }
}

}  // namespace asyncspade::kernels::cpu
