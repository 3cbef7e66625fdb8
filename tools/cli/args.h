// A small, strict command-line parser for the subcommands of `asyncspade`: `--name value`,
// `--name=value` and boolean `--flag`. Unknown flags and missing values are errors with a message
// that says what to do.
#pragma once

#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace asyncspade::cli {

struct FlagSpec {
  std::string name;  // without leading dashes
  bool takes_value = true;
  std::string help;
};

class Args {
 public:
  // Parses argv[first..argc). Positional arguments are kept in order.
  static absl::StatusOr<Args> Parse(int argc, char** argv, int first, const std::vector<FlagSpec>& specs);

  bool Has(const std::string& name) const { return values_.count(name) > 0; }
  std::optional<std::string> Get(const std::string& name) const;
  std::string GetOr(const std::string& name, const std::string& fallback) const;
  absl::StatusOr<std::optional<int64_t>> GetInt(const std::string& name) const;
  absl::StatusOr<std::optional<double>> GetDouble(const std::string& name) const;
  const std::vector<std::string>& positional() const { return positional_; }

  static std::string Usage(const std::string& command, const std::string& synopsis,
                           const std::vector<FlagSpec>& specs);
  // The flag lines of a usage text: "  --name VALUE\n      help\n" per flag.
  static std::string FlagHelp(const std::vector<FlagSpec>& specs);

 private:
  std::map<std::string, std::string> values_;
  std::vector<std::string> positional_;
};

// The usual start of a subcommand: parses argv[1..argc). nullopt means return *exit_code now:
// 0 after --help (the usage, then `extra_help`, on stdout), 2 after a parse error (printed as
// "asyncspade COMMAND: message" with the usage on stderr).
std::optional<Args> ParseCommandArgs(int argc, char** argv, const std::string& command, const std::string& synopsis,
                                     const std::vector<FlagSpec>& specs, int* exit_code,
                                     const std::string& extra_help = "");

// Parses "1,2,3" into ids.
absl::StatusOr<std::vector<int32_t>> ParseIdList(const std::string& text);

}  // namespace asyncspade::cli
