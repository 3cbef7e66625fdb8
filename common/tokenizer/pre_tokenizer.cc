#include "common/tokenizer/pre_tokenizer.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "common/tokenizer/byte_level.h"
#include "common/tokenizer/json_fields.h"
#include "common/tokenizer/regex.h"
#include "common/tokenizer/unicode.h"
#include "glog/logging.h"

namespace asyncspade::tokenizer {
namespace {

// A cut of a piece: byte range and whether the range is a match of the splitting pattern.
struct Cut {
  size_t start;
  size_t end;
  bool is_match;
};

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

// Matches -> cuts covering the whole piece (HF's Pattern::find_matches).
std::vector<Cut> CutsFromMatches(size_t length, const std::vector<std::pair<size_t, size_t>>& matches,
                                 bool invert) {
  std::vector<Cut> cuts;
  if (length == 0) return {{0, 0, invert}};
  size_t prev = 0;
  for (auto [start, end] : matches) {
    if (prev != start) cuts.push_back({prev, start, invert});
    cuts.push_back({start, end, !invert});
    prev = end;
  }
  if (prev != length) cuts.push_back({prev, length, invert});
  return cuts;
}

// HF's NormalizedString::split: returns the kept ranges.
std::vector<std::pair<size_t, size_t>> ApplyBehavior(const std::vector<Cut>& cuts, SplitBehavior behavior) {
  std::vector<std::pair<size_t, size_t>> out;
  out.reserve(cuts.size());
  switch (behavior) {
    case SplitBehavior::kIsolated:
      for (const Cut& c : cuts) out.emplace_back(c.start, c.end);
      break;
    case SplitBehavior::kRemoved:
      for (const Cut& c : cuts) {
        if (!c.is_match) out.emplace_back(c.start, c.end);
      }
      break;
    case SplitBehavior::kContiguous: {
      bool previous_match = false;
      for (const Cut& c : cuts) {
        if (c.is_match == previous_match && !out.empty()) {
          out.back().second = c.end;
        } else {
          out.emplace_back(c.start, c.end);
        }
        previous_match = c.is_match;
      }
      break;
    }
    case SplitBehavior::kMergedWithPrevious: {
      bool previous_match = false;
      for (const Cut& c : cuts) {
        if (c.is_match && !previous_match && !out.empty()) {
          out.back().second = c.end;
        } else {
          out.emplace_back(c.start, c.end);
        }
        previous_match = c.is_match;
      }
      break;
    }
    case SplitBehavior::kMergedWithNext: {
      bool previous_match = false;
      for (auto it = cuts.rbegin(); it != cuts.rend(); ++it) {
        if (it->is_match && !previous_match && !out.empty()) {
          out.back().first = it->start;
        } else {
          out.emplace_back(it->start, it->end);
        }
        previous_match = it->is_match;
      }
      std::reverse(out.begin(), out.end());
      break;
    }
  }
  return out;
}

void AddRanges(const std::vector<std::pair<size_t, size_t>>& ranges, PreTokenizedText::Sink& sink) {
  for (auto [start, end] : ranges) sink.Add(start, end);
}

class SplitPreTokenizer : public PreTokenizer {
 public:
  SplitPreTokenizer(TextPattern pattern, SplitBehavior behavior, bool invert)
      : pattern_(std::move(pattern)), behavior_(behavior), invert_(invert) {}
  void PreTokenize(PreTokenizedText& text) const override {
    text.Split([&](std::string_view piece, PreTokenizedText::Sink& sink) {
      AddRanges(ApplyBehavior(CutsFromMatches(piece.size(), pattern_.FindAll(piece), invert_), behavior_), sink);
    });
  }

 private:
  TextPattern pattern_;
  SplitBehavior behavior_;
  bool invert_;
};

// GPT-2's pre-tokenization regex, used by ByteLevel when use_regex is true.
constexpr char kGpt2Pattern[] =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

class ByteLevelPreTokenizer : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, std::unique_ptr<Regex> regex)
      : add_prefix_space_(add_prefix_space), regex_(std::move(regex)) {}
  void PreTokenize(PreTokenizedText& text) const override {
    if (add_prefix_space_) {
      text.Transform([](std::string_view piece, bool, std::string& out) {
        if (piece[0] != ' ') out.push_back(' ');
        out.append(piece);
      });
    }
    if (regex_ != nullptr) {
      text.Split([&](std::string_view piece, PreTokenizedText::Sink& sink) {
        AddRanges(ApplyBehavior(CutsFromMatches(piece.size(), regex_->FindAll(piece), false),
                                SplitBehavior::kIsolated),
                  sink);
      });
    }
    text.Transform([](std::string_view piece, bool, std::string& out) { AppendByteLevel(piece, out); });
  }

