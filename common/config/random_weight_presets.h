// The architectures `model.random_weights` can name: real Qwen3 dense models whose weights are
// drawn at random, so that GPU benchmarks measure the true shapes without downloading checkpoints.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model_config.h"

namespace asyncspade {

// "qwen3-0.6b", "qwen3-1.7b", "qwen3-4b", "qwen3-8b", "qwen3-14b", "qwen3-32b".
const std::vector<std::string>& RandomWeightPresetNames();

// The hyper-parameters of the named model as its HF config.json states them (Qwen3ForCausalLM:
// head_dim 128, 8 KV heads, vocab 151936, 40960 positions, rope_theta 1e6). InvalidArgument for an
// unknown name, listing the presets.
absl::StatusOr<ModelConfig> RandomWeightPresetModelConfig(std::string_view name);

}  // namespace asyncspade
