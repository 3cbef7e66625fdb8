#include "common/config/random_weight_presets.h"

#include "absl/strings/str_cat.h"
#include "common/config/closest_name.h"

namespace asyncspade {
namespace {

struct Qwen3Shape {
  const char* name;
  int hidden_size;
  int intermediate_size;
  int num_layers;
  int num_heads;
  bool tie_word_embeddings;
};

// From each model's config.json on the Hugging Face hub (Qwen/Qwen3-*). Shared by all sizes:
// head_dim 128, num_key_value_heads 8, vocab_size 151936, max_position_embeddings 40960.
constexpr Qwen3Shape kQwen3Shapes[] = {
    {"qwen3-0.6b", 1024, 3072, 28, 16, true},  {"qwen3-1.7b", 2048, 6144, 28, 16, true},
    {"qwen3-4b", 2560, 9728, 36, 32, true},    {"qwen3-8b", 4096, 12288, 36, 32, false},
    {"qwen3-14b", 5120, 17408, 40, 40, false}, {"qwen3-32b", 5120, 25600, 64, 64, false},
};

}  // namespace

const std::vector<std::string>& RandomWeightPresetNames() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> out;
    for (const Qwen3Shape& shape : kQwen3Shapes) out.emplace_back(shape.name);
    return out;
  }();
  return names;
}

absl::StatusOr<ModelConfig> RandomWeightPresetModelConfig(std::string_view name) {
  for (const Qwen3Shape& shape : kQwen3Shapes) {
    if (name != shape.name) continue;
    ModelConfig config;
    config.arch = ModelArch::kQwen3;
    config.architecture = "Qwen3ForCausalLM";
    config.vocab_size = 151936;
    config.hidden_size = shape.hidden_size;
    config.intermediate_size = shape.intermediate_size;
    config.num_layers = shape.num_layers;
    config.num_heads = shape.num_heads;
    config.num_kv_heads = 8;
    config.head_dim = 128;
    config.max_position_embeddings = 40960;
    config.rms_norm_eps = 1e-6;
    config.rope_theta = 1000000.0;
    config.tie_word_embeddings = shape.tie_word_embeddings;
    config.attention_bias = false;
    config.qk_norm = true;
    config.bos_token_id = 151643;
    config.eos_token_ids = {151645, 151643};  // <|im_end|>, <|endoftext|>
    config.torch_dtype = "bfloat16";
    return config;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown random-weights preset '", std::string(name), "'",
                                                 DidYouMean(name, RandomWeightPresetNames()),
                                                 "; accepted: ", JoinAlternatives(RandomWeightPresetNames())));
}

}  // namespace asyncspade
