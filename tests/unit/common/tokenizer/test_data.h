// Where the tokenizer tests find their data: /work/shared (ASYNCSPADE_SHARED_DIR) and the
// repository's fixtures (ASYNCSPADE_SOURCE_DIR); same-named environment variables override both.
#pragma once

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "nlohmann/json.hpp"
#include "tests/test_paths.h"

namespace asyncspade::testing {

inline std::string Qwen3TokenizerDir() { return SharedDir() + "/tokenizers/qwen3"; }
inline std::string Stories260KDir() { return SharedDir() + "/models/stories260K"; }

inline bool Exists(const std::string& path) { return std::filesystem::exists(path); }

// One JSON value per non-empty line.
inline std::vector<nlohmann::json> ReadJsonLines(const std::string& path) {
  std::vector<nlohmann::json> lines;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty()) lines.push_back(nlohmann::json::parse(line));
  }
  return lines;
}

inline nlohmann::json ReadJson(const std::string& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in);
}

}  // namespace asyncspade::testing
