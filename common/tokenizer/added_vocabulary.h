// Added tokens of HF tokenizer.json ("added_tokens"): matched whole in the input before the
// model sees it, leftmost-longest like HF's Aho-Corasick matcher, honouring single_word, lstrip
// and rstrip. Tokens with normalized=false are matched in the raw text, the others in the
// normalized text.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/tokenizer/pre_tokenizer.h"
#include "nlohmann/json.hpp"

namespace asyncspade::tokenizer {

class Normalizer;

struct AddedToken {
  int32_t id = -1;
  std::string content;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = true;
  bool special = false;
};

absl::StatusOr<std::vector<AddedToken>> ParseAddedTokens(const nlohmann::json& config, const std::string& path);

// Matches one set of added tokens (the raw-text set or the normalized-text set).
class AddedTokenMatcher {
 public:
  // `content` is what is searched for (for normalized tokens: the normalized content).
  void Add(std::string content, const AddedToken& token);
  bool empty() const { return empty_; }
  // Replaces every piece without a token id by the runs between matches and the matches (which
  // carry their token id).
  void Split(PreTokenizedText& text) const;

 private:
  struct Pattern {
    std::string content;
    AddedToken token;
  };
  void SplitOne(std::string_view text, PreTokenizedText::Sink& sink) const;
  // Patterns by first byte, longest first, so that the first hit at a position is the longest.
  std::array<std::vector<Pattern>, 256> by_first_byte_;
  bool empty_ = true;
};

}  // namespace asyncspade::tokenizer
