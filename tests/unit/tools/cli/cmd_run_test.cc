// `asyncspade run` end to end: spawns the built binary on stories260K.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/npy.h"
#include "tests/unit/services/decode_worker/stories_test_util.h"

namespace asyncspade {
namespace {

namespace fs = std::filesystem;

std::string BinaryPath() {
  const char* env = std::getenv("ASYNCSPADE_BINARY_DIR");
  return std::string(env != nullptr ? env : ASYNCSPADE_BINARY_DIR) + "/bin/asyncspade";
}

struct Result {
  int exit_code = -1;
  std::string out, err;
};

std::string ReadAll(const fs::path& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

Result RunCli(const std::string& args) {
  const fs::path dir = fs::temp_directory_path() / ("cmd_run_test_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const std::string command =
      BinaryPath() + " run " + args + " > " + (dir / "out").string() + " 2> " + (dir / "err").string();
  const int status = std::system(command.c_str());
  Result r;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = ReadAll(dir / "out");
  r.err = ReadAll(dir / "err");
  fs::remove_all(dir);
  return r;
}

std::string LastLine(const std::string& text) {
  std::vector<std::string> lines = absl::StrSplit(text, '\n', absl::SkipEmpty());
  return lines.empty() ? "" : lines.back();
}

class CmdRunTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASYNCSPADE_REQUIRE_STORIES();
    ASSERT_TRUE(fs::exists(BinaryPath())) << BinaryPath() << " is missing: build the `asyncspade` target first";
  }
};

TEST_F(CmdRunTest, GreedyFromBosPrintsGoldenIdsOnTheLastLine) {
  const testing::StoriesGolden golden = testing::LoadStoriesGolden();
  const Result r = RunCli("--model " + testing::StoriesDir() + " --prompt-ids 1 --max-tokens 64 --print-ids");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(LastLine(r.out), absl::StrJoin(golden.greedy_from_bos, " "));
  EXPECT_EQ(r.out.substr(0, golden.greedy_text.size()), golden.greedy_text);
}

TEST_F(CmdRunTest, TextPromptGetsBosAndContinuesLikeGolden) {
  const testing::StoriesGolden golden = testing::LoadStoriesGolden();
  const auto& p = golden.prompts[1];
  const Result r = RunCli("--model " + testing::StoriesDir() + " --prompt '" + p.text + "' --max-tokens 48 --print-ids");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(LastLine(r.out), absl::StrJoin(p.continuation_ids, " "));
  EXPECT_EQ(r.out.substr(0, p.full_text.size() - p.text.size()), p.full_text.substr(p.text.size()));
}

TEST_F(CmdRunTest, DumpLogitsScoresThePrompt) {
  const testing::StoriesGolden golden = testing::LoadStoriesGolden();
  const auto& p = golden.prompts[0];
  const fs::path npy = fs::temp_directory_path() / ("cmd_run_logits_" + std::to_string(::getpid()) + ".npy");
  const Result r = RunCli("--model " + testing::StoriesDir() + " --prompt-ids " + absl::StrJoin(p.ids, ",") +
                          " --max-tokens 0 --dump-logits " + npy.string());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto logits = ReadNpyFloat32(npy.string());
  fs::remove(npy);
  ASSERT_TRUE(logits.ok()) << logits.status();
  ASSERT_EQ(logits->shape, (std::vector<int64_t>{static_cast<int64_t>(p.ids.size()), 512}));
  auto argmax = [&](size_t row) {
    const float* x = logits->data.data() + row * 512;
    return int32_t(std::max_element(x, x + 512) - x);
  };
  EXPECT_EQ(argmax(0), golden.greedy_from_bos[0]);  // after BOS
  EXPECT_EQ(argmax(p.ids.size() - 1), p.continuation_ids[0]);
}

TEST_F(CmdRunTest, ErrorsExitNonZeroWithAClearMessage) {
  struct Case {
    std::string args;
    std::string message;
  };
  const std::string model = " --model " + testing::StoriesDir();
  std::vector<int32_t> too_long(600, 5);
  for (const Case& c : {Case{"--model /nonexistent/model --prompt hi", "does not exist"},
                        Case{model, "exactly one of --prompt"},
                        Case{model + " --prompt hi --prompt-ids 1", "exactly one of --prompt"},
                        Case{model + " --prompt hi --bogus 3", "unknown flag --bogus"},
                        Case{model + " --prompt hi --temperature -1", "temperature"},
                        Case{model + " --prompt-ids 1,x", "token id list"},
                        Case{model + " --prompt-ids 1,9999", "outside the model's vocabulary"},
                        Case{model + " --prompt-ids " + absl::StrJoin(too_long, ","), "600 tokens"},
                        Case{model + " --prompt-ids 1 --max-tokens 900", "maximum sequence length 512"}}) {
    const Result r = RunCli(c.args);
    EXPECT_NE(r.exit_code, 0) << c.args;
    EXPECT_NE(r.err.find(c.message), std::string::npos) << c.args << "\nstderr: " << r.err;
  }
}

}  // namespace
}  // namespace asyncspade
