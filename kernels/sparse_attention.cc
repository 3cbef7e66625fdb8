#include "kernels/sparse_attention.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace asyncspade::kernels::cpu {

void BuildSparseIndices(const int32_t* selected, int num_seqs, int num_kv_heads, int num_selected,
                        const int32_t* kv_lens, int sinks, int recent, int32_t* indices,
                        int max_indices, int32_t* counts) {
  for (int b = 0; b < num_seqs; ++b) {
    const int kv_len = std::max(kv_lens[b], 0);
    const int sinks_end = std::min(std::max(sinks, 0), kv_len);
    const int recent_begin = std::max(sinks_end, kv_len - std::max(recent, 0));
    for (int h = 0; h < num_kv_heads; ++h) {
      const int64_t row = int64_t{b} * num_kv_heads + h;
      int32_t* out = indices + row * max_indices;
      int n = 0;
      for (int j = 0; j < sinks_end; ++j) out[n++] = j;
      for (int i = 0; i < num_selected; ++i) {
        const int32_t j = selected[row * num_selected + i];
        if (j >= sinks_end && j < recent_begin) out[n++] = j;
      }
      for (int j = recent_begin; j < kv_len; ++j) out[n++] = j;
      counts[row] = n;
      std::fill(out + n, out + max_indices, -1);
    }
  }
}

void SparseAttention(const float* q, int num_seqs, int num_q_heads, const int32_t* indices,
                     const int32_t* counts, int max_indices, const int32_t* block_table,
                     int max_blocks_per_seq, const PagedKvLayout& layout, const float* k_cache,
                     const float* v_cache, float scale, float* out) {
  const int d = layout.head_dim;
  const int page = layout.page_size;
  const int group = num_q_heads / layout.num_kv_heads;
  std::vector<float> probs(std::max(max_indices, 1));
  for (int b = 0; b < num_seqs; ++b) {
    const int32_t* blocks = block_table + int64_t{b} * max_blocks_per_seq;
    for (int h = 0; h < layout.num_kv_heads; ++h) {
      const int64_t row = int64_t{b} * layout.num_kv_heads + h;
      const int32_t* positions = indices + row * max_indices;
      const int n = std::clamp(counts[row], 0, max_indices);
      for (int g = 0; g < group; ++g) {
        const int64_t head = int64_t{b} * num_q_heads + int64_t{h} * group + g;
        const float* qh = q + head * d;
        float* oh = out + head * d;
        std::fill(oh, oh + d, 0.0f);
        if (n == 0) continue;
        float max_score = -INFINITY;
        for (int i = 0; i < n; ++i) {
          const int j = positions[i];
          const float* key = k_cache + layout.Offset(blocks[j / page], h, j % page);
          float dot = 0.0f;
          for (int c = 0; c < d; ++c) dot += qh[c] * key[c];
          probs[i] = dot * scale;
          max_score = std::max(max_score, probs[i]);
        }
        float sum = 0.0f;
        for (int i = 0; i < n; ++i) sum += (probs[i] = std::exp(probs[i] - max_score));
        const float inv_sum = 1.0f / sum;
        for (int i = 0; i < n; ++i) {
          const int j = positions[i];
          const float* value = v_cache + layout.Offset(blocks[j / page], h, j % page);
          const float p = probs[i] * inv_sum;
          for (int c = 0; c < d; ++c) oh[c] += p * value[c];
        }
      }
    }
  }
}

}  // namespace asyncspade::kernels::cpu
