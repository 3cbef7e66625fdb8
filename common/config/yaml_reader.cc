#include "common/config/yaml_reader.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/config/closest_name.h"

namespace asyncspade {
namespace {

ConfigIssue MakeIssue(const YAML::Mark& mark, std::string path, std::string message) {
  ConfigIssue issue;
  if (!mark.is_null()) {
    issue.line = mark.line + 1;
    issue.column = mark.column + 1;
  }
  issue.path = std::move(path);
  issue.message = std::move(message);
  return issue;
}

// "a.b[1]" -> "a.b", "a.b" -> "a", "a" -> "".
std::string ParentKeyPath(const std::string& path) {
  size_t cut = path.find_last_of(".[");
  return cut == std::string::npos ? std::string() : path.substr(0, cut);
}

}  // namespace

void ConfigIssues::Remember(const std::string& path, const YAML::Mark& mark) {
  if (!mark.is_null()) marks_.emplace(path, mark);
}

void ConfigIssues::Add(const YAML::Mark& mark, std::string path, std::string message) {
  issues_.push_back(MakeIssue(mark, std::move(path), std::move(message)));
}

void ConfigIssues::Add(std::string path, std::string message) {
  for (std::string at = path;; at = ParentKeyPath(at)) {
    auto it = marks_.find(at);
    if (it != marks_.end()) {
      Add(it->second, std::move(path), std::move(message));
      return;
    }
    if (at.empty()) break;
  }
  Add(YAML::Mark::null_mark(), std::move(path), std::move(message));
}

absl::Status ConfigIssues::ToStatus(std::string_view source) const {
  if (issues_.empty()) return absl::OkStatus();
  std::vector<ConfigIssue> sorted = issues_;
  std::stable_sort(sorted.begin(), sorted.end(), [](const ConfigIssue& a, const ConfigIssue& b) {
    const int line_a = a.line == 0 ? std::numeric_limits<int>::max() : a.line;
    const int line_b = b.line == 0 ? std::numeric_limits<int>::max() : b.line;
    return line_a != line_b ? line_a < line_b : a.column < b.column;
  });
  std::vector<std::string> lines;
  for (const ConfigIssue& issue : sorted) {
    std::string where;
    if (!source.empty()) {
      where = issue.line > 0 ? absl::StrCat(std::string(source), ":", issue.line, ":", issue.column, ": ")
                             : absl::StrCat(std::string(source), ": ");
    } else if (issue.line > 0) {
      where = absl::StrCat("line ", issue.line, ", column ", issue.column, ": ");
    }
    lines.push_back(absl::StrCat(where, issue.path.empty() ? "" : issue.path + ": ", issue.message));
  }
  if (lines.size() == 1) return absl::InvalidArgumentError(lines[0]);
  return absl::InvalidArgumentError(absl::StrCat(lines.size(), " problems in ",
                                                 source.empty() ? "the deployment config" : std::string(source),
                                                 ":\n  ", absl::StrJoin(lines, "\n  ")));
}

std::string JoinKeyPath(const std::string& parent, const std::string& key) {
  return parent.empty() ? key : absl::StrCat(parent, ".", key);
}

std::string IndexKeyPath(const std::string& parent, size_t index) { return absl::StrCat(parent, "[", index, "]"); }

std::string DescribeYamlNode(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Undefined:
    case YAML::NodeType::Null:
      return "nothing";
    case YAML::NodeType::Scalar:
      return absl::StrCat("'", node.Scalar(), "'");
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Map:
      return "a mapping";
  }
  return "an unknown YAML node";
}

