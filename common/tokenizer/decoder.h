// Decoders of HF tokenizer.json: ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace and
// Sequence. A decoder rewrites the list of token strings; the decoded text is their concatenation.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace asyncspade::tokenizer {

class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual void DecodeChain(std::vector<std::string>& tokens) const = 0;
  // True when this decoder (or a step of it) is ByteFallback: the text of a run of <0xXX> tokens
  // depends on whether the whole run is valid UTF-8, so streaming must wait for the run to end.
  virtual bool HasByteFallback() const { return false; }
};

// Null config -> null pointer (HF then joins tokens with spaces). Unknown types are errors naming
// `path` and the type.
absl::StatusOr<std::unique_ptr<Decoder>> ParseDecoder(const nlohmann::json& config, const std::string& path);

// The <0xXX> spelling of byte-fallback tokens: returns the byte, or -1.
int ByteFallbackValue(const std::string& token);

}  // namespace asyncspade::tokenizer
