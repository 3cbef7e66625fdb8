// The fp32 CPU forward of Llama / Qwen2 / Qwen3 over a paged KV cache: the whole ragged batch
// (prefill chunks and decode tokens mixed) goes through each layer with batched GEMMs (OpenBLAS);
// attention is delegated per layer to an AttentionStage.
#pragma once

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "services/decode_worker/model/attention_stage.h"
#include "services/decode_worker/model/cpu_model_weights.h"
#include "services/decode_worker/model/model_runner.h"

namespace asyncspade {

struct CpuModelRunnerOptions {
  int num_kv_blocks = 256;
  int page_size = 16;
};

class CpuModelRunner : public ModelRunner {
 public:
  // `attention` defaults to DenseAttentionStage. KV storage for `options.num_kv_blocks` blocks of
  // every layer is allocated here.
  static absl::StatusOr<std::unique_ptr<CpuModelRunner>> Create(
      std::shared_ptr<const CpuModelWeights> weights, const CpuModelRunnerOptions& options,
      std::unique_ptr<AttentionStage> attention = nullptr);

  const ModelConfig& config() const override { return weights_->config(); }
  const kernels::PagedKvLayout& kv_layout() const override { return kv_layout_; }
  absl::Status Forward(const ForwardBatch& batch, ForwardOutput* output) override;
  void ReleaseSequence(int64_t sequence_id) override { attention_->OnSequenceReleased(sequence_id); }
  SparseAttentionCounters SequenceSparseCounters(int64_t sequence_id) const override {
    return attention_->SequenceCounters(sequence_id);
  }
  SparseAttentionCounters TotalSparseCounters() const override { return attention_->TotalCounters(); }

  AttentionStage& attention() { return *attention_; }
  // One layer's KV storage (for tests and for policies that read keys directly).
  LayerKvCache layer_kv_cache(int layer);
  size_t kv_cache_bytes() const;

 private:
  CpuModelRunner() = default;
  absl::Status BuildLayout(const ForwardBatch& batch);
  void EnsureActivationCapacity(int num_tokens);

  std::shared_ptr<const CpuModelWeights> weights_;
  std::unique_ptr<AttentionStage> attention_;
  kernels::PagedKvLayout kv_layout_;
  std::vector<std::vector<float>> k_cache_;  // per layer, kv_layout_ geometry
  std::vector<std::vector<float>> v_cache_;
  std::vector<float> rope_inv_freq_;

  // Per-forward state, grown on demand and reused so that steady-state decode does not allocate.
  AttentionBatchLayout layout_;
  std::vector<int32_t> token_ids_;
  std::vector<int32_t> logit_token_rows_;  // which token rows produce logits
  std::vector<float> hidden_, residual_, qkv_, q_, k_, v_, attn_out_, gate_up_, mlp_act_, head_in_;
};

}  // namespace asyncspade
