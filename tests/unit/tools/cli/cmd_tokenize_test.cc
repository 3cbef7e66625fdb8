// `asyncspade tokenize` run as a process: JSON lines in, JSON lines out, against the Qwen3
// reference vectors; malformed input stops with the line number and exit code 1.
#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/unit/common/tokenizer/test_data.h"

namespace asyncspade {
namespace {

std::string Binary() {
  const char* env = std::getenv("ASYNCSPADE_BINARY_DIR");
  return std::string(env != nullptr ? env : ASYNCSPADE_BINARY_DIR) + "/bin/asyncspade";
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

struct Result {
  int exit_code;
  std::string out;
  std::string err;
};

class CmdTokenizeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!std::filesystem::exists(Binary())) GTEST_SKIP() << Binary() << " is not built (build the asyncspade target)";
    if (!testing::Exists(testing::Qwen3TokenizerDir() + "/vectors.jsonl")) {
      GTEST_SKIP() << "Qwen3 tokenizer not found under " << testing::Qwen3TokenizerDir();
    }
    dir_ = std::filesystem::path(::testing::TempDir()) / "cmd_tokenize_test";
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override {
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }
  // Runs `asyncspade tokenize <flags>` with `input` on stdin.
  Result Run(const std::string& flags, const std::string& input) {
    std::string in = (dir_ / "in").string(), out = (dir_ / "out").string(), err = (dir_ / "err").string();
    std::ofstream(in) << input;
    std::string command = "'" + Binary() + "' tokenize " + flags + " < '" + in + "' > '" + out + "' 2> '" + err + "'";
    int status = std::system(command.c_str());
    return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, ReadFile(out), ReadFile(err)};
  }
  std::filesystem::path dir_;
};

std::vector<nlohmann::json> Lines(const std::string& text) {
  std::vector<nlohmann::json> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(nlohmann::json::parse(line));
  return lines;
}

TEST_F(CmdTokenizeTest, EncodesAndDecodesReferenceVectors) {
  auto vectors = testing::ReadJsonLines(testing::Qwen3TokenizerDir() + "/vectors.jsonl");
  std::string requests;
  for (const auto& v : vectors) requests += nlohmann::json{{"text", v["text"]}}.dump() + "\n";
  Result encoded = Run("--tokenizer '" + testing::Qwen3TokenizerDir() + "'", requests);
  ASSERT_EQ(encoded.exit_code, 0) << encoded.err;
  auto answers = Lines(encoded.out);
  ASSERT_EQ(answers.size(), vectors.size());
  for (size_t i = 0; i < vectors.size(); ++i) EXPECT_EQ(answers[i]["ids"], vectors[i]["ids"]) << "line " << i + 1;

  auto decode_vectors = testing::ReadJsonLines(testing::Qwen3TokenizerDir() + "/vectors-decode.jsonl");
  std::string decode_requests;
  for (const auto& v : decode_vectors) decode_requests += nlohmann::json{{"ids", v["ids"]}}.dump() + "\n";
  Result decoded = Run("--decode --tokenizer '" + testing::Qwen3TokenizerDir() + "/tokenizer.json'", decode_requests);
  ASSERT_EQ(decoded.exit_code, 0) << decoded.err;
  auto texts = Lines(decoded.out);
  ASSERT_EQ(texts.size(), decode_vectors.size());
  for (size_t i = 0; i < texts.size(); ++i) EXPECT_EQ(texts[i]["text"], decode_vectors[i]["text"]) << "line " << i + 1;
}

TEST_F(CmdTokenizeTest, MalformedLineStopsWithItsLineNumber) {
  Result result = Run("--tokenizer '" + testing::Qwen3TokenizerDir() + "'",
                      "{\"text\": \"ok\"}\n\n{\"ids\": [1]}\n{\"text\": \"never read\"}\n");
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_EQ(Lines(result.out).size(), 1u);  // the line before the bad one was answered
  EXPECT_NE(result.err.find("line 3"), std::string::npos) << result.err;
  EXPECT_NE(result.err.find("\"text\""), std::string::npos) << result.err;

  Result bad_json = Run("--decode --tokenizer '" + testing::Qwen3TokenizerDir() + "'", "{\"ids\": [1, 2,\n");
  EXPECT_EQ(bad_json.exit_code, 1);
  EXPECT_NE(bad_json.err.find("line 1"), std::string::npos) << bad_json.err;
  EXPECT_NE(bad_json.err.find("not valid JSON"), std::string::npos) << bad_json.err;

  Result missing = Run("--tokenizer '" + (dir_ / "missing.json").string() + "'", "");
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_NE(missing.err.find("missing.json"), std::string::npos) << missing.err;

  Result usage = Run("", "");
  EXPECT_EQ(usage.exit_code, 2);
  EXPECT_NE(usage.err.find("--tokenizer"), std::string::npos) << usage.err;
}

}  // namespace
}  // namespace asyncspade
