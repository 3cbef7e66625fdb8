#include "common/model_config.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/test_paths.h"

namespace asyncspade {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing::SharedDir;
using testing::SourceDir;
using testing::TempDir;

json Qwen3Json() {
  return json::parse(R"({
    "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
    "vocab_size": 384, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 24,
    "max_position_embeddings": 512, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
    "tie_word_embeddings": false, "attention_bias": false, "hidden_act": "silu",
    "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32"
  })");
}

json LlamaJson() {
  return json::parse(R"({
    "architectures": ["LlamaForCausalLM"], "vocab_size": 256, "hidden_size": 96,
    "intermediate_size": 160, "num_hidden_layers": 2, "num_attention_heads": 6,
    "rms_norm_eps": 1e-5, "rope_theta": 500000.0
  })");
}

absl::Status ParseStatus(const json& j) { return ParseModelConfig(j).status(); }

TEST(ModelConfigTest, ParsesQwen3WithExplicitHeadDimAndGqa) {
  auto config = ParseModelConfig(Qwen3Json());
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->arch, ModelArch::kQwen3);
  EXPECT_EQ(config->architecture, "Qwen3ForCausalLM");
  EXPECT_EQ(config->vocab_size, 384);
  EXPECT_EQ(config->hidden_size, 64);
  EXPECT_EQ(config->intermediate_size, 128);
  EXPECT_EQ(config->num_layers, 3);
  EXPECT_EQ(config->num_heads, 4);
  EXPECT_EQ(config->num_kv_heads, 2);
  EXPECT_EQ(config->head_dim, 24);  // explicit, not hidden / heads = 16
  EXPECT_EQ(config->q_size(), 96);
  EXPECT_EQ(config->kv_size(), 48);
  EXPECT_EQ(config->group_size(), 2);
  EXPECT_EQ(config->max_position_embeddings, 512);
  EXPECT_DOUBLE_EQ(config->rope_theta, 1e6);
  EXPECT_DOUBLE_EQ(config->rms_norm_eps, 1e-6);
  EXPECT_TRUE(config->qk_norm);
  EXPECT_FALSE(config->attention_bias);
  EXPECT_FALSE(config->o_proj_bias);
  EXPECT_FALSE(config->tie_word_embeddings);
  EXPECT_EQ(config->rope_scaling.type, RopeScaling::Type::kDefault);
  EXPECT_EQ(config->bos_token_id, 1);
  EXPECT_THAT(config->eos_token_ids, ElementsAre(2));
  EXPECT_EQ(config->torch_dtype, "float32");
}

TEST(ModelConfigTest, Qwen3WithoutHeadDimUsesTransformersDefaultOf128) {
  json j = Qwen3Json();
  j.erase("head_dim");
  auto config = ParseModelConfig(j);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->head_dim, 128);
}

TEST(ModelConfigTest, Qwen2AlwaysHasQkvBiasesButNoOutputBias) {
  json j = Qwen3Json();
  j["architectures"] = {"Qwen2ForCausalLM"};
  j["tie_word_embeddings"] = true;
  j.erase("head_dim");
  j.erase("attention_bias");
  auto config = ParseModelConfig(j);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->arch, ModelArch::kQwen2);
  EXPECT_TRUE(config->attention_bias);
  EXPECT_FALSE(config->o_proj_bias);
  EXPECT_FALSE(config->qk_norm);
  EXPECT_TRUE(config->tie_word_embeddings);
  EXPECT_EQ(config->head_dim, 16);  // derived: 64 / 4
}

TEST(ModelConfigTest, LlamaDefaultsFollowTransformers) {
  auto config = ParseModelConfig(LlamaJson());
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->arch, ModelArch::kLlama);
  EXPECT_EQ(config->num_kv_heads, 6);  // missing num_key_value_heads: multi-head attention
  EXPECT_EQ(config->head_dim, 16);
  EXPECT_EQ(config->max_position_embeddings, 2048);
  EXPECT_FALSE(config->tie_word_embeddings);
  EXPECT_FALSE(config->attention_bias);
  EXPECT_FALSE(config->qk_norm);
  EXPECT_FALSE(config->bos_token_id.has_value());
  EXPECT_TRUE(config->eos_token_ids.empty());
}

