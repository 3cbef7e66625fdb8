#include "common/tokenizer/normalizer.h"

#include <utf8proc.h>

#include <cstdlib>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "common/tokenizer/json_fields.h"
#include "common/tokenizer/regex.h"
#include "common/tokenizer/unicode.h"

namespace asyncspade::tokenizer {
namespace {

// NFC/NFD/NFKC/NFKD through utf8proc, applied only to the stretches that contain non-ASCII
// characters. Every ASCII character is a safe point for all four forms (it never decomposes,
// has combining class 0 and is never the second character of a composition), so normalizing
// the text between ASCII characters separately gives the same result as normalizing the whole.
class UnicodeNormalizer : public Normalizer {
 public:
  explicit UnicodeNormalizer(int options) : options_(options) {}
  void Normalize(std::string& text) const override {
    size_t first_non_ascii = 0;
    while (first_non_ascii < text.size() && static_cast<unsigned char>(text[first_non_ascii]) < 0x80) {
      ++first_non_ascii;
    }
    if (first_non_ascii == text.size()) return;
    std::string out;
    out.reserve(text.size() + text.size() / 8);
    size_t done = 0;
    size_t pos = first_non_ascii;
    while (pos < text.size()) {
      // The stretch starts at the ASCII character before the non-ASCII run (it may compose with
      // what follows) and ends at the next ASCII character.
      size_t start = pos > done ? pos - 1 : pos;
      size_t end = pos;
      while (end < text.size() && static_cast<unsigned char>(text[end]) >= 0x80) ++end;
      out.append(text, done, start - done);
      AppendNormalized(std::string_view(text).substr(start, end - start), out);
      done = end;
      pos = end;
      while (pos < text.size() && static_cast<unsigned char>(text[pos]) < 0x80) ++pos;
    }
    out.append(text, done, std::string::npos);
    text = std::move(out);
  }

 private:
  void AppendNormalized(std::string_view stretch, std::string& out) const {
    utf8proc_uint8_t* result = nullptr;
    utf8proc_ssize_t n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(stretch.data()),
                                      static_cast<utf8proc_ssize_t>(stretch.size()), &result,
                                      static_cast<utf8proc_option_t>(options_));
    // utf8proc only fails on invalid UTF-8 or out of memory; input is valid UTF-8 by contract, and
    // keeping the text unchanged is the safe answer either way.
    if (n < 0) {
      out.append(stretch);
      return;
    }
    out.append(reinterpret_cast<const char*>(result), static_cast<size_t>(n));
    std::free(result);
  }

  int options_;
};

class LowercaseNormalizer : public Normalizer {
 public:
  void Normalize(std::string& text) const override {
    std::string out;
    out.reserve(text.size());
    size_t pos = 0;
    while (pos < text.size()) {
      unsigned char b = static_cast<unsigned char>(text[pos]);
      if (b < 0x80) {
        out.push_back(static_cast<char>(b >= 'A' && b <= 'Z' ? b + 32 : b));
        ++pos;
        continue;
      }
      AppendLowercase(NextCodepoint(text, pos), out);
    }
    text = std::move(out);
  }
};

class PrependNormalizer : public Normalizer {
 public:
  explicit PrependNormalizer(std::string prefix) : prefix_(std::move(prefix)) {}
  void Normalize(std::string& text) const override {
    if (!text.empty()) text.insert(0, prefix_);
  }

 private:
  std::string prefix_;
};

class ReplaceNormalizer : public Normalizer {
 public:
  ReplaceNormalizer(TextPattern pattern, std::string content)
      : pattern_(std::move(pattern)), content_(std::move(content)) {}
  void Normalize(std::string& text) const override { text = pattern_.ReplaceAll(text, content_); }

 private:
  TextPattern pattern_;
  std::string content_;
};

class StripNormalizer : public Normalizer {
 public:
  StripNormalizer(bool left, bool right) : left_(left), right_(right) {}
  void Normalize(std::string& text) const override {
    size_t begin = 0, end = text.size();
    if (left_) {
      size_t pos = 0;
      while (pos < text.size()) {
        size_t next = pos;
        if (!IsWhitespace(NextCodepoint(text, next))) break;
        pos = next;
      }
      begin = pos;
    }
    if (right_) {
      // Walk back one character at a time: find each character's first byte.
      while (end > begin) {
        size_t start = end - 1;
        while (start > begin && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) --start;
        size_t pos = start;
        if (!IsWhitespace(NextCodepoint(text, pos))) break;
        end = start;
      }
    }
    text = text.substr(begin, end - begin);
  }

 private:
  bool left_, right_;
};

class SequenceNormalizer : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> steps) : steps_(std::move(steps)) {}
  void Normalize(std::string& text) const override {
    for (const auto& step : steps_) step->Normalize(text);
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> steps_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Normalizer>> ParseNormalizer(const nlohmann::json& config, const std::string& path) {
  if (config.is_null()) return std::unique_ptr<Normalizer>();
  ASSIGN_OR_RETURN(std::string type, ComponentType(config, path));
  if (type == "NFC") return std::make_unique<UnicodeNormalizer>(UTF8PROC_STABLE | UTF8PROC_COMPOSE);
  if (type == "NFD") return std::make_unique<UnicodeNormalizer>(UTF8PROC_STABLE | UTF8PROC_DECOMPOSE);
  if (type == "NFKC") {
    return std::make_unique<UnicodeNormalizer>(UTF8PROC_STABLE | UTF8PROC_COMPOSE | UTF8PROC_COMPAT);
  }
  if (type == "NFKD") {
    return std::make_unique<UnicodeNormalizer>(UTF8PROC_STABLE | UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT);
  }
  if (type == "Lowercase") return std::make_unique<LowercaseNormalizer>();
  if (type == "Prepend") {
    ASSIGN_OR_RETURN(std::string prefix, RequiredString(config, "prepend", path));
    return std::make_unique<PrependNormalizer>(std::move(prefix));
  }
  if (type == "Replace") {
    ASSIGN_OR_RETURN(TextPattern pattern, TextPattern::Parse(config, path));
    ASSIGN_OR_RETURN(std::string content, RequiredString(config, "content", path));
    return std::make_unique<ReplaceNormalizer>(std::move(pattern), std::move(content));
  }
  if (type == "Strip") {
    ASSIGN_OR_RETURN(bool left, OptionalBool(config, "strip_left", path, true));
    ASSIGN_OR_RETURN(bool right, OptionalBool(config, "strip_right", path, true));
    return std::make_unique<StripNormalizer>(left, right);
  }
  if (type == "Sequence") {
    ASSIGN_OR_RETURN(const nlohmann::json* items, RequiredArray(config, "normalizers", path));
    std::vector<std::unique_ptr<Normalizer>> steps;
    for (size_t i = 0; i < items->size(); ++i) {
      std::string item_path = JsonPath(JsonPath(path, "normalizers"), i);
      if ((*items)[i].is_null()) continue;
      ASSIGN_OR_RETURN(auto step, ParseNormalizer((*items)[i], item_path));
      steps.push_back(std::move(step));
    }
    return std::make_unique<SequenceNormalizer>(std::move(steps));
  }
  return absl::UnimplementedError(
      absl::StrCat("key '", JsonPath(path, "type"), "': unsupported normalizer type '", type,
                   "' (supported: NFC, NFD, NFKC, NFKD, Lowercase, Prepend, Replace, Strip, Sequence, null)"));
}

}  // namespace asyncspade::tokenizer
