// `asyncspade demo` end to end, as a newcomer runs it: the embedded deploy/local.yaml with the demo
// model (SmolLM2-135M-Instruct, one decode worker and two KV selectors on the CPU) comes up, one
// chat answer streams through the gRPC API, the summary line is printed and everything stops.
#include <regex>

#include "gtest/gtest.h"
#include "tests/integration/test_deployment.h"

namespace asyncspade::testing {
namespace {

TEST(DemoTest, LaunchesTheLocalDeploymentStreamsAnAnswerAndStops) {
  if (const std::string why = MissingProcessBinaries(); !why.empty()) GTEST_SKIP() << why;
  if (!Executable(absl::StrCat(BinaryDir(), "/asyncspade"))) GTEST_SKIP() << "asyncspade is not built";
  if (!fs::exists(absl::StrCat(DemoModelDir(), "/config.json"))) {
    GTEST_SKIP() << "the demo model is not at " << DemoModelDir() << "; run ./tools/setup.sh";
  }
  TempDir dir;
  std::string output;
  const int rc = RunCommand(absl::StrCat("ASYNCSPADE_SOURCE_DIR=", SourceDir(), " ", BinaryDir(),
                                         "/asyncspade demo --max-tokens 24 --log-dir ", dir.path(), "/logs 2>&1"),
                            &output);
  EXPECT_EQ(rc, 0) << output;
  EXPECT_NE(output.find("grpc: 127.0.0.1:"), std::string::npos) << output;
  EXPECT_NE(output.find("http: http://127.0.0.1:"), std::string::npos) << output;
  EXPECT_NE(output.find("> Explain in two sentences why the sky is blue."), std::string::npos) << output;
  EXPECT_NE(output.find(" generated; TTFT "), std::string::npos) << output;
  EXPECT_NE(output.find("tokens/s"), std::string::npos) << output;
  EXPECT_NE(output.find("every process is stopped"), std::string::npos) << output;
  // The answer itself: the text between the question and the summary is not empty.
  const size_t question = output.find("> Explain");
  const size_t summary = output.find("\n[", question);
  ASSERT_NE(summary, std::string::npos) << output;
  const std::string answer = output.substr(question, summary - question);
  EXPECT_GT(answer.size(), std::string("> Explain in two sentences why the sky is blue.\n").size() + 10) << output;
  // It started the four processes of deploy/local.yaml, each with its log, and every one is gone.
  static const std::regex started(R"(started ([a-z0-9-]+) \(pid ([0-9]+))");
  std::vector<std::string> names;
  for (auto it = std::sregex_iterator(output.begin(), output.end(), started); it != std::sregex_iterator(); ++it) {
    names.push_back((*it)[1].str());
    EXPECT_FALSE(ProcessAlive(std::stoi((*it)[2].str()))) << (*it)[1].str() << " outlived the demo";
    EXPECT_TRUE(fs::exists(absl::StrCat(dir.path(), "/logs/", (*it)[1].str(), ".log"))) << (*it)[1].str();
  }
  EXPECT_EQ(names, (std::vector<std::string>{"controller", "decode-worker-0", "selector-0", "selector-1"})) << output;
}

TEST(DemoTest, AMissingDemoModelSaysToRunSetup) {
  if (!Executable(absl::StrCat(BinaryDir(), "/asyncspade"))) GTEST_SKIP() << "asyncspade is not built";
  TempDir dir;  // a "repository" without models/
  std::string output;
  const int rc = RunCommand(
      absl::StrCat("ASYNCSPADE_SOURCE_DIR=", dir.path(), " ", BinaryDir(), "/asyncspade demo 2>&1"), &output);
  EXPECT_NE(rc, 0) << output;
  EXPECT_NE(output.find("the demo model is not at"), std::string::npos) << output;
  EXPECT_NE(output.find("./tools/setup.sh"), std::string::npos) << output;
}

}  // namespace
}  // namespace asyncspade::testing
