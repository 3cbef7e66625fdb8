#include "common/tokenizer/decoder.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "common/tokenizer/byte_level.h"
#include "common/tokenizer/json_fields.h"
#include "common/tokenizer/regex.h"
#include "common/tokenizer/unicode.h"

namespace asyncspade::tokenizer {
namespace {

// Joins the bytes the characters stand for and converts them with from_utf8_lossy. A token with a
// character outside the byte alphabet (e.g. an added token with a space) contributes its own
// UTF-8 bytes instead.
class ByteLevelDecoder : public Decoder {
 public:
  void DecodeChain(std::vector<std::string>& tokens) const override {
    std::string bytes;
    for (const std::string& token : tokens) {
      size_t mark = bytes.size();
      size_t pos = 0;
      bool all_mapped = true;
      while (pos < token.size()) {
        int b = ByteLevelByte(NextCodepoint(token, pos));
        if (b < 0) {
          all_mapped = false;
          break;
        }
        bytes.push_back(static_cast<char>(b));
      }
      if (!all_mapped) {
        bytes.resize(mark);
        bytes += token;
      }
    }
    tokens.assign(1, Utf8Lossy(bytes));
  }
};

class ReplaceDecoder : public Decoder {
 public:
  ReplaceDecoder(TextPattern pattern, std::string content) : pattern_(std::move(pattern)), content_(std::move(content)) {}
  void DecodeChain(std::vector<std::string>& tokens) const override {
    for (std::string& token : tokens) token = pattern_.ReplaceAll(token, content_);
  }

 private:
  TextPattern pattern_;
  std::string content_;
};

// Runs of <0xXX> tokens become their bytes when the run is valid UTF-8, else one U+FFFD per byte
// (not per maximal subpart: that is HF's rule here).
class ByteFallbackDecoder : public Decoder {
 public:
  void DecodeChain(std::vector<std::string>& tokens) const override {
    std::vector<std::string> out;
    out.reserve(tokens.size());
    std::string run;
    auto flush = [&] {
      if (run.empty()) return;
      if (IsValidUtf8(run)) {
        out.push_back(run);
      } else {
        std::string replacement;
        AppendUtf8(kReplacementChar, replacement);
        for (size_t i = 0; i < run.size(); ++i) out.push_back(replacement);
      }
      run.clear();
    };
    for (std::string& token : tokens) {
      int b = ByteFallbackValue(token);
      if (b >= 0) {
        run.push_back(static_cast<char>(b));
        continue;
      }
      flush();
      out.push_back(std::move(token));
    }
    flush();
    tokens = std::move(out);
  }
  bool HasByteFallback() const override { return true; }
};

class FuseDecoder : public Decoder {
 public:
  void DecodeChain(std::vector<std::string>& tokens) const override {
    std::string joined;
    for (const std::string& token : tokens) joined += token;
    tokens.assign(1, std::move(joined));
  }
};

// Removes up to `start` leading and `stop` trailing `content` characters from each token.
class StripDecoder : public Decoder {
 public:
  StripDecoder(char32_t content, size_t start, size_t stop) : content_(content), start_(start), stop_(stop) {}
  void DecodeChain(std::vector<std::string>& tokens) const override {
    for (std::string& token : tokens) {
      std::vector<std::pair<size_t, char32_t>> chars;  // (byte offset, character)
      size_t pos = 0;
      while (pos < token.size()) {
        size_t at = pos;
        chars.emplace_back(at, NextCodepoint(token, pos));
      }
      size_t start_cut = 0;
      for (size_t i = 0; i < start_ && i < chars.size() && chars[i].second == content_; ++i) start_cut = i + 1;
      size_t stop_cut = chars.size();
      for (size_t i = 0; i < stop_ && i < chars.size(); ++i) {
        size_t index = chars.size() - i - 1;
        if (chars[index].second != content_) break;
        stop_cut = index;
      }
      if (start_cut >= stop_cut) {
        token.clear();
        continue;
      }
      size_t begin = chars[start_cut].first;
      size_t end = stop_cut < chars.size() ? chars[stop_cut].first : token.size();
      token = token.substr(begin, end - begin);
    }
  }

