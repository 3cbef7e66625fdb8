// The model hyper-parameters every process needs, parsed from a HF `config.json` (plus
// `generation_config.json` for stop ids when present).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json_fwd.hpp"

namespace asyncspade {

enum class ModelArch {
  kLlama,  // LlamaForCausalLM: Llama-2/3, SmolLM2, TinyLlama, DeepSeek-R1-Distill-Llama
  kQwen2,  // Qwen2ForCausalLM: q/k/v projection biases (DeepSeek-R1-Distill-Qwen)
  kQwen3,  // Qwen3ForCausalLM: per-head RMSNorm on q and k, no biases
};

// RoPE frequency scaling. kDefault: plain inverse frequencies theta^(-2i/d). kLlama3: the
// piecewise wavelength rescaling of Llama 3.1+ (factor, low/high_freq_factor,
// original_max_position_embeddings).
struct RopeScaling {
  enum class Type { kDefault, kLlama3 } type = Type::kDefault;
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int original_max_position_embeddings = 8192;
};

struct ModelConfig {
  ModelArch arch = ModelArch::kLlama;
  std::string architecture;  // as written in config.json, e.g. "Qwen3ForCausalLM"
  int vocab_size = 0;
  int hidden_size = 0;
  int intermediate_size = 0;
  int num_layers = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;  // explicit `head_dim`, else hidden_size / num_heads
  int max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // q/k/v projection biases (Qwen2 always; Llama/Qwen3 if attention_bias)
  bool o_proj_bias = false;     // o_proj bias (Llama/Qwen3 if attention_bias; never Qwen2)
  bool qk_norm = false;         // Qwen3
  std::optional<int> bos_token_id;
  std::vector<int> eos_token_ids;  // union of config.json and generation_config.json
  std::string torch_dtype;         // informational

  int q_size() const { return num_heads * head_dim; }
  int kv_size() const { return num_kv_heads * head_dim; }
  int group_size() const { return num_heads / num_kv_heads; }
};

// Parses a `config.json` object. Every error names the key and what is wrong.
absl::StatusOr<ModelConfig> ParseModelConfig(const nlohmann::json& config);

// Reads `<dir>/config.json` and, if present, `<dir>/generation_config.json`.
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& model_dir);

}  // namespace asyncspade
