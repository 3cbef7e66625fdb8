// The dense attention policy: every query attends every cached key of its sequence.
#pragma once

#include "services/decode_worker/model/attention_stage.h"

namespace asyncspade {

// Full causal attention over every cached key: the accuracy reference.
class DenseAttentionStage : public AttentionStage {
 public:
  absl::Status Attend(int layer, const AttentionBatchLayout& layout, const QkvView& qkv,
                      const LayerKvCache& cache, float scale, float* out) override;
};

}  // namespace asyncspade
