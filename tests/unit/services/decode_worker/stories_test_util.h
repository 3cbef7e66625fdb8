// Shared by the decode-worker tests: where /work/shared lives, the stories260K model and its
// golden vectors (shared/models/stories260K/golden.json).
#pragma once

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "nlohmann/json.hpp"
#include "services/decode_worker/model/cpu_model_weights.h"
#include "tests/test_paths.h"

namespace asyncspade::testing {

inline std::string StoriesDir() { return SharedDir() + "/models/stories260K"; }
inline bool HaveStories() { return std::filesystem::exists(StoriesDir() + "/model.safetensors"); }

#define ASYNCSPADE_REQUIRE_STORIES()                                                               \
  if (!::asyncspade::testing::HaveStories())                                                       \
  GTEST_SKIP() << "stories260K not found under " << ::asyncspade::testing::StoriesDir()           \
               << " (set ASYNCSPADE_SHARED_DIR to the shared/ folder)"

struct GoldenPrompt {
  std::string text;
  std::vector<int32_t> ids;
  std::vector<int32_t> continuation_ids;
  std::string full_text;
};

struct StoriesGolden {
  std::vector<int32_t> greedy_from_bos;
  std::string greedy_text;
  std::vector<std::pair<int32_t, double>> top5_logits_pos0;
  std::vector<GoldenPrompt> prompts;
};

inline StoriesGolden LoadStoriesGolden() {
  std::ifstream in(StoriesDir() + "/golden.json");
  const nlohmann::json j = nlohmann::json::parse(in);
  StoriesGolden g;
  g.greedy_from_bos = j.at("greedy_from_bos").get<std::vector<int32_t>>();
  g.greedy_text = j.at("greedy_text").get<std::string>();
  for (const auto& pair : j.at("top5_logits_pos0")) g.top5_logits_pos0.push_back({pair[0].get<int32_t>(), pair[1].get<double>()});
  for (const auto& p : j.at("prompts")) {
    g.prompts.push_back({p.at("text").get<std::string>(), p.at("ids").get<std::vector<int32_t>>(),
                         p.at("continuation_ids").get<std::vector<int32_t>>(), p.at("full_text").get<std::string>()});
  }
  return g;
}

// Loaded once per test binary.
inline std::shared_ptr<const CpuModelWeights> StoriesWeights() {
  static std::shared_ptr<const CpuModelWeights> weights = [] {
    auto loaded = CpuModelWeights::Load(StoriesDir());
    if (!loaded.ok()) {
      ADD_FAILURE() << "loading stories260K: " << loaded.status();
      return std::shared_ptr<const CpuModelWeights>();
    }
    return std::shared_ptr<const CpuModelWeights>(std::move(loaded).value());
  }();
  return weights;
}

}  // namespace asyncspade::testing
