// The user-facing clients against a real deployment on stories260K: `asyncspade generate` (streamed
// text, --print-ids identical to the offline `asyncspade run`, errors and exit codes),
// `asyncspade ctl` (status table and JSON, scale, drain errors) and `asyncspade bench` (table and
// JSON).
#include <fstream>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/integration/test_deployment.h"

namespace asyncspade::testing {
namespace {

std::string LastLine(const std::string& text) {
  std::vector<std::string> lines = absl::StrSplit(text, '\n', absl::SkipEmpty());
  return lines.empty() ? "" : lines.back();
}

class CliTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!WhyNoStoriesDeployment().empty()) return;
    dir_ = new TempDir();
    StoriesYamlOptions yaml;
    yaml.selectors = 1;
    yaml.policy = "asyncspade";
    yaml.budget = 16;
    launcher::LauncherOptions options;
    options.config_path = dir_->Write("deployment.yaml", StoriesYaml(yaml));
    options.log_dir = absl::StrCat(dir_->path(), "/logs");
    deployment_ = new LaunchedDeployment(options);
    start_status_ = new absl::Status(deployment_->Start());
  }
  static void TearDownTestSuite() {
    delete deployment_;
    delete start_status_;
    delete dir_;
  }
  void SetUp() override {
    if (const std::string why = WhyNoStoriesDeployment(); !why.empty()) GTEST_SKIP() << why;
    if (!Executable(Cli())) GTEST_SKIP() << Cli() << " is not built";
    ASSERT_TRUE(start_status_->ok()) << *start_status_;
  }
  static std::string Cli() { return absl::StrCat(BinaryDir(), "/asyncspade"); }
  static std::string Endpoint() { return deployment_->launcher().endpoints().grpc; }
  // Runs `asyncspade ARGS`; stdout only unless `with_stderr`.
  static int Run(const std::string& args, std::string* output, bool with_stderr = false) {
    return RunCommand(absl::StrCat(Cli(), " ", args, with_stderr ? " 2>&1" : " 2>/dev/null"), output);
  }

  static TempDir* dir_;
  static LaunchedDeployment* deployment_;
  static absl::Status* start_status_;
};
TempDir* CliTest::dir_ = nullptr;
LaunchedDeployment* CliTest::deployment_ = nullptr;
absl::Status* CliTest::start_status_ = nullptr;

TEST_F(CliTest, GeneratePrintsTheSameIdsAsTheOfflineRun) {
  std::string offline;
  ASSERT_EQ(Run(absl::StrCat("run --model ", Stories260KDir(), " --prompt \"Once upon a time\" --max-tokens 40 "
                             "--print-ids"),
                &offline),
            0);
  std::string served;
  ASSERT_EQ(Run(absl::StrCat("generate --endpoint ", Endpoint(), " --prompt \"Once upon a time\" --max-tokens 40 "
                             "--policy dense --print-ids"),
                &served),
            0);
  EXPECT_EQ(LastLine(served), LastLine(offline));
  EXPECT_FALSE(LastLine(served).empty());
  // And the text before it.
  EXPECT_EQ(served, offline);
}

TEST_F(CliTest, GenerateSummarizesOnStderrAndTakesTheEndpointFromTheEnvironment) {
  std::string output;
  ASSERT_EQ(RunCommand(absl::StrCat("ASYNCSPADE_ENDPOINT=", Endpoint(), " ", Cli(),
                                    " generate --prompt-ids 1,403,407 --max-tokens 5 --ignore-eos 2>&1 >/dev/null"),
                       &output),
            0);
  EXPECT_NE(output.find("[prompt 3 tokens; generated 5 tokens; TTFT "), std::string::npos) << output;
  EXPECT_NE(output.find("finish: length"), std::string::npos) << output;
  EXPECT_NE(output.find("served by decode-worker-0"), std::string::npos) << output;
}

TEST_F(CliTest, GenerateErrorsSayWhatIsWrongAndExitNonZero) {
  std::string output;
  EXPECT_EQ(Run("generate --endpoint 127.0.0.1:1 --prompt hi", &output, true), 1);
  EXPECT_NE(output.find("cannot reach the controller at 127.0.0.1:1"), std::string::npos) << output;

  output.clear();
  EXPECT_EQ(Run(absl::StrCat("generate --endpoint ", Endpoint(), " --prompt-ids 1,99999"), &output, true), 1);
  EXPECT_NE(output.find("INVALID_ARGUMENT"), std::string::npos) << output;

  output.clear();
  EXPECT_EQ(Run(absl::StrCat("generate --endpoint ", Endpoint(), " --prompt hi --policy sparse"), &output, true), 2);
  EXPECT_NE(output.find("unknown sparse policy 'sparse'"), std::string::npos) << output;

  output.clear();
  EXPECT_EQ(Run("generate --prompt hi --chat hi", &output, true), 2);
  EXPECT_NE(output.find("exactly one of --prompt, --chat or --prompt-ids"), std::string::npos) << output;
}

