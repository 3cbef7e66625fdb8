#include "tools/cli/args.h"

#include <cerrno>
#include <cstdio>
#include <cstdlib>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace asyncspade::cli {

absl::StatusOr<Args> Args::Parse(int argc, char** argv, int first, const std::vector<FlagSpec>& specs) {
  Args args;
  for (int i = first; i < argc; ++i) {
    absl::string_view arg = argv[i];
    if (!absl::StartsWith(arg, "--")) {
      args.positional_.emplace_back(arg);
      continue;
    }
    absl::string_view body = arg.substr(2);
    std::string name(body);
    std::optional<std::string> inline_value;
    if (size_t eq = body.find('='); eq != absl::string_view::npos) {
      name = std::string(body.substr(0, eq));
      inline_value = std::string(body.substr(eq + 1));
    }
    const FlagSpec* spec = nullptr;
    for (const auto& s : specs) {
      if (s.name == name) spec = &s;
    }
    if (spec == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown flag --", name, " (run with --help for the list of flags)"));
    }
    if (!spec->takes_value) {
      if (inline_value) {
        return absl::InvalidArgumentError(absl::StrCat("flag --", name, " takes no value"));
      }
      args.values_[name] = "true";
      continue;
    }
    if (inline_value) {
      args.values_[name] = *inline_value;
    } else if (i + 1 < argc) {
      args.values_[name] = argv[++i];
    } else {
      return absl::InvalidArgumentError(absl::StrCat("flag --", name, " needs a value"));
    }
  }
  return args;
}

std::optional<std::string> Args::Get(const std::string& name) const {
  auto it = values_.find(name);
  if (it == values_.end()) return std::nullopt;
  return it->second;
}

std::string Args::GetOr(const std::string& name, const std::string& fallback) const {
  auto v = Get(name);
  return v ? *v : fallback;
}

absl::StatusOr<std::optional<int64_t>> Args::GetInt(const std::string& name) const {
  auto v = Get(name);
  if (!v) return std::optional<int64_t>();
  int64_t out;
  if (!absl::SimpleAtoi(*v, &out)) {
    return absl::InvalidArgumentError(
        absl::StrCat("flag --", name, " must be an integer, got '", *v, "'"));
  }
  return std::optional<int64_t>(out);
}

absl::StatusOr<std::optional<double>> Args::GetDouble(const std::string& name) const {
  auto v = Get(name);
  if (!v) return std::optional<double>();
  double out;
  if (!absl::SimpleAtod(*v, &out)) {
    return absl::InvalidArgumentError(
        absl::StrCat("flag --", name, " must be a number, got '", *v, "'"));
  }
  return std::optional<double>(out);
}

std::string Args::Usage(const std::string& command, const std::string& synopsis,
                        const std::vector<FlagSpec>& specs) {
  return absl::StrCat("usage: asyncspade ", command, " ", synopsis, "\n", FlagHelp(specs));
}

std::string Args::FlagHelp(const std::vector<FlagSpec>& specs) {
  std::string out;
  for (const auto& s : specs) {
    absl::StrAppend(&out, "  --", s.name, s.takes_value ? " VALUE" : "", "\n      ", s.help, "\n");
  }
  return out;
}

std::optional<Args> ParseCommandArgs(int argc, char** argv, const std::string& command, const std::string& synopsis,
                                     const std::vector<FlagSpec>& specs, int* exit_code,
                                     const std::string& extra_help) {
  absl::StatusOr<Args> args = Args::Parse(argc, argv, 1, specs);
  if (!args.ok()) {
    std::fprintf(stderr, "asyncspade %s: %s\n%s", command.c_str(), std::string(args.status().message()).c_str(),
                 Args::Usage(command, synopsis, specs).c_str());
    *exit_code = 2;
    return std::nullopt;
  }
  if (args->Has("help")) {
    std::fputs(Args::Usage(command, synopsis, specs).c_str(), stdout);
    std::fputs(extra_help.c_str(), stdout);
    *exit_code = 0;
    return std::nullopt;
  }
  *exit_code = 0;
  return *std::move(args);
}

absl::StatusOr<std::vector<int32_t>> ParseIdList(const std::string& text) {
  std::vector<int32_t> ids;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    int32_t id;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(part), &id) || id < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "token id list must be non-negative integers separated by commas, got '", part, "'"));
    }
    ids.push_back(id);
  }
  return ids;
}

}  // namespace asyncspade::cli
