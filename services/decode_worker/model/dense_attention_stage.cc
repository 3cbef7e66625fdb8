#include "services/decode_worker/model/dense_attention_stage.h"

#include "kernels/paged_attention.h"

namespace asyncspade {

absl::Status DenseAttentionStage::Attend(int layer, const AttentionBatchLayout& layout,
                                         const QkvView& qkv, const LayerKvCache& cache, float scale,
                                         float* out) {
  kernels::cpu::PagedAttention(qkv.q, qkv.num_q_heads, layout.q_indptr.data(), layout.kv_lens.data(),
                               layout.num_seqs, layout.block_tables.data(), layout.max_blocks_per_seq,
                               cache.layout, cache.k, cache.v, scale, out);
  return absl::OkStatus();
}

}  // namespace asyncspade
