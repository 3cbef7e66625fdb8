#include "common/tokenizer/regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "common/tokenizer/json_fields.h"
#include "common/tokenizer/unicode.h"
#include "glog/logging.h"

namespace asyncspade::tokenizer {
namespace {

// Oniguruma's \s is Unicode White_Space, which includes U+0085 (NEL); PCRE2's \s under UCP is
// "Z category or tab/LF/VT/FF/CR" and misses it. Rewrites \s and \S to add NEL, inside and outside
// bracket expressions, leaving every other escape untouched.
std::string TranslateOnigurumaPattern(std::string_view pattern) {
  std::string out;
  out.reserve(pattern.size() + 16);
  int class_depth = 0;
  for (size_t i = 0; i < pattern.size(); ++i) {
    char c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {
      char e = pattern[i + 1];
      ++i;
      if (e == 's') {
        out += class_depth > 0 ? "\\s\\x{85}" : "[\\s\\x{85}]";
      } else if (e == 'S' && class_depth == 0) {
        out += "[^\\s\\x{85}]";
      } else {
        out.push_back('\\');
        out.push_back(e);
      }
      continue;
    }
    if (c == '[') {
      ++class_depth;
      out.push_back(c);
      // A ']' right after '[' or '[^' is a literal member, not the end of the class.
      if (i + 1 < pattern.size() && pattern[i + 1] == '^') out.push_back(pattern[++i]);
      if (i + 1 < pattern.size() && pattern[i + 1] == ']') out.push_back(pattern[++i]);
      continue;
    }
    if (c == ']' && class_depth > 0) --class_depth;
    out.push_back(c);
  }
  return out;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Regex>> Regex::Compile(std::string_view pattern) {
  std::string translated = TranslateOnigurumaPattern(pattern);
  int error_code = 0;
  PCRE2_SIZE error_offset = 0;
  // Ruby syntax (what the onig crate uses): ^ and $ are line anchors.
  uint32_t options = PCRE2_UTF | PCRE2_UCP | PCRE2_MULTILINE | PCRE2_NO_UTF_CHECK;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()), translated.size(),
                                   options, &error_code, &error_offset, nullptr);
  if (code == nullptr) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error_code, message, sizeof(message));
    return absl::InvalidArgumentError(absl::StrCat("invalid regular expression '", std::string(pattern),
                                                   "': ", reinterpret_cast<const char*>(message),
                                                   " (at byte ", error_offset, " of the translated pattern)"));
  }
  // JIT is an optimisation: if the platform lacks it, pcre2_match interprets.
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
  std::unique_ptr<Regex> regex(new Regex());
  regex->pattern_ = std::string(pattern);
  regex->code_ = code;
  return regex;
}

Regex::~Regex() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

std::vector<std::pair<size_t, size_t>> Regex::FindAll(std::string_view subject) const {
  std::vector<std::pair<size_t, size_t>> matches;
  auto* code = static_cast<pcre2_code*>(code_);
  pcre2_match_data* match_data = pcre2_match_data_create_from_pattern(code, nullptr);
  CHECK(match_data != nullptr) << "out of memory allocating PCRE2 match data";
  const auto* data = reinterpret_cast<PCRE2_SPTR>(subject.data());
  size_t search_from = 0;
  bool have_last_end = false;
  size_t last_match_end = 0;
  while (search_from <= subject.size()) {
    int rc = pcre2_match(code, data, subject.size(), search_from, PCRE2_NO_UTF_CHECK, match_data, nullptr);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT) {
      // The interpreter keeps its backtracking frames on the heap, so it copes where the JIT's
      // fixed stack does not (very long runs of one character class).
      rc = pcre2_match(code, data, subject.size(), search_from, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT,
                       match_data, nullptr);
    }
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      // Only a pathological pattern gets here (match or heap limit). Treating the rest of the
      // subject as unmatched keeps the tokenizer total instead of failing the request.
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(rc, message, sizeof(message));
      LOG(ERROR) << "tokenizer regex '" << pattern_ << "' gave up at byte " << search_from << ": "
                 << reinterpret_cast<const char*>(message);
      break;
    }
    const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(match_data);
    size_t start = ovector[0], end = ovector[1];
    if (start == end && have_last_end && last_match_end == end) {
      if (search_from >= subject.size()) break;
      search_from += Utf8SequenceLength(static_cast<unsigned char>(subject[search_from]));
      continue;
    }
    matches.emplace_back(start, end);
    search_from = end;
    have_last_end = true;
    last_match_end = end;
  }
  pcre2_match_data_free(match_data);
  return matches;
}

absl::StatusOr<TextPattern> TextPattern::Parse(const nlohmann::json& owner, const std::string& owner_path) {
  std::string path = JsonPath(owner_path, "pattern");
  auto bad = [&] {
    return absl::InvalidArgumentError(
        absl::StrCat("key '", path, "' must be an object {\"String\": ...} or {\"Regex\": ...}"));
  };
  auto it = owner.find("pattern");
  if (it == owner.end() || !it->is_object()) return bad();
  TextPattern pattern;
  ASSIGN_OR_RETURN(std::optional<std::string> literal, OptionalString(*it, "String", path));
  if (literal) {
    pattern.literal_ = *literal;
    return pattern;
  }
  ASSIGN_OR_RETURN(std::optional<std::string> regex, OptionalString(*it, "Regex", path));
  if (!regex) return bad();
  auto compiled = Regex::Compile(*regex);
  if (!compiled.ok()) return Annotate(compiled.status(), absl::StrCat("key '", JsonPath(path, "Regex"), "'"));
  pattern.regex_ = std::move(compiled).value();
  return pattern;
}

std::vector<std::pair<size_t, size_t>> TextPattern::FindAll(std::string_view subject) const {
  if (regex_ != nullptr) return regex_->FindAll(subject);
  std::vector<std::pair<size_t, size_t>> matches;
  if (literal_.empty()) return matches;
  for (size_t at = subject.find(literal_); at != std::string_view::npos;
       at = subject.find(literal_, at + literal_.size())) {
    matches.emplace_back(at, at + literal_.size());
  }
  return matches;
}

std::string TextPattern::ReplaceAll(std::string_view subject, std::string_view content) const {
  std::string out;
  size_t done = 0;
  for (auto [start, end] : FindAll(subject)) {
    out.append(subject.substr(done, start - done));
    out.append(content);
    done = end;
  }
  out.append(subject.substr(done));
  return out;
}

}  // namespace asyncspade::tokenizer
