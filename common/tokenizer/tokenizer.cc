#include "common/tokenizer/tokenizer.h"

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "nlohmann/json.hpp"
#include "common/tokenizer/hf_tokenizer.h"
#include "glog/logging.h"

namespace asyncspade {
namespace {

absl::StatusOr<nlohmann::json> ReadJsonFile(const std::string& path, const std::string& what) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    return absl::InvalidArgumentError(absl::StrCat(what, " '", path, "' is a directory, expected a JSON file"));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(absl::StrCat("cannot open ", what, " '", path, "': ", std::strerror(errno)));
  }
  std::stringstream buffer;
  buffer << in.rdbuf();
  try {
    return nlohmann::json::parse(buffer.str());
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(what, " '", path, "' is not valid JSON: ", e.what()));
  }
}

bool EndsWithReplacementChar(const std::string& text) {
  return text.size() >= 3 && text.compare(text.size() - 3, 3, "\xEF\xBF\xBD") == 0;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJson(const nlohmann::json& tokenizer_json,
                                                               const nlohmann::json* tokenizer_config) {
  ASSIGN_OR_RETURN(auto tokenizer, tokenizer::HfTokenizer::Create(tokenizer_json, tokenizer_config));
  return std::unique_ptr<Tokenizer>(std::move(tokenizer));
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromFile(const std::string& tokenizer_json_path) {
  ASSIGN_OR_RETURN(nlohmann::json json, ReadJsonFile(tokenizer_json_path, "tokenizer file"));
  auto tokenizer = FromJson(json, nullptr);
  if (!tokenizer.ok()) return Annotate(tokenizer.status(), tokenizer_json_path);
  return tokenizer;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromModelDir(const std::string& model_dir) {
  std::filesystem::path dir(model_dir);
  std::string json_path = (dir / "tokenizer.json").string();
  std::error_code ec;
  if (!std::filesystem::exists(json_path, ec)) {
    return absl::NotFoundError(absl::StrCat("model directory '", model_dir,
                                            "' has no tokenizer.json (only HF tokenizer.json tokenizers are supported)"));
  }
  ASSIGN_OR_RETURN(nlohmann::json json, ReadJsonFile(json_path, "tokenizer file"));
  std::string config_path = (dir / "tokenizer_config.json").string();
  std::optional<nlohmann::json> config;
  if (std::filesystem::exists(config_path, ec)) {
    ASSIGN_OR_RETURN(config, ReadJsonFile(config_path, "tokenizer config"));
  }
  auto tokenizer = FromJson(json, config ? &*config : nullptr);
  if (!tokenizer.ok()) return Annotate(tokenizer.status(), model_dir);
  return tokenizer;
}

IncrementalDetokenizer::IncrementalDetokenizer(const Tokenizer& tokenizer, bool skip_special_tokens)
    : tokenizer_(tokenizer), skip_special_tokens_(skip_special_tokens) {}

std::string IncrementalDetokenizer::Push(int32_t id) {
  ids_.push_back(id);
  if (tokenizer_.TextPendingAfter(id, skip_special_tokens_)) return "";
  std::string text = tokenizer_.Decode(ids_, skip_special_tokens_);
  // Text ending in U+FFFD may be a character whose remaining bytes are still to come.
  if (text.size() <= prefix_text_.size() || EndsWithReplacementChar(text)) return "";
  std::string fresh;
  if (text.compare(0, prefix_text_.size(), prefix_text_) == 0) {
    fresh = text.substr(prefix_text_.size());
  } else {
    // Decoders are local enough that this does not happen; if one is not, emit what differs
    // rather than nothing.
    size_t common = 0;
    while (common < prefix_text_.size() && prefix_text_[common] == text[common]) ++common;
    LOG_FIRST_N(WARNING, 5) << "incremental detokenization: decoded text no longer extends the emitted prefix";
    fresh = text.substr(common);
  }
  ids_.erase(ids_.begin(), ids_.begin() + static_cast<std::ptrdiff_t>(prefix_ids_));
  prefix_ids_ = ids_.size();
  prefix_text_ = tokenizer_.Decode(ids_, skip_special_tokens_);
  return fresh;
}

std::string IncrementalDetokenizer::Flush() {
  std::string rest;
  if (ids_.size() > prefix_ids_) {
    std::string text = tokenizer_.Decode(ids_, skip_special_tokens_);
    if (text.size() > prefix_text_.size() && text.compare(0, prefix_text_.size(), prefix_text_) == 0) {
      rest = text.substr(prefix_text_.size());
    }
  }
  ids_.clear();
  prefix_ids_ = 0;
  prefix_text_.clear();
  return rest;
}

}  // namespace asyncspade
