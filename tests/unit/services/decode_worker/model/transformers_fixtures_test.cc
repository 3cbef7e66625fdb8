// The CPU runner and engine against Hugging Face transformers: every fixture under
// tests/fixtures/transformers/ (made by tools/fixtures/make_transformers_fixtures.py) must give
// the reference logits at every prompt position and the same greedy continuation.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "common/npy.h"
#include "nlohmann/json.hpp"
#include "services/decode_worker/engine/generation_engine.h"
#include "services/decode_worker/model/cpu_model_runner.h"
#include "tests/unit/services/decode_worker/stories_test_util.h"

namespace asyncspade {
namespace {

namespace fs = std::filesystem;

// The fixtures the generator script writes; once the folder exists, each must be there.
const char* const kExpectedFixtures[] = {"qwen3_gqa", "qwen2_bias_tied_bf16", "llama_mha_sharded",
                                         "llama3_rope_scaling"};

fs::path FixtureRoot() { return fs::path(testing::SourceDir()) / "tests/fixtures/transformers"; }

std::vector<fs::path> FixtureDirs() {
  std::vector<fs::path> dirs;
  for (const auto& entry : fs::directory_iterator(FixtureRoot())) {
    if (entry.is_directory()) dirs.push_back(entry.path());
  }
  std::sort(dirs.begin(), dirs.end());
  return dirs;
}

TEST(TransformersFixturesTest, EveryExpectedFixtureIsPresent) {
  if (!fs::exists(FixtureRoot())) GTEST_SKIP() << FixtureRoot() << " does not exist yet";
  for (const char* name : kExpectedFixtures) {
    EXPECT_TRUE(fs::exists(FixtureRoot() / name / "fixture.json"))
        << "fixture " << name << " is missing under " << FixtureRoot()
        << "; regenerate with tools/fixtures/make_transformers_fixtures.py";
  }
}

void CheckFixture(const fs::path& dir) {
  std::ifstream in(dir / "fixture.json");
  ASSERT_TRUE(in.good()) << "cannot read " << dir / "fixture.json";
  const nlohmann::json fixture = nlohmann::json::parse(in);
  const std::string model_dir = (dir / fixture.at("model_dir").get<std::string>()).string();

  auto loaded = CpuModelWeights::Load(model_dir);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  std::shared_ptr<const CpuModelWeights> weights = std::move(loaded).value();
  const ModelConfig& config = weights->config();
  const nlohmann::json& expected = fixture.at("expected_config");
  EXPECT_EQ(config.vocab_size, expected.at("vocab_size").get<int>());
  EXPECT_EQ(config.head_dim, expected.at("head_dim").get<int>());
  EXPECT_EQ(config.num_kv_heads, expected.at("num_kv_heads").get<int>());
  EXPECT_EQ(config.tie_word_embeddings, expected.at("tie_word_embeddings").get<bool>());
  EXPECT_EQ(config.qk_norm, expected.at("qk_norm").get<bool>());
  EXPECT_EQ(config.attention_bias, expected.at("attention_bias").get<bool>());

  for (size_t p = 0; p < fixture.at("prompts").size(); ++p) {
    SCOPED_TRACE(::testing::Message() << "prompt " << p);
    const nlohmann::json& prompt = fixture.at("prompts")[p];
    const std::vector<int32_t> ids = prompt.at("ids").get<std::vector<int32_t>>();
    auto reference = ReadNpyFloat32((dir / prompt.at("logits").get<std::string>()).string());
    ASSERT_TRUE(reference.ok()) << reference.status();
    ASSERT_EQ(reference->shape, (std::vector<int64_t>{static_cast<int64_t>(ids.size()), config.vocab_size}));

    // Teacher-forced logits of every prompt position, through the engine's scoring path.
    auto runner = CpuModelRunner::Create(weights, {/*num_kv_blocks=*/16, /*page_size=*/16});
    ASSERT_TRUE(runner.ok()) << runner.status();
    auto engine = GenerationEngine::Create(std::move(runner).value(), {});
    ASSERT_TRUE(engine.ok()) << engine.status();
    const std::vector<int32_t> greedy_expected = prompt.at("greedy").at("ids").get<std::vector<int32_t>>();
    GenerationRequest request;
    request.prompt_ids = ids;
    request.max_tokens = static_cast<int>(greedy_expected.size());
    request.return_prompt_logits = true;
    ASSERT_TRUE((*engine)->Submit(0, request).ok());
    std::vector<int32_t> generated;
    std::vector<float> logits;
    while ((*engine)->HasWork()) {
      auto events = (*engine)->Step();
      ASSERT_TRUE(events.ok()) << events.status();
      for (GenerationEvent& e : *events) {
        if (!e.prompt_logits.empty()) logits = std::move(e.prompt_logits);
        if (e.token_id) generated.push_back(*e.token_id);
      }
    }
    ASSERT_EQ(logits.size(), reference->data.size());
    double max_abs_ref = 0, max_abs_diff = 0;
    for (size_t i = 0; i < logits.size(); ++i) {
      max_abs_ref = std::max(max_abs_ref, std::abs(double(reference->data[i])));
      max_abs_diff = std::max(max_abs_diff, std::abs(double(logits[i]) - reference->data[i]));
    }
    const double relative = max_abs_diff / max_abs_ref;
    EXPECT_LE(relative, 1e-3) << "max |ours - ref| = " << max_abs_diff << ", max |ref| = " << max_abs_ref;
    EXPECT_LE(max_abs_diff, 1e-3);
    std::printf("%s prompt %zu (%zu tokens): max |ours - ref| = %.3g, relative %.3g\n", dir.filename().c_str(), p,
                ids.size(), max_abs_diff, relative);
    EXPECT_EQ(generated, greedy_expected);
  }
}

TEST(TransformersFixturesTest, LogitsAndGreedyMatchTransformers) {
  if (!fs::exists(FixtureRoot())) GTEST_SKIP() << FixtureRoot() << " does not exist yet";
  const std::vector<fs::path> dirs = FixtureDirs();
  ASSERT_FALSE(dirs.empty()) << "no fixture folders under " << FixtureRoot();
  for (const fs::path& dir : dirs) {
    SCOPED_TRACE(dir.filename().string());
    CheckFixture(dir);
  }
}

}  // namespace
}  // namespace asyncspade
