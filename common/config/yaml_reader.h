// Strict reading of YAML configuration: every value is type-checked, every unknown key is an
// error (with the closest known key suggested), and every problem is reported with its key path
// ("decode_workers.kv_cache.blocks") and, where the file has one, its line and column. Problems are
// collected rather than returned one by one, so an operator fixes a file in one pass.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "yaml-cpp/yaml.h"

namespace asyncspade {

struct ConfigIssue {
  int line = 0;    // 1-based; 0 when no position is known
  int column = 0;  // 1-based
  std::string path;
  std::string message;
};

class ConfigIssues {
 public:
  // Records where `path` was written, so that later checks (cross-field validation) can point at it.
  void Remember(const std::string& path, const YAML::Mark& mark);
  // An issue at an explicit position.
  void Add(const YAML::Mark& mark, std::string path, std::string message);
  // An issue located at the remembered position of `path`, else of its closest written parent
  // ("a.b[1]" -> "a.b" -> "a").
  void Add(std::string path, std::string message);

  bool empty() const { return issues_.empty(); }
  const std::vector<ConfigIssue>& issues() const { return issues_; }

  // InvalidArgument listing every issue as "<source>:<line>:<column>: <path>: <message>" (or
  // "line L, column C: ..." when `source` is empty), in file order. OK when there are none.
  absl::Status ToStatus(std::string_view source) const;

 private:
  std::vector<ConfigIssue> issues_;
  std::map<std::string, YAML::Mark> marks_;
};

// "a.b" + "c" -> "a.b.c"; "" + "c" -> "c".
std::string JoinKeyPath(const std::string& parent, const std::string& key);
// "a.b" + 2 -> "a.b[2]".
std::string IndexKeyPath(const std::string& parent, size_t index);

// One YAML mapping read key by key. Keys nobody asked for are unknown keys.
class YamlMapping {
 public:
  // `node` must be a mapping; a null node (the section is absent or written with no value) reads
  // as an empty mapping; anything else is reported and reads as empty.
  YamlMapping(const YAML::Node& node, std::string path, ConfigIssues* issues);

  // The value of `key`; nullopt when it is absent or explicitly null (meaning: use the default).
  // Declares `key` as known.
  std::optional<YAML::Node> Get(const std::string& key);
  // Declares `key` as known without reading it (for keys read through another path).
  void Allow(const std::string& key) { known_.push_back(key); }
  bool Has(const std::string& key) const;

  std::string KeyPath(const std::string& key) const { return JoinKeyPath(path_, key); }
  const std::string& path() const { return path_; }
  YAML::Mark mark() const { return mark_; }
  ConfigIssues* issues() const { return issues_; }

  // Reports every key that Get/Allow never declared, suggesting the closest known one. Call once,
  // after all Get calls.
  void RejectUnknownKeys();

 private:
  std::string path_;
  ConfigIssues* issues_;
  YAML::Mark mark_;
  std::vector<std::pair<std::string, YAML::Node>> entries_;
  std::vector<YAML::Mark> key_marks_;
  std::vector<std::string> known_;
};

// Typed scalar readers: nullopt (with an issue recorded against `path`) when the value has the
// wrong type. Integers reject fractions and text; numbers reject NaN and infinities.
std::optional<int64_t> ReadYamlInt(const YAML::Node& node, const std::string& path, ConfigIssues* issues);
std::optional<double> ReadYamlNumber(const YAML::Node& node, const std::string& path, ConfigIssues* issues);
std::optional<std::string> ReadYamlString(const YAML::Node& node, const std::string& path, ConfigIssues* issues);
// One of `names` (exact match); the issue suggests the closest and lists the accepted values.
std::optional<std::string> ReadYamlChoice(const YAML::Node& node, const std::string& path,
                                          const std::vector<std::string>& names, ConfigIssues* issues);

// "a mapping", "a list", "the text 'abc'": how a node is described in type errors.
std::string DescribeYamlNode(const YAML::Node& node);

}  // namespace asyncspade
