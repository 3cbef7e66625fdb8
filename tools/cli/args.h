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

 private:
  std::map<std::string, std::string> values_;
  std::vector<std::string> positional_;
};

// Parses "1,2,3" into ids.
absl::StatusOr<std::vector<int32_t>> ParseIdList(const std::string& text);

}  // namespace asyncspade::cli
