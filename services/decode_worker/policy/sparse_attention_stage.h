// The sparse-attention policies (DESIGN.md §3) as one AttentionStage: every sequence of a batch
// attends by its own policy (the request's, passed per forward in AttentionBatchLayout::sparse).
//
//   - prefill chunks (several query tokens of one sequence) and decode steps with
//     kv_len ≤ SparseFromContext() (sinks + recent + budget, or the configured floor): dense, not a
//     fallback. Sparse attention would read every token anyway.
//   - dense: dense.
//   - oracle: exact scores of every cached key with the current query (key scoring over the paged
//     cache), top `budget` per KV head outside sinks/recent; attends sinks ∪ selected ∪ recent.
//   - quest: min/max key bounds per KV-cache page, kept for every layer of quest sequences (updated
//     for the slots each forward writes, prefill included); the top max(1, ⌊budget / page_size⌋)
//     pages by their upper-bound score (rounded down so Quest reads at most `budget` selected
//     tokens, as the token policies do; at least one page); attends the tokens of the selected pages
//     ∪ sinks ∪ recent.
//   - asyncspade: attends sinks ∪ the SelectorPool's latest selection ∪ recent. Each step, after
//     the layer's query is pushed into the sequence's predictor window, the query of t + 1 is
//     predicted and submitted with the new key of t (prefill chunks send their keys with
//     AppendKeys, the chunk's last key with a prediction). No selection yet, or the layer has no
//     live selector: dense, counted as a dense fallback. A selection made for an earlier position
//     (a late reply) is used anyway, its positions are still valid and the recent window covers
//     the tokens since, and counted as stale. The decode loop never waits for a selector.
//
// Groups of query heads: oracle and quest aggregate a KV head's G query scores with the
// sequence's `aggregation` (quest: sum or max; softmax_sum falls back to sum, since page bounds
// are not probabilities); for asyncspade the selector does, with its own configuration.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "common/config/sparse_policy_config.h"
#include "common/model_config.h"
#include "kernels/key_scoring.h"
#include "services/decode_worker/model/attention_stage.h"
#include "services/decode_worker/policy/query_predictor.h"
#include "services/decode_worker/policy/selector_pool.h"

namespace asyncspade {

// One decode (sequence, layer) that attended sparsely.
struct SparseAttendRecord {
  int64_t sequence_id = 0;
  int layer = 0;
  int32_t position = 0;  // of the query token
  uint64_t step = 0;
  SparsePolicy policy = SparsePolicy::kDense;
  int num_kv_heads = 0;
  // The positions the policy chose, before sinks and recent window were added: [num_kv_heads,
  // num_selected], −1 padded (Quest: the tokens of the selected pages).
  const int32_t* selected = nullptr;
  int num_selected = 0;
  bool stale = false;  // asyncspade: the selection was made for an earlier position
  // The recent window actually attended: config.recent, widened for a stale selection to cover the
  // positions its selector had excluded as "recent" back then and the current window no longer holds.
  int recent = 0;
};

// Hooks for `asyncspade eval`: what each policy selected and predicted. Called on the decode loop
// thread, inside the forward.
class SparseAttentionObserver {
 public:
  virtual ~SparseAttentionObserver() = default;
  virtual void OnSparseAttend(const SparseAttendRecord& record) {}
  // asyncspade: the predicted post-RoPE query [num_q_heads, head_dim] for `position`, submitted now.
  virtual void OnPrediction(int64_t sequence_id, int layer, int32_t position, const float* predicted) {}
};

// The kernels' enum for the config's.
kernels::GroupAggregation KernelAggregation(ScoreAggregation aggregation);

struct SparseAttentionStageOptions {
  // Settings of sequences whose forward entry carries none.
  SparsePolicyConfig default_config;
  // asyncspade's predictor; unset: each sequence's `predictor` section (ridge per head, post-RoPE).
  std::optional<QueryPredictorOptions> predictor;
  // false: take the sparse path for every decode step (even when the budget covers the whole
  // context), so tests and eval can check that such a selection reproduces dense attention.
  bool dense_below_threshold = true;
  // false: rows that attend densely (prefill, short contexts, fallbacks) are left unwritten. For
  // measurement harnesses (`asyncspade eval`) that compute the dense reference once themselves and
  // run several policies side by side; never for serving.
  bool compute_dense_rows = true;
  // asyncspade's selectors. Not owned; may be null (asyncspade sequences then always fall back).
  SelectorPool* selector_pool = nullptr;
  SparseAttentionObserver* observer = nullptr;  // not owned, may be null
};

class SparseAttentionStage : public AttentionStage {
 public:
  // INVALID_ARGUMENT for an invalid default config or predictor.
  static absl::StatusOr<std::unique_ptr<SparseAttentionStage>> Create(const ModelConfig& model,
                                                                      SparseAttentionStageOptions options);