TEST(ModelConfigTest, LlamaAttentionBiasAppliesToAllProjections) {
  json j = LlamaJson();
  j["attention_bias"] = true;
  auto config = ParseModelConfig(j);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_TRUE(config->attention_bias);
  EXPECT_TRUE(config->o_proj_bias);
}

TEST(ModelConfigTest, ModelTypeAloneSelectsTheArchitecture) {
  json j = LlamaJson();
  j.erase("architectures");
  j["model_type"] = "qwen2";
  auto config = ParseModelConfig(j);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->arch, ModelArch::kQwen2);
  EXPECT_EQ(config->architecture, "Qwen2ForCausalLM");
}

TEST(ModelConfigTest, EosTokenIdMayBeAList) {
  json j = LlamaJson();
  j["eos_token_id"] = {7, 9, 7};
  auto config = ParseModelConfig(j);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_THAT(config->eos_token_ids, ElementsAre(7, 9));
}

TEST(ModelConfigTest, RopeParametersFormIsRead) {
  json j = LlamaJson();
  j.erase("rope_theta");
  j["rope_parameters"] = {{"rope_theta", 250000.0}, {"rope_type", "default"}};
  auto config = ParseModelConfig(j);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_DOUBLE_EQ(config->rope_theta, 250000.0);
  EXPECT_EQ(config->rope_scaling.type, RopeScaling::Type::kDefault);
}

TEST(ModelConfigTest, Llama3RopeScalingInEitherForm) {
  const json params = {{"factor", 32.0},
                       {"low_freq_factor", 1.0},
                       {"high_freq_factor", 4.0},
                       {"original_max_position_embeddings", 8192}};
  for (const char* key : {"rope_scaling", "rope_parameters"}) {
    for (const char* type_key : {"rope_type", "type"}) {
      SCOPED_TRACE(std::string(key) + " / " + type_key);
      json j = LlamaJson();
      j[key] = params;
      j[key][type_key] = "llama3";
      auto config = ParseModelConfig(j);
      ASSERT_TRUE(config.ok()) << config.status();
      EXPECT_EQ(config->rope_scaling.type, RopeScaling::Type::kLlama3);
      EXPECT_DOUBLE_EQ(config->rope_scaling.factor, 32.0);
      EXPECT_DOUBLE_EQ(config->rope_scaling.low_freq_factor, 1.0);
      EXPECT_DOUBLE_EQ(config->rope_scaling.high_freq_factor, 4.0);
      EXPECT_EQ(config->rope_scaling.original_max_position_embeddings, 8192);
      EXPECT_DOUBLE_EQ(config->rope_theta, 500000.0);
    }
  }
}

TEST(ModelConfigTest, Llama3RopeScalingWithoutFactorNamesTheKey) {
  json j = LlamaJson();
  j["rope_scaling"] = {{"rope_type", "llama3"}, {"low_freq_factor", 1.0}, {"high_freq_factor", 4.0},
                       {"original_max_position_embeddings", 8192}};
  absl::Status status = ParseStatus(j);
  EXPECT_FALSE(status.ok());
  EXPECT_THAT(status.message(), HasSubstr("rope_scaling.factor"));
}

TEST(ModelConfigTest, UnsupportedRopeTypesAreClearErrors) {
  for (const char* type : {"yarn", "dynamic", "linear", "longrope"}) {
    json j = LlamaJson();
    j["rope_scaling"] = {{"rope_type", type}, {"factor", 4.0}};
    absl::Status status = ParseStatus(j);
    EXPECT_EQ(status.code(), absl::StatusCode::kUnimplemented) << type;
    EXPECT_THAT(status.message(), HasSubstr(type));
    EXPECT_THAT(status.message(), HasSubstr("llama3"));
  }
}

