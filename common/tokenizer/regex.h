// The regular expressions of tokenizer.json (Split pre-tokenizer, Replace normalizer/decoder) were
// written for Oniguruma, which HF `tokenizers` uses. This wraps PCRE2 (UTF + UCP, JIT when
// available) and adjusts the few places where the two engines disagree, so that matches agree
// with the reference.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace asyncspade::tokenizer {

class Regex {
 public:
  // `pattern` uses Oniguruma (Ruby) syntax as HF `tokenizers` reads it. Errors name the position.
  static absl::StatusOr<std::unique_ptr<Regex>> Compile(std::string_view pattern);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // All non-overlapping matches, left to right, as byte ranges of `subject` (valid UTF-8). Empty
  // matches follow Oniguruma's iterator: an empty match right where the previous match ended is
  // skipped and the search moves on by one character. Thread-safe.
  std::vector<std::pair<size_t, size_t>> FindAll(std::string_view subject) const;

  const std::string& pattern() const { return pattern_; }

 private:
  Regex() = default;
  std::string pattern_;
  void* code_ = nullptr;  // pcre2_code_8*; kept opaque so that pcre2.h stays out of this header
};

// The {"String": "..."} / {"Regex": "..."} pattern object of Split, Replace (normalizer and decoder).
// HF compiles a String pattern as an escaped regex; a literal search finds the same matches.
class TextPattern {
 public:
  static absl::StatusOr<TextPattern> Parse(const nlohmann::json& owner, const std::string& owner_path);
  std::vector<std::pair<size_t, size_t>> FindAll(std::string_view subject) const;
  // Replaces every match by `content`.
  std::string ReplaceAll(std::string_view subject, std::string_view content) const;

 private:
  std::string literal_;
  std::shared_ptr<const Regex> regex_;  // null for a String pattern
};

}  // namespace asyncspade::tokenizer
