#include "common/tokenizer/post_processor.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "common/tokenizer/json_fields.h"

namespace asyncspade::tokenizer {
namespace {

class TemplatePostProcessor : public PostProcessor {
 public:
  TemplatePostProcessor(std::vector<int32_t> before, std::vector<int32_t> after)
      : before_(std::move(before)), after_(std::move(after)) {}
  void AddSpecialTokens(std::vector<int32_t>& ids) const override {
    ids.insert(ids.begin(), before_.begin(), before_.end());
    ids.insert(ids.end(), after_.begin(), after_.end());
  }

 private:
  std::vector<int32_t> before_;
  std::vector<int32_t> after_;
};

class NoopPostProcessor : public PostProcessor {
 public:
  void AddSpecialTokens(std::vector<int32_t>&) const override {}
};

class SequencePostProcessor : public PostProcessor {
 public:
  explicit SequencePostProcessor(std::vector<std::unique_ptr<PostProcessor>> steps) : steps_(std::move(steps)) {}
  void AddSpecialTokens(std::vector<int32_t>& ids) const override {
    for (const auto& step : steps_) step->AddSpecialTokens(ids);
  }

 private:
  std::vector<std::unique_ptr<PostProcessor>> steps_;
};

// "single": [{"SpecialToken": {"id": "<s>"}}, {"Sequence": {"id": "A"}}, ...] with the ids of each
// special token in "special_tokens": {"<s>": {"ids": [1], ...}}.
absl::StatusOr<std::unique_ptr<PostProcessor>> ParseTemplate(const nlohmann::json& config, const std::string& path) {
  ASSIGN_OR_RETURN(const nlohmann::json* single, RequiredArray(config, "single", path));
  std::string single_path = JsonPath(path, "single");
  std::string specials_path = JsonPath(path, "special_tokens");
  auto specials_it = config.find("special_tokens");
  const nlohmann::json empty = nlohmann::json::object();
  const nlohmann::json& specials =
      specials_it != config.end() && specials_it->is_object() ? *specials_it : empty;
  std::vector<int32_t> before, after;
  int sequences = 0;
  for (size_t i = 0; i < single->size(); ++i) {
    const nlohmann::json& piece = (*single)[i];
    std::string piece_path = JsonPath(single_path, i);
    if (piece.is_object() && piece.contains("Sequence")) {
      ASSIGN_OR_RETURN(std::string id, RequiredString(piece["Sequence"], "id", JsonPath(piece_path, "Sequence")));
      if (id != "A") {
        return absl::InvalidArgumentError(
            absl::StrCat("key '", piece_path, "': a single-sequence template may only use sequence A, found ", id));
      }
      ++sequences;
      continue;
    }
    if (!piece.is_object() || !piece.contains("SpecialToken")) {
      return absl::InvalidArgumentError(absl::StrCat("key '", piece_path,
                                                     "' must be {\"SpecialToken\": ...} or {\"Sequence\": ...}"));
    }
    ASSIGN_OR_RETURN(std::string name,
                     RequiredString(piece["SpecialToken"], "id", JsonPath(piece_path, "SpecialToken")));
    auto special = specials.find(name);
    if (special == specials.end()) {
      return absl::InvalidArgumentError(absl::StrCat("key '", piece_path, "' uses special token \"", name,
                                                     "\", which is not defined in '", specials_path, "'"));
    }
    std::string special_path = JsonPath(specials_path, name);
    ASSIGN_OR_RETURN(const nlohmann::json* ids, RequiredArray(*special, "ids", special_path));
    for (const auto& id : *ids) {
      if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > INT32_MAX) {
        return absl::InvalidArgumentError(
            absl::StrCat("key '", JsonPath(special_path, "ids"), "' must hold non-negative ids, found ", id.dump()));
      }
      (sequences == 0 ? before : after).push_back(static_cast<int32_t>(id.get<int64_t>()));
    }
  }
  if (sequences != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("key '", single_path, "' must contain sequence A exactly once, found ", sequences));
  }
  return std::make_unique<TemplatePostProcessor>(std::move(before), std::move(after));
}

}  // namespace

absl::StatusOr<std::unique_ptr<PostProcessor>> ParsePostProcessor(const nlohmann::json& config,
                                                                  const std::string& path) {
  if (config.is_null()) return std::unique_ptr<PostProcessor>();
  ASSIGN_OR_RETURN(std::string type, ComponentType(config, path));
  if (type == "TemplateProcessing") return ParseTemplate(config, path);
  if (type == "ByteLevel") return std::make_unique<NoopPostProcessor>();
  if (type == "Sequence") {
    ASSIGN_OR_RETURN(const nlohmann::json* items, RequiredArray(config, "processors", path));
    std::vector<std::unique_ptr<PostProcessor>> steps;
    for (size_t i = 0; i < items->size(); ++i) {
      if ((*items)[i].is_null()) continue;
      ASSIGN_OR_RETURN(auto step, ParsePostProcessor((*items)[i], JsonPath(JsonPath(path, "processors"), i)));
      steps.push_back(std::move(step));
    }
    return std::make_unique<SequencePostProcessor>(std::move(steps));
  }
  return absl::UnimplementedError(
      absl::StrCat("key '", JsonPath(path, "type"), "': unsupported post-processor type '", type,
                   "' (supported: TemplateProcessing, ByteLevel, Sequence, null)"));
}

}  // namespace asyncspade::tokenizer