TEST(ModelConfigTest, UnsupportedArchitectureListsTheSupportedOnes) {
  json j = LlamaJson();
  j["architectures"] = {"MistralForCausalLM"};
  absl::Status status = ParseStatus(j);
  EXPECT_EQ(status.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(status.message(), HasSubstr("MistralForCausalLM"));
  EXPECT_THAT(status.message(), HasSubstr("LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM"));
}

struct BadConfigCase {
  const char* name;
  const char* key;       // set (or erased when value is null)
  json value;
  const char* expected;  // substring of the error
};

TEST(ModelConfigTest, InvalidValuesAreErrorsNamingTheKey) {
  const BadConfigCase cases[] = {
      {"missing vocab", "vocab_size", nullptr, "'vocab_size' is missing"},
      {"zero hidden", "hidden_size", 0, "'hidden_size' must be positive"},
      {"negative layers", "num_hidden_layers", -2, "'num_hidden_layers' must be positive"},
      {"string size", "intermediate_size", "128", "'intermediate_size' must be an integer"},
      {"fractional heads", "num_attention_heads", 4.5, "'num_attention_heads' must be an integer"},
      {"kv not dividing", "num_key_value_heads", 4, "must be a multiple of num_key_value_heads"},
      {"odd head_dim", "head_dim", 15, "'head_dim' must be even"},
      {"zero eps", "rms_norm_eps", 0.0, "'rms_norm_eps' must be positive"},
      {"bad theta", "rope_theta", "big", "'rope_theta' must be a number"},
      {"bad tie", "tie_word_embeddings", "yes", "'tie_word_embeddings' must be true or false"},
      {"bos out of range", "bos_token_id", 384, "'bos_token_id'"},
      {"eos out of range", "eos_token_id", json::array({2, 1000}), "'eos_token_id'"},
      {"eos string", "eos_token_id", "</s>", "'eos_token_id' must be a non-negative integer"},
      {"gelu", "hidden_act", "gelu", "'hidden_act'"},
      {"mlp bias", "mlp_bias", true, "'mlp_bias'"},
      {"sliding window", "use_sliding_window", true, "'use_sliding_window'"},
      {"sliding layers", "layer_types", json::array({"full_attention", "sliding_attention"}), "'layer_types'"},
      {"archs not list", "architectures", "Qwen3ForCausalLM", "'architectures'"},
  };
  for (const BadConfigCase& c : cases) {
    SCOPED_TRACE(c.name);
    json j = Qwen3Json();
    if (c.value.is_null()) {
      j.erase(c.key);
    } else {
      j[c.key] = c.value;
    }
    if (std::string(c.name) == "kv not dividing") j["num_attention_heads"] = 6;  // 6 % 4 != 0
    absl::Status status = ParseStatus(j);
    EXPECT_FALSE(status.ok());
    EXPECT_THAT(status.message(), HasSubstr(c.expected));
  }
}

TEST(ModelConfigTest, DerivedHeadDimNeedsDivisibleHiddenSize) {
  json j = LlamaJson();
  j["num_attention_heads"] = 5;
  absl::Status status = ParseStatus(j);
  EXPECT_FALSE(status.ok());
  EXPECT_THAT(status.message(), HasSubstr("'head_dim' is missing"));
}

TEST(ModelConfigTest, TopLevelMustBeAnObject) {
  EXPECT_FALSE(ParseModelConfig(json::array({1, 2})).ok());
}

TEST(ModelConfigTest, LoadMergesGenerationConfigEosIds) {
  TempDir dir;
  json j = LlamaJson();
  j["eos_token_id"] = 2;
  dir.Write("config.json", j.dump());
  dir.Write("generation_config.json", R"({"bos_token_id": 1, "eos_token_id": [2, 5]})");
  auto config = LoadModelConfig(dir.path());
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_THAT(config->eos_token_ids, ElementsAre(2, 5));
  EXPECT_EQ(config->bos_token_id, 1);  // taken from generation_config.json when config.json has none
}

TEST(ModelConfigTest, LoadReportsMissingAndMalformedFiles) {
  TempDir dir;
  absl::Status missing = LoadModelConfig(dir.path()).status();
  EXPECT_EQ(missing.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.message(), HasSubstr("config.json"));

  dir.Write("config.json", "{\"vocab_size\": 12,");
  absl::Status malformed = LoadModelConfig(dir.path()).status();
  EXPECT_FALSE(malformed.ok());
  EXPECT_THAT(malformed.message(), HasSubstr("not valid JSON"));

  dir.Write("config.json", LlamaJson().dump());
  dir.Write("generation_config.json", R"({"eos_token_id": "x"})");
  absl::Status bad_generation = LoadModelConfig(dir.path()).status();
  EXPECT_FALSE(bad_generation.ok());
  EXPECT_THAT(bad_generation.message(), HasSubstr("generation_config.json"));
}

TEST(ModelConfigTest, LoadsStories260K) {
  const std::string dir = SharedDir() + "/models/stories260K";
  if (!fs::exists(dir + "/config.json")) GTEST_SKIP() << dir << " is absent (set ASYNCSPADE_SHARED_DIR)";
  auto config = LoadModelConfig(dir);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->arch, ModelArch::kLlama);
  EXPECT_EQ(config->hidden_size, 64);
  EXPECT_EQ(config->num_layers, 5);
  EXPECT_EQ(config->num_heads, 8);
  EXPECT_EQ(config->num_kv_heads, 4);
  EXPECT_EQ(config->head_dim, 8);
  EXPECT_EQ(config->vocab_size, 512);
  EXPECT_TRUE(config->tie_word_embeddings);
  EXPECT_DOUBLE_EQ(config->rms_norm_eps, 1e-5);
  EXPECT_THAT(config->eos_token_ids, ElementsAre(2));
}

