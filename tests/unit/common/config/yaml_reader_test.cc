#include "common/config/yaml_reader.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace asyncspade {
namespace {

using ::testing::HasSubstr;

TEST(YamlReaderTest, ScalarsAreTypeChecked) {
  ConfigIssues issues;
  EXPECT_EQ(ReadYamlInt(YAML::Load("-42"), "n", &issues), -42);
  EXPECT_FALSE(ReadYamlInt(YAML::Load("4.2"), "n", &issues).has_value());
  EXPECT_FALSE(ReadYamlInt(YAML::Load("[1]"), "n", &issues).has_value());
  EXPECT_DOUBLE_EQ(*ReadYamlNumber(YAML::Load("1.0e-3"), "x", &issues), 1e-3);
  EXPECT_FALSE(ReadYamlNumber(YAML::Load("nan"), "x", &issues).has_value());
  EXPECT_FALSE(ReadYamlString(YAML::Load("{a: 1}"), "s", &issues).has_value());
  EXPECT_EQ(ReadYamlChoice(YAML::Load("ridge"), "m", {"ridge", "last_query"}, &issues), "ridge");
  EXPECT_FALSE(ReadYamlChoice(YAML::Load("rigde"), "m", {"ridge", "last_query"}, &issues).has_value());
  ASSERT_EQ(issues.issues().size(), 5u);
  EXPECT_EQ(issues.issues()[0].message, "expected an integer, got '4.2'");
  EXPECT_EQ(issues.issues()[1].message, "expected an integer, got a list");
  EXPECT_THAT(issues.issues()[4].message, HasSubstr("did you mean 'ridge'?"));
}

TEST(YamlReaderTest, UnknownAndDuplicateKeysAreReportedWithPositions) {
  ConfigIssues issues;
  YAML::Node root = YAML::Load("outer:\n  known: 1\n  knwon: 2\n  known: 3\n");
  YamlMapping top(root, "", &issues);
  std::optional<YAML::Node> outer = top.Get("outer");
  ASSERT_TRUE(outer.has_value());
  top.RejectUnknownKeys();
  YamlMapping inner(*outer, "outer", &issues);
  ASSERT_TRUE(inner.Get("known").has_value());
  inner.RejectUnknownKeys();
  absl::Status status = issues.ToStatus("f.yaml");
  EXPECT_THAT(status.message(), HasSubstr("f.yaml:3:3: outer.knwon: unknown key in 'outer' (did you mean 'known'?)"));
  EXPECT_THAT(status.message(), HasSubstr("f.yaml:4:3: outer.known: written twice"));
}

TEST(YamlReaderTest, LaterIssuesLocateThroughRememberedParents) {
  ConfigIssues issues;
  YAML::Node root = YAML::Load("a:\n  b:\n    c: 1\n");
  YamlMapping top(root, "", &issues);
  YamlMapping a(*top.Get("a"), "a", &issues);
  a.Get("b");
  issues.Add("a.b[3]", "bad");  // never remembered itself: falls back to a.b
  ASSERT_EQ(issues.issues().size(), 1u);
  EXPECT_EQ(issues.issues()[0].line, 2);
  EXPECT_EQ(issues.issues()[0].column, 3);
  EXPECT_THAT(issues.ToStatus("").message(), HasSubstr("line 2, column 3: a.b[3]: bad"));
}

TEST(YamlReaderTest, KeyPaths) {
  EXPECT_EQ(JoinKeyPath("", "model"), "model");
  EXPECT_EQ(JoinKeyPath("decode_workers", "kv_cache"), "decode_workers.kv_cache");
  EXPECT_EQ(IndexKeyPath("selectors.layers", 2), "selectors.layers[2]");
}

}  // namespace
}  // namespace asyncspade