YamlMapping::YamlMapping(const YAML::Node& node, std::string path, ConfigIssues* issues)
    : path_(std::move(path)), issues_(issues), mark_(node.Mark()) {
  issues_->Remember(path_, mark_);
  if (node.IsNull()) return;
  if (!node.IsMap()) {
    issues_->Add(mark_, path_, absl::StrCat("expected a mapping of keys to values, got ", DescribeYamlNode(node)));
    return;
  }
  for (auto it = node.begin(); it != node.end(); ++it) {
    // yaml-cpp iterators yield proxies: copy the (reference-counted) nodes out of them.
    const YAML::Node key = it->first;
    const YAML::Node value = it->second;
    if (!key.IsScalar()) {
      issues_->Add(key.Mark(), path_, "keys must be plain names, got " + DescribeYamlNode(key));
      continue;
    }
    const std::string& name = key.Scalar();
    bool duplicate = false;
    for (const auto& [seen, unused] : entries_) duplicate = duplicate || seen == name;
    if (duplicate) {
      issues_->Add(key.Mark(), JoinKeyPath(path_, name), "written twice; keep one of them");
      continue;
    }
    entries_.emplace_back(name, value);
    key_marks_.push_back(key.Mark());
  }
}

bool YamlMapping::Has(const std::string& key) const {
  for (const auto& [name, value] : entries_) {
    if (name == key) return !value.IsNull();
  }
  return false;
}

std::optional<YAML::Node> YamlMapping::Get(const std::string& key) {
  known_.push_back(key);
  for (size_t i = 0; i < entries_.size(); ++i) {
    if (entries_[i].first != key) continue;
    const YAML::Node& value = entries_[i].second;
    // Later checks about this key point at the key: for a nested mapping or list the value starts
    // on the next line, which would be a confusing place to report "kv_cache: ...".
    issues_->Remember(KeyPath(key), key_marks_[i]);
    if (value.IsNull()) return std::nullopt;
    return value;
  }
  return std::nullopt;
}

void YamlMapping::RejectUnknownKeys() {
  for (size_t i = 0; i < entries_.size(); ++i) {
    const std::string& name = entries_[i].first;
    if (std::find(known_.begin(), known_.end(), name) != known_.end()) continue;
    std::string where = path_.empty() ? "at the top level" : absl::StrCat("in '", path_, "'");
    issues_->Add(
        key_marks_[i], KeyPath(name),
        absl::StrCat("unknown key ", where, DidYouMean(name, known_), "; known keys: ", absl::StrJoin(known_, ", ")));
  }
}

std::optional<int64_t> ReadYamlInt(const YAML::Node& node, const std::string& path, ConfigIssues* issues) {
  int64_t value = 0;
  if (!node.IsScalar() || !absl::SimpleAtoi(node.Scalar(), &value)) {
    issues->Add(node.Mark(), path, absl::StrCat("expected an integer, got ", DescribeYamlNode(node)));
    return std::nullopt;
  }
  return value;
}

std::optional<double> ReadYamlNumber(const YAML::Node& node, const std::string& path, ConfigIssues* issues) {
  double value = 0;
  if (!node.IsScalar() || !absl::SimpleAtod(node.Scalar(), &value) || !std::isfinite(value)) {
    issues->Add(node.Mark(), path, absl::StrCat("expected a finite number, got ", DescribeYamlNode(node)));
    return std::nullopt;
  }
  return value;
}

std::optional<std::string> ReadYamlString(const YAML::Node& node, const std::string& path, ConfigIssues* issues) {
  if (!node.IsScalar()) {
    issues->Add(node.Mark(), path, absl::StrCat("expected a text value, got ", DescribeYamlNode(node)));
    return std::nullopt;
  }
  return node.Scalar();
}

std::optional<std::string> ReadYamlChoice(const YAML::Node& node, const std::string& path,
                                          const std::vector<std::string>& names, ConfigIssues* issues) {
  if (!node.IsScalar()) {
    issues->Add(node.Mark(), path,
                absl::StrCat("expected one of ", JoinAlternatives(names), ", got ", DescribeYamlNode(node)));
    return std::nullopt;
  }
  const std::string& value = node.Scalar();
  if (std::find(names.begin(), names.end(), value) != names.end()) return value;
  issues->Add(
      node.Mark(), path,
      absl::StrCat("unknown value '", value, "'", DidYouMean(value, names), "; accepted: ", JoinAlternatives(names)));
  return std::nullopt;
}

}  // namespace asyncspade
