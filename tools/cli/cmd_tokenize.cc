// `asyncspade tokenize --tokenizer PATH [--decode]`: a JSON-lines filter over the tokenizer.
//   encode: {"text": "..."}  ->  {"ids": [...]}   (no special tokens added)
//   decode: {"ids": [...]}   ->  {"text": "..."}  (special tokens kept; unknown ids dropped)
// One output line per input line; blank input lines are skipped. The first malformed line stops
// the run with an error naming its line number and exit code 1: the lines before it have already
// been answered on stdout, nothing after it is read.
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "common/tokenizer/tokenizer.h"
#include "nlohmann/json.hpp"
#include "tools/cli/args.h"
#include "tools/cli/commands.h"

namespace asyncspade::cli {
namespace {

const std::vector<FlagSpec>& TokenizeFlags() {
  static const std::vector<FlagSpec> flags = {
      {"tokenizer", true, "a tokenizer.json file, or a model directory that contains one"},
      {"decode", false, "read {\"ids\": [...]} lines and write {\"text\": ...} instead of encoding"},
      {"help", false, "show this help"},
  };
  return flags;
}

constexpr char kSynopsis[] = "--tokenizer PATH [--decode]  < requests.jsonl";

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizer(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) return Tokenizer::FromModelDir(path);
  return Tokenizer::FromFile(path);
}

// Compact JSON with UTF-8 written as is, except the characters that some line splitters treat
// as line breaks (NEL, LINE and PARAGRAPH SEPARATOR): those are \u-escaped so that every answer
// stays on one line for any reader. They can only occur inside strings, so the rewrite is safe.
std::string Dump(const nlohmann::json& value) {
  std::string raw = value.dump(-1, ' ', /*ensure_ascii=*/false, nlohmann::json::error_handler_t::replace);
  std::string out;
  out.reserve(raw.size());
  for (size_t i = 0; i < raw.size(); ++i) {
    if (raw.compare(i, 2, "\xC2\x85") == 0) {
      out += "\\u0085";
      i += 1;
    } else if (raw.compare(i, 3, "\xE2\x80\xA8") == 0 || raw.compare(i, 3, "\xE2\x80\xA9") == 0) {
      out += raw[i + 2] == '\xA8' ? "\\u2028" : "\\u2029";
      i += 2;
    } else {
      out.push_back(raw[i]);
    }
  }
  return out;
}

// Answers one request line; errors describe what is wrong with the line.
absl::StatusOr<std::string> Answer(const Tokenizer& tokenizer, const std::string& line, bool decode) {
  nlohmann::json request;
  try {
    request = nlohmann::json::parse(line);
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("not valid JSON (", e.what(), ")"));
  }
  if (!decode) {
    auto text = request.is_object() ? request.find("text") : request.end();
    if (!request.is_object() || text == request.end() || !text->is_string()) {
      return absl::InvalidArgumentError("expected a JSON object with a string \"text\", e.g. {\"text\": \"Hello\"}");
    }
    return Dump({{"ids", tokenizer.Encode(text->get_ref<const std::string&>(), /*add_special_tokens=*/false)}});
  }
  auto ids_field = request.is_object() ? request.find("ids") : request.end();
  if (!request.is_object() || ids_field == request.end() || !ids_field->is_array()) {
    return absl::InvalidArgumentError("expected a JSON object with an array \"ids\", e.g. {\"ids\": [9707, 11]}");
  }
  std::vector<int32_t> ids;
  ids.reserve(ids_field->size());
  for (size_t i = 0; i < ids_field->size(); ++i) {
    const nlohmann::json& id = (*ids_field)[i];
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > std::numeric_limits<int32_t>::max()) {
      return absl::InvalidArgumentError(
          absl::StrCat("\"ids\"[", i, "] is ", id.dump(), "; token ids are integers in [0, 2^31)"));
    }
    ids.push_back(static_cast<int32_t>(id.get<int64_t>()));
  }
  return Dump({{"text", tokenizer.Decode(ids, /*skip_special_tokens=*/false)}});
}

int TokenizeCommand(int argc, char** argv) {
  int exit_code = 0;
  std::optional<Args> args = ParseCommandArgs(
      argc, argv, "tokenize", kSynopsis, TokenizeFlags(), &exit_code,
      "Reads JSON lines on stdin and writes one JSON line per input line:\n"
      "  encode: {\"text\": \"...\"} -> {\"ids\": [...]}   (no special tokens added)\n"
      "  decode: {\"ids\": [...]} -> {\"text\": \"...\"}   (special tokens kept, unknown ids dropped)\n"
      "Blank lines are skipped. A malformed line stops the run (exit code 1).\n");
  if (!args) return exit_code;
  if (!args->positional().empty() || !args->Has("tokenizer")) {
    std::string problem = args->positional().empty()
                              ? std::string("--tokenizer PATH is required")
                              : absl::StrCat("unexpected argument '", args->positional()[0], "'");
    std::fprintf(stderr, "asyncspade tokenize: %s\n%s", problem.c_str(),
                 Args::Usage("tokenize", kSynopsis, TokenizeFlags()).c_str());
    return 2;
  }
  const std::string path = *args->Get("tokenizer");
  auto tokenizer = LoadTokenizer(path);
  if (!tokenizer.ok()) {
    std::fprintf(stderr, "asyncspade tokenize: cannot load the tokenizer: %s%s\n",
                 std::string(tokenizer.status().message()).c_str(),
                 absl::IsNotFound(tokenizer.status())
                     ? " (--tokenizer takes a tokenizer.json file or a model directory that contains one)"
                     : "");
    return 1;
  }
  const bool decode = args->Has("decode");
  std::ios::sync_with_stdio(false);
  std::string line;
  for (int64_t line_number = 1; std::getline(std::cin, line); ++line_number) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    auto answer = Answer(**tokenizer, line, decode);
    if (!answer.ok()) {
      std::fflush(stdout);
      std::fprintf(stderr, "asyncspade tokenize: stdin line %lld: %s; stopping here (earlier lines were answered)\n",
                   static_cast<long long>(line_number), std::string(answer.status().message()).c_str());
      return 1;
    }
    std::fwrite(answer->data(), 1, answer->size(), stdout);
    std::fputc('\n', stdout);
    std::fflush(stdout);  // answer each request as it arrives, for interactive use and pipes
  }
  return 0;
}

}  // namespace

ASYNCSPADE_REGISTER_COMMAND(tokenize, "encode/decode JSON lines with a model's tokenizer", TokenizeCommand);

}  // namespace asyncspade::cli
