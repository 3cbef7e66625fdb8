// Post-processors of HF tokenizer.json for single sequences: TemplateProcessing (e.g. Llama's BOS),
// ByteLevel (offsets only, so no change to ids) and Sequence. Applied when special tokens are
// requested.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace asyncspade::tokenizer {

class PostProcessor {
 public:
  virtual ~PostProcessor() = default;
  virtual void AddSpecialTokens(std::vector<int32_t>& ids) const = 0;
};

// Null config -> null pointer. Unknown types are errors naming `path` and the type.
absl::StatusOr<std::unique_ptr<PostProcessor>> ParsePostProcessor(const nlohmann::json& config,
                                                                  const std::string& path);

}  // namespace asyncspade::tokenizer