TEST_F(CliTest, CtlStatusShowsEveryProcessAndItsLinks) {
  std::string table;
  ASSERT_EQ(Run(absl::StrCat("ctl --endpoint ", Endpoint(), " status"), &table), 0);
  EXPECT_NE(table.find("decode-worker-0  decode-worker  cpu"), std::string::npos) << table;
  EXPECT_NE(table.find("READY"), std::string::npos) << table;
  EXPECT_NE(table.find("selector-0 L0-4 e"), std::string::npos) << table;
  EXPECT_NE(table.find("serving: yes"), std::string::npos) << table;
  EXPECT_NE(table.find("default policy: asyncspade"), std::string::npos) << table;

  std::string json_text;
  ASSERT_EQ(Run(absl::StrCat("ctl --endpoint ", Endpoint(), " --json status"), &json_text), 0);
  const nlohmann::json json = nlohmann::json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  ASSERT_TRUE(json.is_object()) << json_text;
  ASSERT_EQ(json["members"].size(), 2u) << json_text;
  EXPECT_EQ(json["members"][0]["member_id"], "decode-worker-0");
  EXPECT_EQ(json["members"][0]["state"], "MEMBER_STATE_READY");
  EXPECT_EQ(json["members"][0]["pid"].get<std::string>(),
            absl::StrCat(deployment_->launcher().Process("decode-worker-0")->pid));
  EXPECT_EQ(json["serving"], true);
}

TEST_F(CliTest, CtlScaleAndDrainReachTheController) {
  std::string output;
  ASSERT_EQ(Run(absl::StrCat("ctl --endpoint ", Endpoint(), " scale selectors 2"), &output), 0);
  EXPECT_NE(output.find("desired selectors: 2"), std::string::npos) << output;
  ASSERT_TRUE(WaitUntil(
      [&] {
        absl::StatusOr<control::ListMembersResponse> m = deployment_->client().ListMembers();
        const control::Member* s = m.ok() ? FindMember(*m, "selector-1") : nullptr;
        return s != nullptr && s->state() == control::MEMBER_STATE_READY;
      },
      absl::Seconds(30)))
      << deployment_->EventsText();
  output.clear();
  ASSERT_EQ(Run(absl::StrCat("ctl --endpoint ", Endpoint(), " --json scale selectors 1"), &output), 0);
  EXPECT_NE(output.find("\"desired_selectors\": 1"), std::string::npos) << output;

  output.clear();
  EXPECT_EQ(Run(absl::StrCat("ctl --endpoint ", Endpoint(), " scale selectors 9"), &output, true), 1);
  EXPECT_NE(output.find("at most 5"), std::string::npos) << output;
  output.clear();
  EXPECT_EQ(Run(absl::StrCat("ctl --endpoint ", Endpoint(), " drain no-such-member"), &output, true), 1);
  EXPECT_NE(output.find("NOT_FOUND"), std::string::npos) << output;
  EXPECT_NE(output.find("decode-worker-0"), std::string::npos) << "the error should list the members: " << output;
  output.clear();
  EXPECT_EQ(Run("ctl --endpoint 127.0.0.1:1 status", &output, true), 1);
  EXPECT_NE(output.find("cannot reach the controller"), std::string::npos) << output;
  output.clear();
  EXPECT_EQ(Run("ctl frobnicate", &output, true), 2);
  ASSERT_TRUE(WaitUntil([&] { return deployment_->launcher().Process("selector-1")->phase ==
                                     launcher::ProcessSnapshot::Phase::kRetired; },
                        absl::Seconds(30)))
      << deployment_->EventsText();
}

TEST_F(CliTest, BenchPrintsATableAndWritesJson) {
  const std::string json_path = absl::StrCat(dir_->path(), "/bench.json");
  std::string table;
  ASSERT_EQ(Run(absl::StrCat("bench --endpoint ", Endpoint(), " --prompt-ids 1,403,407 --concurrency 1,3 --requests 3 "
                             "--max-tokens 16 --json ", json_path),
                &table),
            0)
      << table;
  EXPECT_NE(table.find("concurrency requests errors"), std::string::npos) << table;
  std::ifstream file(json_path);
  const nlohmann::json json = nlohmann::json::parse(file, nullptr, /*allow_exceptions=*/false);
  ASSERT_TRUE(json.is_object());
  ASSERT_EQ(json["levels"].size(), 2u);
  for (const nlohmann::json& level : json["levels"]) {
    EXPECT_EQ(level["errors"], 0);
    EXPECT_EQ(level["requests"], 3);
    EXPECT_EQ(level["output_tokens"], 3 * 16) << "every request makes exactly max-tokens (EOS ignored)";
    EXPECT_GT(level["throughput_tokens_per_second"].get<double>(), 0);
    EXPECT_GT(level["tpot_seconds"]["mean"].get<double>(), 0);
    EXPECT_EQ(level["tpot_seconds"]["count"], 3);
  }
  EXPECT_EQ(json["levels"][1]["concurrency"], 3);
  EXPECT_EQ(json["policy"], "asyncspade");
}

}  // namespace
}  // namespace asyncspade::testing