 private:
  bool add_prefix_space_;
  std::unique_ptr<Regex> regex_;  // null when use_regex is false
};

class DigitsPreTokenizer : public PreTokenizer {
 public:
  explicit DigitsPreTokenizer(bool individual_digits) : individual_digits_(individual_digits) {}
  void PreTokenize(PreTokenizedText& text) const override {
    text.Split([&](std::string_view piece, PreTokenizedText::Sink& sink) {
      // Every numeric character is its own match (HF's char-predicate pattern).
      std::vector<std::pair<size_t, size_t>> matches;
      size_t pos = 0;
      while (pos < piece.size()) {
        size_t start = pos;
        if (IsNumeric(NextCodepoint(piece, pos))) matches.emplace_back(start, pos);
      }
      if (matches.empty()) {
        sink.Add(0, piece.size());
        return;
      }
      auto behavior = individual_digits_ ? SplitBehavior::kIsolated : SplitBehavior::kContiguous;
      AddRanges(ApplyBehavior(CutsFromMatches(piece.size(), matches, false), behavior), sink);
    });
  }

 private:
  bool individual_digits_;
};

enum class PrependScheme { kAlways, kFirst, kNever };

class MetaspacePreTokenizer : public PreTokenizer {
 public:
  MetaspacePreTokenizer(char32_t replacement, PrependScheme scheme, bool split)
      : scheme_(scheme), split_(split) {
    AppendUtf8(replacement, replacement_);
  }
  void PreTokenize(PreTokenizedText& text) const override {
    text.Transform([&](std::string_view piece, bool at_input_start, std::string& out) {
      bool starts_with_replacement = piece[0] == ' ' || piece.substr(0, replacement_.size()) == replacement_;
      if (!starts_with_replacement &&
          (scheme_ == PrependScheme::kAlways || (scheme_ == PrependScheme::kFirst && at_input_start))) {
        out += replacement_;
      }
      for (char c : piece) {
        if (c == ' ') {
          out += replacement_;
        } else {
          out.push_back(c);
        }
      }
    });
    if (!split_) return;
    text.Split([&](std::string_view piece, PreTokenizedText::Sink& sink) {
      std::vector<std::pair<size_t, size_t>> matches;
      for (size_t at = piece.find(replacement_); at != std::string_view::npos;
           at = piece.find(replacement_, at + replacement_.size())) {
        matches.emplace_back(at, at + replacement_.size());
      }
      AddRanges(ApplyBehavior(CutsFromMatches(piece.size(), matches, false), SplitBehavior::kMergedWithNext), sink);
    });
  }

 private:
  std::string replacement_;
  PrependScheme scheme_;
  bool split_;
};

class SequencePreTokenizer : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> steps) : steps_(std::move(steps)) {}
  void PreTokenize(PreTokenizedText& text) const override {
    for (const auto& step : steps_) step->PreTokenize(text);
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> steps_;
};

