#include "common/tokenizer/added_vocabulary.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "common/tokenizer/json_fields.h"
#include "common/tokenizer/unicode.h"

namespace asyncspade::tokenizer {
namespace {

char32_t LastCodepoint(std::string_view text) {
  size_t start = text.size() - 1;
  while (start > 0 && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) --start;
  return NextCodepoint(text, start);
}

// Start of the whitespace run that ends `text` (text.size() when it does not end in whitespace).
size_t TrailingWhitespaceStart(std::string_view text) {
  size_t end = text.size();
  while (end > 0) {
    size_t start = end - 1;
    while (start > 0 && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) --start;
    size_t pos = start;
    if (!IsWhitespace(NextCodepoint(text, pos))) break;
    end = start;
  }
  return end;
}

size_t LeadingWhitespaceLength(std::string_view text) {
  size_t pos = 0;
  while (pos < text.size()) {
    size_t next = pos;
    if (!IsWhitespace(NextCodepoint(text, next))) break;
    pos = next;
  }
  return pos;
}

}  // namespace

absl::StatusOr<std::vector<AddedToken>> ParseAddedTokens(const nlohmann::json& config, const std::string& path) {
  std::vector<AddedToken> tokens;
  if (config.is_null()) return tokens;
  if (!config.is_array()) {
    return absl::InvalidArgumentError(absl::StrCat("key '", path, "' must be an array, found ", config.type_name()));
  }
  for (size_t i = 0; i < config.size(); ++i) {
    const nlohmann::json& entry = config[i];
    std::string entry_path = JsonPath(path, i);
    if (!entry.is_object()) {
      return absl::InvalidArgumentError(absl::StrCat("key '", entry_path, "' must be an object"));
    }
    AddedToken token;
    ASSIGN_OR_RETURN(int64_t id, OptionalInt(entry, "id", entry_path, -1));
    if (id < 0 || id > INT32_MAX) {
      return absl::InvalidArgumentError(absl::StrCat("key '", JsonPath(entry_path, "id"),
                                                     "' must be a non-negative 32-bit id"));
    }
    token.id = static_cast<int32_t>(id);
    ASSIGN_OR_RETURN(token.content, RequiredString(entry, "content", entry_path));
    ASSIGN_OR_RETURN(token.single_word, OptionalBool(entry, "single_word", entry_path, false));
    ASSIGN_OR_RETURN(token.lstrip, OptionalBool(entry, "lstrip", entry_path, false));
    ASSIGN_OR_RETURN(token.rstrip, OptionalBool(entry, "rstrip", entry_path, false));
    ASSIGN_OR_RETURN(token.special, OptionalBool(entry, "special", entry_path, false));
    // HF's default: special tokens are matched in the raw text, others in the normalized text.
    ASSIGN_OR_RETURN(token.normalized, OptionalBool(entry, "normalized", entry_path, !token.special));
    tokens.push_back(std::move(token));
  }
  return tokens;
}

void AddedTokenMatcher::Add(std::string content, const AddedToken& token) {
  if (content.empty()) return;
  auto& bucket = by_first_byte_[static_cast<unsigned char>(content[0])];
  auto at = std::upper_bound(bucket.begin(), bucket.end(), content.size(),
                             [](size_t size, const Pattern& p) { return size > p.content.size(); });
  bucket.insert(at, {std::move(content), token});
  empty_ = false;
}

void AddedTokenMatcher::Split(PreTokenizedText& text) const {
  if (empty_) return;
  text.Split([this](std::string_view piece, PreTokenizedText::Sink& sink) { SplitOne(piece, sink); });
}

void AddedTokenMatcher::SplitOne(std::string_view text, PreTokenizedText::Sink& sink) const {
  size_t emitted = 0;  // end of the last range handed out
  size_t search = 0;
  while (search < text.size()) {
    // Leftmost match first, then the longest one there.
    size_t at = search;
    const Pattern* hit = nullptr;
    for (; at < text.size(); ++at) {
      for (const Pattern& p : by_first_byte_[static_cast<unsigned char>(text[at])]) {
        if (p.content.size() <= text.size() - at &&
            std::memcmp(text.data() + at, p.content.data(), p.content.size()) == 0) {
          hit = &p;
          break;
        }
      }
      if (hit != nullptr) break;
    }
    if (hit == nullptr) break;
    size_t start = at, stop = at + hit->content.size();
    search = stop;  // matching resumes after the match even when the match is rejected below
    const AddedToken& token = hit->token;
    if (token.single_word) {
      bool space_before = start == 0 || !IsWordChar(LastCodepoint(text.substr(0, start)));
      size_t next = stop;
      bool space_after = stop == text.size() || !IsWordChar(NextCodepoint(text, next));
      if (!space_before || !space_after) continue;
    }
    if (token.lstrip) start = std::max(TrailingWhitespaceStart(text.substr(0, start)), emitted);
    if (token.rstrip) stop += LeadingWhitespaceLength(text.substr(stop));
    if (emitted < start) sink.Add(emitted, start);
    sink.Add(start, stop, token.id);
    emitted = stop;
    search = std::max(search, stop);
  }
  if (emitted < text.size()) sink.Add(emitted, text.size());
}

}  // namespace asyncspade::tokenizer
