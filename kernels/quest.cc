#include "kernels/quest.h"

#include <algorithm>
#include <limits>

namespace asyncspade::kernels::cpu {

void QuestUpdateMetadata(const float* k_cache, const PagedKvLayout& layout, const int64_t* slots,
                         int num_slots, float* metadata) {
  const int d = layout.head_dim;
  for (int i = 0; i < num_slots; ++i) {
    if (slots[i] < 0) continue;
    const int block = static_cast<int>(slots[i] / layout.page_size);
    const int offset = static_cast<int>(slots[i] % layout.page_size);
    for (int h = 0; h < layout.num_kv_heads; ++h) {
      const float* key = k_cache + layout.Offset(block, h, offset);
      float* lo = metadata + (int64_t{block} * layout.num_kv_heads + h) * 2 * d;
      float* hi = lo + d;
      for (int c = 0; c < d; ++c) {
        lo[c] = offset == 0 ? key[c] : std::min(lo[c], key[c]);
        hi[c] = offset == 0 ? key[c] : std::max(hi[c], key[c]);
      }
    }
  }
}

void QuestScorePages(const float* queries, int num_seqs, int num_q_heads, const int32_t* kv_lens,
                     const int32_t* block_table, int max_blocks_per_seq, const PagedKvLayout& layout,
                     const float* metadata, const QuestScoringParams& params, float* page_scores,
                     int max_pages, int64_t row_stride) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  const int d = layout.head_dim;
  const int page = layout.page_size;
  const int group = num_q_heads / layout.num_kv_heads;
  const bool is_max = params.aggregation == GroupAggregation::kMax;
  for (int b = 0; b < num_seqs; ++b) {
    const int kv_len = std::max(kv_lens[b], 0);
    const int num_pages = std::min((kv_len + page - 1) / page, max_pages);
    const int32_t* blocks = block_table + int64_t{b} * max_blocks_per_seq;
    for (int h = 0; h < layout.num_kv_heads; ++h) {
      float* row = page_scores + (int64_t{b} * layout.num_kv_heads + h) * row_stride;
      for (int p = 0; p < max_pages; ++p) {
        const int first = p * page;
        const int end = std::min(first + page, kv_len);
        if (p >= num_pages || end <= params.sinks || first >= kv_len - params.recent) {
          row[p] = kNegInf;
          continue;
        }
        const float* lo = metadata + (int64_t{blocks[p]} * layout.num_kv_heads + h) * 2 * d;
        const float* hi = lo + d;
        float aggregated = is_max ? kNegInf : 0.0f;
        for (int g = 0; g < group; ++g) {
          const float* q = queries + (int64_t{b} * num_q_heads + int64_t{h} * group + g) * d;
          float bound = 0.0f;
          for (int c = 0; c < d; ++c) bound += std::max(q[c] * lo[c], q[c] * hi[c]);
          aggregated = is_max ? std::max(aggregated, bound) : aggregated + bound;
        }
        row[p] = aggregated;
      }
    }
  }
}

void QuestExpandPages(const int32_t* pages, int num_seqs, int num_kv_heads, int pages_per_row,
                      const int32_t* kv_lens, int page_size, int32_t* tokens) {
  for (int r = 0; r < num_seqs * num_kv_heads; ++r) {
    const int kv_len = kv_lens[r / num_kv_heads];
    for (int i = 0; i < pages_per_row; ++i) {
      const int32_t p = pages[int64_t{r} * pages_per_row + i];
      int32_t* out = tokens + (int64_t{r} * pages_per_row + i) * page_size;
      for (int o = 0; o < page_size; ++o) {
        const int64_t position = int64_t{p} * page_size + o;
        out[o] = p >= 0 && position < kv_len ? static_cast<int32_t>(position) : -1;
      }
    }
  }
}

}  // namespace asyncspade::kernels::cpu
