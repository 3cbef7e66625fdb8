#include "kernels/key_scoring.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace asyncspade::kernels::cpu {

void ScoreKeys(const float* queries, int num_seqs, int num_q_heads, const int32_t* kv_lens,
               int max_len, const int32_t* block_table, int max_blocks_per_seq,
               const PagedKvLayout& layout, const float* k_cache, const KeyScoringParams& params,
               float* scores, int64_t score_row_stride) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  const int d = layout.head_dim;
  const int page = layout.page_size;
  const int group = num_q_heads / layout.num_kv_heads;
  max_len = std::max(max_len, 0);
  // Per-head scores of one row, [group][max_len]: kSoftmaxSum needs every head's full row before
  // it can normalise.
  std::vector<float> head_scores(static_cast<size_t>(group) * max_len);

  for (int b = 0; b < num_seqs; ++b) {
    const int kv_len = std::clamp(kv_lens[b], 0, max_len);
    const int32_t* blocks = block_table + int64_t{b} * max_blocks_per_seq;
    for (int h = 0; h < layout.num_kv_heads; ++h) {
      const float* q_group = queries + (int64_t{b} * num_q_heads + int64_t{h} * group) * d;
      for (int j = 0; j < kv_len; ++j) {
        const float* key = k_cache + layout.Offset(blocks[j / page], h, j % page);
        for (int g = 0; g < group; ++g) {
          const float* q = q_group + int64_t{g} * d;
          float dot = 0.0f;
          for (int c = 0; c < d; ++c) dot += q[c] * key[c];
          head_scores[static_cast<size_t>(g) * max_len + j] = dot * params.scale;
        }
      }

      float* row = scores + (int64_t{b} * layout.num_kv_heads + h) * score_row_stride;
      if (params.aggregation == GroupAggregation::kSoftmaxSum) {
        std::fill(row, row + kv_len, 0.0f);
        for (int g = 0; g < group; ++g) {
          const float* s = head_scores.data() + static_cast<size_t>(g) * max_len;
          float max_score = kNegInf;
          for (int j = 0; j < kv_len; ++j) max_score = std::max(max_score, s[j]);
          float sum = 0.0f;
          for (int j = 0; j < kv_len; ++j) sum += std::exp(s[j] - max_score);
          const float inv_sum = 1.0f / sum;
          for (int j = 0; j < kv_len; ++j) row[j] += std::exp(s[j] - max_score) * inv_sum;
        }
      } else {
        const bool is_max = params.aggregation == GroupAggregation::kMax;
        for (int j = 0; j < kv_len; ++j) {
          float aggregated = is_max ? kNegInf : 0.0f;
          for (int g = 0; g < group; ++g) {
            const float s = head_scores[static_cast<size_t>(g) * max_len + j];
            aggregated = is_max ? std::max(aggregated, s) : aggregated + s;
          }
          row[j] = aggregated;
        }
      }
      const int recent_begin = kv_len - params.recent_exclude;
      for (int j = 0; j < max_len; ++j) {
        if (j < params.sinks || j >= recent_begin || j >= kv_len) row[j] = kNegInf;
      }
    }
  }
}

}  // namespace asyncspade::kernels::cpu
