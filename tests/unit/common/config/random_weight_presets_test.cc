#include "common/config/random_weight_presets.h"

#include <cmath>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace asyncspade {
namespace {

// Parameters of a Qwen3 dense model from its shapes: embeddings (+ untied LM head), per layer the
// q/k/v/o projections, the q/k head norms, the SwiGLU MLP and two RMSNorms, and the final norm.
double ParameterCount(const ModelConfig& m) {
  const double hidden = m.hidden_size;
  const double embeddings = double(m.vocab_size) * hidden * (m.tie_word_embeddings ? 1 : 2);
  const double attention = hidden * m.q_size() + 2 * hidden * m.kv_size() + m.q_size() * hidden + 2.0 * m.head_dim;
  const double mlp = 3 * hidden * m.intermediate_size;
  return embeddings + m.num_layers * (attention + mlp + 2 * hidden) + hidden;
}

TEST(RandomWeightPresetsTest, EveryPresetHasTheSizeItsNameSays) {
  // The nominal sizes in the names are rounded totals (in billions of parameters).
  const std::pair<const char*, double> nominal[] = {{"qwen3-0.6b", 0.6}, {"qwen3-1.7b", 1.7}, {"qwen3-4b", 4.0},
                                                    {"qwen3-8b", 8.0},   {"qwen3-14b", 14.0}, {"qwen3-32b", 32.0}};
  ASSERT_EQ(RandomWeightPresetNames().size(), std::size(nominal));
  for (const auto& [name, billions] : nominal) {
    absl::StatusOr<ModelConfig> model = RandomWeightPresetModelConfig(name);
    ASSERT_TRUE(model.ok()) << model.status();
    EXPECT_EQ(model->arch, ModelArch::kQwen3) << name;
    EXPECT_TRUE(model->qk_norm) << name;
    EXPECT_EQ(model->num_heads % model->num_kv_heads, 0) << name;
    EXPECT_EQ(model->num_kv_heads, 8) << name;
    EXPECT_EQ(model->head_dim, 128) << name;
    EXPECT_FALSE(model->eos_token_ids.empty()) << name;
    const double count = ParameterCount(*model) / 1e9;
    EXPECT_NEAR(count, billions, 0.25 * billions) << name << " computes to " << count << "B parameters";
  }
}

TEST(RandomWeightPresetsTest, UnknownPresetListsTheKnownOnes) {
  absl::StatusOr<ModelConfig> model = RandomWeightPresetModelConfig("qwen3-8B");
  ASSERT_FALSE(model.ok());
  EXPECT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(model.status().message(), ::testing::HasSubstr("did you mean 'qwen3-8b'?"));
  EXPECT_THAT(model.status().message(), ::testing::HasSubstr("qwen3-32b"));
}

}  // namespace
}  // namespace asyncspade
