// The weights of a Llama / Qwen2 / Qwen3 decoder in fp32 host memory, laid out for the CPU
// runner: q|k|v and gate|up projections fused at load so each becomes one GEMM.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model_config.h"
#include "common/safetensors.h"

namespace asyncspade {

struct CpuLayerWeights {
  std::vector<float> input_norm;           // [hidden]
  std::vector<float> qkv_proj;             // [q_size + 2 * kv_size, hidden]: rows q | k | v
  std::vector<float> qkv_bias;             // [q_size + 2 * kv_size], empty without attention bias
  std::vector<float> q_norm;               // [head_dim], Qwen3 only
  std::vector<float> k_norm;               // [head_dim], Qwen3 only
  std::vector<float> o_proj;               // [hidden, q_size]
  std::vector<float> o_bias;               // [hidden], empty unless config.o_proj_bias
  std::vector<float> post_attention_norm;  // [hidden]
  std::vector<float> gate_up_proj;         // [2 * intermediate, hidden]: rows gate | up
  std::vector<float> down_proj;            // [hidden, intermediate]
};

class CpuModelWeights {
 public:
  // config.json (+ generation_config.json) and the safetensors checkpoint of `model_dir`.
  static absl::StatusOr<std::unique_ptr<CpuModelWeights>> Load(const std::string& model_dir);
  // Reads every tensor `config` implies from `checkpoint` (BF16/F16 are up-converted). A missing
  // tensor or a wrong shape is an error naming the tensor.
  static absl::StatusOr<std::unique_ptr<CpuModelWeights>> FromCheckpoint(const ModelConfig& config,
                                                                         const Checkpoint& checkpoint);

  const ModelConfig& config() const { return config_; }
  const float* embed_tokens() const { return embed_tokens_.data(); }  // [vocab, hidden]
  const float* lm_head() const {                                      // [vocab, hidden]
    return lm_head_.empty() ? embed_tokens_.data() : lm_head_.data();
  }
  const std::vector<float>& final_norm() const { return final_norm_; }
  const CpuLayerWeights& layer(int i) const { return layers_[i]; }
  int64_t num_parameters() const { return num_parameters_; }

 private:
  CpuModelWeights() = default;
  ModelConfig config_;
  std::vector<float> embed_tokens_;
  std::vector<float> lm_head_;  // empty when tied to the embedding
  std::vector<float> final_norm_;
  std::vector<CpuLayerWeights> layers_;
  int64_t num_parameters_ = 0;
};

}  // namespace asyncspade