absl::StatusOr<SplitBehavior> ParseBehavior(const nlohmann::json& config, const std::string& path) {
  ASSIGN_OR_RETURN(std::string behavior, RequiredString(config, "behavior", path));
  if (behavior == "Removed") return SplitBehavior::kRemoved;
  if (behavior == "Isolated") return SplitBehavior::kIsolated;
  if (behavior == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (behavior == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (behavior == "Contiguous") return SplitBehavior::kContiguous;
  return absl::InvalidArgumentError(absl::StrCat(
      "key '", JsonPath(path, "behavior"), "': unknown split behavior '", behavior,
      "' (expected Removed, Isolated, MergedWithPrevious, MergedWithNext or Contiguous)"));
}

absl::StatusOr<PrependScheme> ParsePrependScheme(const nlohmann::json& config, const std::string& path) {
  // Old files only have add_prefix_space; newer ones have prepend_scheme (default "always").
  ASSIGN_OR_RETURN(std::optional<std::string> scheme, OptionalString(config, "prepend_scheme", path));
  ASSIGN_OR_RETURN(bool add_prefix_space, OptionalBool(config, "add_prefix_space", path, true));
  PrependScheme parsed = PrependScheme::kAlways;
  if (scheme) {
    if (*scheme == "always") {
      parsed = PrependScheme::kAlways;
    } else if (*scheme == "first") {
      parsed = PrependScheme::kFirst;
    } else if (*scheme == "never") {
      parsed = PrependScheme::kNever;
    } else {
      return absl::InvalidArgumentError(absl::StrCat("key '", JsonPath(path, "prepend_scheme"),
                                                     "': unknown value '", *scheme,
                                                     "' (expected always, first or never)"));
    }
  }
  if (!add_prefix_space) {
    if (scheme && parsed != PrependScheme::kNever) {
      return absl::InvalidArgumentError(absl::StrCat("key '", JsonPath(path, "add_prefix_space"),
                                                     "' is false but prepend_scheme is '", *scheme,
                                                     "'; they must agree"));
    }
    parsed = PrependScheme::kNever;
  }
  return parsed;
}

}  // namespace

PreTokenizedText::PreTokenizedText(std::string text) : buffer_(std::move(text)) {
  if (!buffer_.empty()) pieces_.push_back({0, buffer_.size(), true, -1});
}

absl::StatusOr<std::unique_ptr<PreTokenizer>> ParsePreTokenizer(const nlohmann::json& config,
                                                                const std::string& path) {
  if (config.is_null()) return std::unique_ptr<PreTokenizer>();
  ASSIGN_OR_RETURN(std::string type, ComponentType(config, path));
  if (type == "Split") {
    ASSIGN_OR_RETURN(TextPattern pattern, TextPattern::Parse(config, path));
    ASSIGN_OR_RETURN(SplitBehavior behavior, ParseBehavior(config, path));
    ASSIGN_OR_RETURN(bool invert, OptionalBool(config, "invert", path, false));
    return std::make_unique<SplitPreTokenizer>(std::move(pattern), behavior, invert);
  }
  if (type == "ByteLevel") {
    ASSIGN_OR_RETURN(bool add_prefix_space, OptionalBool(config, "add_prefix_space", path, true));
    ASSIGN_OR_RETURN(bool use_regex, OptionalBool(config, "use_regex", path, true));
    std::unique_ptr<Regex> regex;
    if (use_regex) {
      auto compiled = Regex::Compile(kGpt2Pattern);
      CHECK(compiled.ok()) << "the built-in GPT-2 pattern must compile: " << compiled.status();
      regex = std::move(compiled).value();
    }
    return std::make_unique<ByteLevelPreTokenizer>(add_prefix_space, std::move(regex));
  }
  if (type == "Digits") {
    ASSIGN_OR_RETURN(bool individual, OptionalBool(config, "individual_digits", path, false));
    return std::make_unique<DigitsPreTokenizer>(individual);
  }
  if (type == "Metaspace") {
    ASSIGN_OR_RETURN(char32_t replacement, RequiredChar(config, "replacement", path));
    ASSIGN_OR_RETURN(PrependScheme scheme, ParsePrependScheme(config, path));
    ASSIGN_OR_RETURN(bool split, OptionalBool(config, "split", path, true));
    return std::make_unique<MetaspacePreTokenizer>(replacement, scheme, split);
  }
  if (type == "Sequence") {
    ASSIGN_OR_RETURN(const nlohmann::json* items, RequiredArray(config, "pretokenizers", path));
    std::vector<std::unique_ptr<PreTokenizer>> steps;
    for (size_t i = 0; i < items->size(); ++i) {
      if ((*items)[i].is_null()) continue;
      ASSIGN_OR_RETURN(auto step, ParsePreTokenizer((*items)[i], JsonPath(JsonPath(path, "pretokenizers"), i)));
      steps.push_back(std::move(step));
    }
    return std::make_unique<SequencePreTokenizer>(std::move(steps));
  }
  return absl::UnimplementedError(
      absl::StrCat("key '", JsonPath(path, "type"), "': unsupported pre-tokenizer type '", type,
                   "' (supported: Split, ByteLevel, Digits, Metaspace, Sequence, null)"));
}

}  // namespace asyncspade::tokenizer