  void OnQkv(int layer, const AttentionBatchLayout& layout, const QkvView& qkv) override;
  void OnSequenceReleased(int64_t sequence_id) override;
  absl::Status Attend(int layer, const AttentionBatchLayout& layout, const QkvView& qkv,
                      const LayerKvCache& cache, float scale, float* out) override;
  SparseAttentionCounters SequenceCounters(int64_t sequence_id) const override;
  SparseAttentionCounters TotalCounters() const override { return totals_; }

  // The settings a known sequence runs with (null when unknown).
  const SparsePolicyConfig* SequenceConfig(int64_t sequence_id) const;

 private:
  struct SequenceState {
    SparsePolicyConfig config;
    std::unique_ptr<QueryPredictor> predictor;  // asyncspade only
    // asyncspade: the selection each layer attends with this step (read in OnQkv, before this
    // step's submission, so the step sees what was there when it began).
    std::vector<std::shared_ptr<const Selection>> selection;
    SparseAttentionCounters counters;
  };

  SparseAttentionStage(const ModelConfig& model, SparseAttentionStageOptions options);
  SequenceState& StateFor(const AttentionBatchLayout& layout, int b);
  // The context length above which a decode step of `config` attends sparsely.
  int64_t SparseAbove(const SparsePolicyConfig& config) const;
  void Count(SequenceState& state, const SparseAttentionCounters& delta);

  // Attention of sequence b's rows of one layer.
  void AttendDense(const AttentionBatchLayout& layout, int b, const QkvView& qkv, const LayerKvCache& cache,
                   float scale, float* out);
  // sinks ∪ selected [num_kv_heads, num_selected] ∪ the last `recent` positions, for b's single
  // query row.
  void AttendSelected(const AttentionBatchLayout& layout, int b, const SparsePolicyConfig& config,
                      const int32_t* selected, int num_selected, int recent, const QkvView& qkv,
                      const LayerKvCache& cache, float scale, float* out);
  void SelectOracle(const AttentionBatchLayout& layout, int b, const SparsePolicyConfig& config, const QkvView& qkv,
                    const LayerKvCache& cache, float scale);
  absl::Status SelectQuest(int layer, const AttentionBatchLayout& layout, int b, const SparsePolicyConfig& config,
                           const QkvView& qkv, const LayerKvCache& cache, int* num_selected);

  const ModelConfig model_;
  const SparseAttentionStageOptions options_;
  std::vector<float> rope_inv_freq_;
  absl::flat_hash_map<int64_t, SequenceState> states_;
  SparseAttentionCounters totals_;
  bool began_step_ = false;
  uint64_t last_step_ = 0;

  // Quest page bounds per layer, [num_blocks][num_kv_heads][2][head_dim], allocated on first use.
  std::vector<std::vector<float>> quest_metadata_;

  // Scratch, reused across calls.
  std::vector<float> scores_;
  std::vector<int32_t> selected_;
  std::vector<int32_t> pages_;
  std::vector<int32_t> indices_;
  std::vector<int32_t> counts_;
  std::vector<float> predicted_;
};

}  // namespace asyncspade
