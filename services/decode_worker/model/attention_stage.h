// The attention step of each layer, behind an interface so that sparse policies (quest, oracle,
// asyncspade) plug into the runner without touching it. The runner computes q/k/v, applies norms
// and RoPE, calls OnQkv (the hook where a policy can record queries), appends k/v to the paged
// cache and then calls Attend.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "common/config/sparse_policy_config.h"
#include "kernels/kernel_types.h"

namespace asyncspade {

// The layout of one forward batch, identical for every layer.
struct AttentionBatchLayout {
  int num_seqs = 0;
  int num_tokens = 0;                 // total new (query) tokens
  std::vector<int64_t> sequence_ids;  // [num_seqs]
  std::vector<int32_t> q_indptr;      // [num_seqs + 1]: queries of b are rows q_indptr[b]..[b+1]
  std::vector<int32_t> kv_lens;       // [num_seqs]: cached keys after this step's append
  std::vector<int32_t> positions;     // [num_tokens]: position of each query token
  std::vector<int64_t> slots;         // [num_tokens]: cache slot (block * page + offset) of each
  int max_blocks_per_seq = 0;
  std::vector<int32_t> block_tables;  // [num_seqs, max_blocks_per_seq], padded with 0
  uint64_t step = 0;                  // the engine's step counter (ForwardBatch::step)
  // [num_seqs] each sequence's sparse-attention settings (ForwardSequence::sparse); null: the
  // stage's own default. Valid for the duration of the forward.
  std::vector<const SparsePolicyConfig*> sparse;
};

// What a sparse-attention policy did, per sequence or summed over all: reported per request
// (GenerateFinal.sparse_stats) and in heartbeats.
struct SparseAttentionCounters {
  int64_t sparse_layer_steps = 0;       // decode (step, layer) pairs that attended sparsely
  int64_t dense_fallbacks = 0;          // ... that attended densely because no selection was there
  int64_t stale_selections = 0;         // ... that used a selection made for an earlier position
  int64_t selection_age_steps_sum = 0;  // Σ over selections used of (step used − step requested)
  int64_t selections_used = 0;

  // Mean age of the selections used, in steps (1 when the selector always keeps up); 0 if none.
  double mean_selector_lag_steps() const {
    return selections_used > 0 ? double(selection_age_steps_sum) / double(selections_used) : 0.0;
  }
  SparseAttentionCounters& operator+=(const SparseAttentionCounters& other) {
    sparse_layer_steps += other.sparse_layer_steps;
    dense_fallbacks += other.dense_fallbacks;
    stale_selections += other.stale_selections;
    selection_age_steps_sum += other.selection_age_steps_sum;
    selections_used += other.selections_used;
    return *this;
  }
};

// One layer's KV storage.
struct LayerKvCache {
  kernels::PagedKvLayout layout;
  float* k = nullptr;
  float* v = nullptr;
};

// q/k/v of the batch's new tokens for one layer, after q/k norm and RoPE.
struct QkvView {
  const float* q = nullptr;  // [num_tokens, num_q_heads, head_dim]
  const float* k = nullptr;  // [num_tokens, num_kv_heads, head_dim]
  const float* v = nullptr;  // [num_tokens, num_kv_heads, head_dim]
  int num_q_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
};

class AttentionStage {
 public:
  virtual ~AttentionStage() = default;

  // Called per layer once q/k/v are final (post-RoPE; pre-RoPE queries can be recovered exactly by
  // rotating back by `layout.positions`), before k/v are appended to the cache.
  virtual void OnQkv(int layer, const AttentionBatchLayout& layout, const QkvView& qkv) {}

  // The sequence's KV blocks were freed (see ModelRunner::ReleaseSequence).
  virtual void OnSequenceReleased(int64_t sequence_id) {}

  // out[num_tokens, num_q_heads, head_dim] = attention of qkv.q over the cache, which already holds
  // this step's keys and values.
  virtual absl::Status Attend(int layer, const AttentionBatchLayout& layout, const QkvView& qkv,
                              const LayerKvCache& cache, float scale, float* out) = 0;

  // Counters of a sequence the stage currently knows (zeros for an unknown one), and the sum over
  // every sequence since the stage was created. Dense stages count nothing.
  virtual SparseAttentionCounters SequenceCounters(int64_t sequence_id) const { return {}; }
  virtual SparseAttentionCounters TotalCounters() const { return {}; }
};

}  // namespace asyncspade