// Every committed transformers fixture must parse and agree with the values its generator chose
// (recorded independently of config.json in fixture.json).
TEST(ModelConfigTest, LoadsEveryTransformersFixture) {
  const fs::path root = fs::path(SourceDir()) / "tests/fixtures/transformers";
  if (!fs::exists(root)) GTEST_SKIP() << root << " is absent";
  int checked = 0;
  for (const auto& entry : fs::directory_iterator(root)) {
    const fs::path fixture = entry.path() / "fixture.json";
    if (!fs::exists(fixture)) continue;
    SCOPED_TRACE(entry.path().string());
    json expected = json::parse(std::ifstream(fixture));
    auto config = LoadModelConfig((entry.path() / "model").string());
    ASSERT_TRUE(config.ok()) << config.status();
    const json& e = expected.at("expected_config");
    EXPECT_EQ(config->architecture, e.at("architecture").get<std::string>());
    EXPECT_EQ(config->vocab_size, e.at("vocab_size").get<int>());
    EXPECT_EQ(config->hidden_size, e.at("hidden_size").get<int>());
    EXPECT_EQ(config->num_layers, e.at("num_layers").get<int>());
    EXPECT_EQ(config->num_heads, e.at("num_heads").get<int>());
    EXPECT_EQ(config->num_kv_heads, e.at("num_kv_heads").get<int>());
    EXPECT_EQ(config->head_dim, e.at("head_dim").get<int>());
    EXPECT_EQ(config->tie_word_embeddings, e.at("tie_word_embeddings").get<bool>());
    EXPECT_EQ(config->attention_bias, e.at("attention_bias").get<bool>());
    EXPECT_EQ(config->qk_norm, e.at("qk_norm").get<bool>());
    EXPECT_DOUBLE_EQ(config->rope_theta, e.at("rope_theta").get<double>());
    EXPECT_EQ(config->rope_scaling.type == RopeScaling::Type::kLlama3, e.at("rope_llama3").get<bool>());
    ++checked;
  }
  if (checked == 0) GTEST_SKIP() << "no fixtures under " << root;
}

}  // namespace
}  // namespace asyncspade