 private:
  char32_t content_;
  size_t start_, stop_;
};

// Replacement characters become spaces, except in the first token where they are dropped (unless
// prepend_scheme is "never").
class MetaspaceDecoder : public Decoder {
 public:
  MetaspaceDecoder(char32_t replacement, bool drop_in_first) : drop_in_first_(drop_in_first) {
    AppendUtf8(replacement, replacement_);
  }
  void DecodeChain(std::vector<std::string>& tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      std::string& token = tokens[i];
      std::string out;
      size_t done = 0;
      for (size_t at = token.find(replacement_); at != std::string::npos;
           at = token.find(replacement_, done)) {
        out.append(token, done, at - done);
        if (!(i == 0 && drop_in_first_)) out.push_back(' ');
        done = at + replacement_.size();
      }
      out.append(token, done, std::string::npos);
      token = std::move(out);
    }
  }

 private:
  std::string replacement_;
  bool drop_in_first_;
};

class SequenceDecoder : public Decoder {
 public:
  explicit SequenceDecoder(std::vector<std::unique_ptr<Decoder>> steps) : steps_(std::move(steps)) {}
  void DecodeChain(std::vector<std::string>& tokens) const override {
    for (const auto& step : steps_) step->DecodeChain(tokens);
  }
  bool HasByteFallback() const override {
    for (const auto& step : steps_) {
      if (step->HasByteFallback()) return true;
    }
    return false;
  }

 private:
  std::vector<std::unique_ptr<Decoder>> steps_;
};

}  // namespace

int ByteFallbackValue(const std::string& token) {
  if (token.size() != 6 || token.compare(0, 3, "<0x") != 0 || token[5] != '>') return -1;
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  int hi = hex(token[3]), lo = hex(token[4]);
  if (lo < 0) return -1;
  if (token[3] == '+') return lo;  // Rust's u8::from_str_radix accepts a leading '+'
  if (hi < 0) return -1;
  return hi * 16 + lo;
}

absl::StatusOr<std::unique_ptr<Decoder>> ParseDecoder(const nlohmann::json& config, const std::string& path) {
  if (config.is_null()) return std::unique_ptr<Decoder>();
  ASSIGN_OR_RETURN(std::string type, ComponentType(config, path));
  if (type == "ByteLevel") return std::make_unique<ByteLevelDecoder>();
  if (type == "Replace") {
    ASSIGN_OR_RETURN(TextPattern pattern, TextPattern::Parse(config, path));
    ASSIGN_OR_RETURN(std::string content, RequiredString(config, "content", path));
    return std::make_unique<ReplaceDecoder>(std::move(pattern), std::move(content));
  }
  if (type == "ByteFallback") return std::make_unique<ByteFallbackDecoder>();
  if (type == "Fuse") return std::make_unique<FuseDecoder>();
  if (type == "Strip") {
    ASSIGN_OR_RETURN(char32_t content, RequiredChar(config, "content", path));
    ASSIGN_OR_RETURN(int64_t start, OptionalInt(config, "start", path, 0));
    ASSIGN_OR_RETURN(int64_t stop, OptionalInt(config, "stop", path, 0));
    if (start < 0 || stop < 0) {
      return absl::InvalidArgumentError(absl::StrCat("key '", path, "': start and stop must be non-negative"));
    }
    return std::make_unique<StripDecoder>(content, static_cast<size_t>(start), static_cast<size_t>(stop));
  }
  if (type == "Metaspace") {
    ASSIGN_OR_RETURN(char32_t replacement, RequiredChar(config, "replacement", path));
    ASSIGN_OR_RETURN(std::optional<std::string> scheme, OptionalString(config, "prepend_scheme", path));
    ASSIGN_OR_RETURN(bool add_prefix_space, OptionalBool(config, "add_prefix_space", path, true));
    bool never = (scheme && *scheme == "never") || !add_prefix_space;
    return std::make_unique<MetaspaceDecoder>(replacement, !never);
  }
  if (type == "Sequence") {
    ASSIGN_OR_RETURN(const nlohmann::json* items, RequiredArray(config, "decoders", path));
    std::vector<std::unique_ptr<Decoder>> steps;
    for (size_t i = 0; i < items->size(); ++i) {
      if ((*items)[i].is_null()) continue;
      ASSIGN_OR_RETURN(auto step, ParseDecoder((*items)[i], JsonPath(JsonPath(path, "decoders"), i)));
      steps.push_back(std::move(step));
    }
    return std::make_unique<SequenceDecoder>(std::move(steps));
  }
  return absl::UnimplementedError(
      absl::StrCat("key '", JsonPath(path, "type"), "': unsupported decoder type '", type,
                   "' (supported: ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace, Sequence, null)"));
}

}  // namespace asyncspade::tokenizer
