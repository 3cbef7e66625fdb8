// Normalizers of HF tokenizer.json: NFC, NFD, NFKC, NFKD, Lowercase, Prepend, Replace, Strip and
// Sequence. They run on each piece of input text between added tokens.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace asyncspade::tokenizer {

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  // `text` is valid UTF-8 and stays valid UTF-8.
  virtual void Normalize(std::string& text) const = 0;
};

// Builds the normalizer described by `config` (found at JSON path `path`). A null config gives a
// null pointer (no normalization). Unknown types are errors naming `path` and the type.
absl::StatusOr<std::unique_ptr<Normalizer>> ParseNormalizer(const nlohmann::json& config, const std::string& path);

}  // namespace asyncspade::tokenizer
