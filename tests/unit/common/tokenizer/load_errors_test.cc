// Loading failures must say what is wrong and where: the file, or the JSON key and the type.
#include <filesystem>
#include <fstream>
#include <string>

#include "common/tokenizer/tokenizer.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace asyncspade {
namespace {

using nlohmann::json;

class LoadErrorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::path(::testing::TempDir()) /
           ("tokenizer_load_errors_" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()));
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string Write(const std::string& name, const std::string& contents) {
    std::string path = (dir_ / name).string();
    std::ofstream(path) << contents;
    return path;
  }
  std::filesystem::path dir_;
};

json MinimalTokenizer() {
  return {{"version", "1.0"},
          {"added_tokens", json::array()},
          {"normalizer", nullptr},
          {"pre_tokenizer", nullptr},
          {"post_processor", nullptr},
          {"decoder", nullptr},
          {"model", {{"type", "BPE"}, {"vocab", {{"a", 0}, {"b", 1}, {"ab", 2}}}, {"merges", json::array({"a b"})}}}};
}

void ExpectError(const absl::StatusOr<std::unique_ptr<Tokenizer>>& result, const std::vector<std::string>& fragments) {
  ASSERT_FALSE(result.ok());
  for (const auto& fragment : fragments) {
    EXPECT_NE(result.status().message().find(fragment), std::string::npos)
        << "message lacks \"" << fragment << "\": " << result.status();
  }
}

TEST_F(LoadErrorsTest, MinimalTokenizerLoads) {
  auto tokenizer = Tokenizer::FromFile(Write("tokenizer.json", MinimalTokenizer().dump()));
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  EXPECT_EQ((*tokenizer)->Encode("abab", false), (std::vector<int32_t>{2, 2}));
}

TEST_F(LoadErrorsTest, MissingFile) {
  std::string path = (dir_ / "nope.json").string();
  auto result = Tokenizer::FromFile(path);
  ExpectError(result, {path, "cannot open"});
  EXPECT_EQ(result.status().code(), absl::StatusCode::kNotFound);
  auto dir = Tokenizer::FromModelDir(dir_.string());
  ExpectError(dir, {dir_.string(), "no tokenizer.json"});
}

TEST_F(LoadErrorsTest, InvalidJson) {
  std::string path = Write("tokenizer.json", "{\"model\": {\"type\": \"BPE\",");
  ExpectError(Tokenizer::FromFile(path), {path, "not valid JSON"});
  Write("tokenizer.json", MinimalTokenizer().dump());
  Write("tokenizer_config.json", "{oops");
  ExpectError(Tokenizer::FromModelDir(dir_.string()), {"tokenizer_config.json", "not valid JSON"});
}

TEST_F(LoadErrorsTest, UnsupportedModelTypes) {
  for (const char* type : {"WordPiece", "Unigram", "WordLevel"}) {
    json doc = MinimalTokenizer();
    doc["model"]["type"] = type;
    std::string path = Write("tokenizer.json", doc.dump());
    ExpectError(Tokenizer::FromFile(path), {path, "model.type", type});
  }
}

TEST_F(LoadErrorsTest, UnsupportedComponentsNameTheirKey) {
  struct Case {
    const char* key;
    json value;
    std::vector<std::string> fragments;
  };
  std::vector<Case> cases = {
      {"normalizer", {{"type", "BertNormalizer"}}, {"normalizer.type", "BertNormalizer"}},
      {"normalizer",
       {{"type", "Sequence"}, {"normalizers", json::array({{{"type", "NFC"}}, {{"type", "Precompiled"}}})}},
       {"normalizer.normalizers[1].type", "Precompiled"}},
      {"pre_tokenizer",
       {{"type", "Sequence"}, {"pretokenizers", json::array({{{"type", "Digits"}}, {{"type", "Whitespace"}}})}},
       {"pre_tokenizer.pretokenizers[1].type", "Whitespace"}},
      {"pre_tokenizer",
       {{"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}}, {"behavior", "Isolated"}},
       {"pre_tokenizer.pattern.Regex", "(unclosed"}},
      {"pre_tokenizer",
       {{"type", "Split"}, {"pattern", {{"String", "-"}}}, {"behavior", "Sideways"}},
       {"pre_tokenizer.behavior", "Sideways"}},
      {"decoder", {{"type", "WordPiece"}}, {"decoder.type", "WordPiece"}},
      {"post_processor", {{"type", "BertProcessing"}}, {"post_processor.type", "BertProcessing"}},
      {"post_processor",
       {{"type", "TemplateProcessing"}, {"single", json::array({{{"SpecialToken", {{"id", "<s>"}}}}})},
        {"special_tokens", json::object()}},
       {"post_processor.single", "<s>"}},
  };
  for (const Case& c : cases) {
    json doc = MinimalTokenizer();
    doc[c.key] = c.value;
    std::string path = Write("tokenizer.json", doc.dump());
    SCOPED_TRACE(c.value.dump());
    ExpectError(Tokenizer::FromFile(path), c.fragments);
  }
}

TEST_F(LoadErrorsTest, BadModelFields) {
  json prefix = MinimalTokenizer();
  prefix["model"]["continuing_subword_prefix"] = "##";
  ExpectError(Tokenizer::FromJson(prefix, nullptr), {"model.continuing_subword_prefix", "##"});
  json merge = MinimalTokenizer();
  merge["model"]["merges"] = json::array({"a b", "b zz"});
  ExpectError(Tokenizer::FromJson(merge, nullptr), {"model.merges[1]", "zz"});
  json malformed = MinimalTokenizer();
  malformed["model"]["merges"] = json::array({"a b c"});
  ExpectError(Tokenizer::FromJson(malformed, nullptr), {"model.merges[0]", "one space"});
  json vocab = MinimalTokenizer();
  vocab["model"]["vocab"]["c"] = "three";
  ExpectError(Tokenizer::FromJson(vocab, nullptr), {"model.vocab", "\"c\""});
  ExpectError(Tokenizer::FromJson(json::array(), nullptr), {"JSON object"});
  ExpectError(Tokenizer::FromJson(json::object(), nullptr), {"'model'"});
}

TEST_F(LoadErrorsTest, ConfigTokensMustExist) {
  Write("tokenizer.json", MinimalTokenizer().dump());
  Write("tokenizer_config.json", json{{"bos_token", "<s>"}}.dump());
  ExpectError(Tokenizer::FromModelDir(dir_.string()), {"bos_token", "<s>"});
  Write("tokenizer_config.json", json{{"bos_token", {{"content", "a"}}}, {"eos_token", "b"}}.dump());
  auto ok = Tokenizer::FromModelDir(dir_.string());
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ((*ok)->bos_token_id(), 0);
  EXPECT_EQ((*ok)->eos_token_id(), 1);
}

}  // namespace
}  // namespace asyncspade
