// The public APIs of a real deployment as clients see them: the `openai` Python client
// (completions and chat, streaming and not) and a Python gRPC client (tests/integration/python/),
// Abort of a stream in flight, and health: SERVING while a decode worker is READY, NOT_SERVING once
// the only one died and is not restarted (gRPC health service and HTTP /health).
#include <signal.h>

#include "gtest/gtest.h"
#include "httplib.h"
#include "tests/integration/test_deployment.h"

namespace asyncspade::testing {
namespace {

constexpr int kHealthServing = 1;
constexpr int kHealthNotServing = 2;

// The demo model with a small KV cache: the Python clients need a chat template, which stories260K
// lacks.
std::string DemoModelYaml() {
  return absl::StrCat(R"(model:
  path: )", DemoModelDir(), R"(
  max_seq_len: 1024
controller:
  host: 127.0.0.1
decode_workers:
  devices: cpu
  max_batch_size: 8
  kv_cache:
    blocks: 256
selectors:
  replicas: 2
  devices: cpu
sparse:
  policy: asyncspade
  budget: 64
  sinks: 4
  recent: 32
lifecycle:
  heartbeat_interval_ms: 200
  drain_timeout_s: 2
  startup_timeout_s: 120
)");
}

std::string WhyNoPython() {
  std::string output;
  if (RunCommand("python3 -c 'import openai, grpc, grpc_tools' 2>&1", &output) != 0) {
    return absl::StrCat("python3 with the openai, grpcio and grpcio-tools packages is needed (./tools/setup.sh "
                        "installs them): ",
                        output);
  }
  return "";
}

TEST(ClientApiTest, OpenAiAndGrpcPythonClientsGetWellFormedAnswers) {
  if (const std::string why = MissingProcessBinaries(); !why.empty()) GTEST_SKIP() << why;
  if (!fs::exists(absl::StrCat(DemoModelDir(), "/config.json"))) {
    GTEST_SKIP() << "the demo model is not at " << DemoModelDir() << "; run ./tools/setup.sh";
  }
  if (const std::string why = WhyNoPython(); !why.empty()) GTEST_SKIP() << why;
  TempDir dir;
  launcher::LauncherOptions options;
  options.config_path = dir.Write("deployment.yaml", DemoModelYaml());
  options.log_dir = absl::StrCat(dir.path(), "/logs");
  LaunchedDeployment d(options);
  ASSERT_TRUE(d.Start().ok()) << d.EventsText();

  const std::string python_dir = absl::StrCat(SourceDir(), "/tests/integration/python");
  std::string output;
  const int openai_rc = RunCommand(absl::StrCat("python3 ", python_dir, "/openai_client_check.py --base-url ",
                                                d.launcher().endpoints().http, " --max-tokens 8 --timeout 120 2>&1"),
                                   &output);
  EXPECT_EQ(openai_rc, 0) << output;
  std::fprintf(stderr, "%s", output.c_str());

  output.clear();
  const int grpc_rc = RunCommand(absl::StrCat("python3 ", python_dir, "/grpc_client_check.py --endpoint ",
                                              d.launcher().endpoints().grpc, " --proto-dir ", SourceDir(),
                                              "/proto --max-tokens 8 --abort-max-tokens 900 --timeout 120 2>&1"),
                                 &output);
  EXPECT_EQ(grpc_rc, 0) << output;
  std::fprintf(stderr, "%s", output.c_str());
}

class StoriesClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (const std::string why = WhyNoStoriesDeployment(); !why.empty()) GTEST_SKIP() << why;
  }
  TempDir dir_;
};

TEST_F(StoriesClientTest, AbortStopsAStreamInFlight) {
  StoriesYamlOptions yaml;
  yaml.selectors = 1;
  yaml.policy = "asyncspade";
  yaml.budget = 16;
  launcher::LauncherOptions options;
  options.config_path = dir_.Write("deployment.yaml", StoriesYaml(yaml));
  options.log_dir = absl::StrCat(dir_.path(), "/logs");
  LaunchedDeployment d(options);
  ASSERT_TRUE(d.Start().ok()) << d.EventsText();

  serving::GenerateRequest request = TokenIdsRequest({1, 403, 407}, 500);
  request.mutable_stop()->set_ignore_eos(true);
  request.set_request_id("abort-me");
  std::atomic<bool> aborted{false};
  std::optional<bool> found;
  absl::StatusOr<launcher::GenerationOutcome> outcome = launcher::StreamGenerate(
      d.client(), request,
      [&](const serving::GenerateChunk&) {
        if (!aborted.exchange(true)) found = d.client().Abort("abort-me").value_or(false);
      },
      absl::Seconds(60));
  ASSERT_TRUE(outcome.ok()) << outcome.status();
  ASSERT_TRUE(found.has_value());
  ASSERT_TRUE(outcome->final.has_value());
  if (!*found) {
    // Only possible if the stream had already finished when Abort arrived.
    EXPECT_EQ(outcome->final->finish_reason(), serving::FINISH_REASON_LENGTH);
    GTEST_SKIP() << "the request finished before Abort reached it; nothing to check";
  }
  EXPECT_EQ(outcome->final->finish_reason(), serving::FINISH_REASON_ABORTED);
  EXPECT_LT(outcome->token_ids.size(), 500u);
  EXPECT_EQ(outcome->final->usage().completion_tokens(), static_cast<int>(outcome->token_ids.size()));
  EXPECT_FALSE(d.client().Abort("abort-me").value_or(true)) << "a finished request is still abortable";

  // The deployment still serves.
  absl::StatusOr<launcher::GenerationOutcome> after =
      launcher::StreamGenerate(d.client(), TokenIdsRequest({1, 403, 407}, 8), nullptr, absl::Seconds(60));
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->token_ids.size(), 8u);
}

TEST_F(StoriesClientTest, HealthTurnsNotServingWhenTheOnlyDecodeWorkerDiesWithRestartNever) {
  StoriesYamlOptions yaml;
  yaml.worker_restart = "never";
  launcher::LauncherOptions options;
  options.config_path = dir_.Write("deployment.yaml", StoriesYaml(yaml));
  options.log_dir = absl::StrCat(dir_.path(), "/logs");
  LaunchedDeployment d(options);
  ASSERT_TRUE(d.Start().ok()) << d.EventsText();
  const std::string grpc = d.launcher().endpoints().grpc;
  httplib::Client http(d.launcher().endpoints().http);
  http.set_read_timeout(5, 0);

  EXPECT_EQ(GrpcHealthStatus(grpc, ""), kHealthServing);
  EXPECT_EQ(GrpcHealthStatus(grpc, "asyncspade.serving.v1.GenerationService"), kHealthServing);
  httplib::Result healthy = http.Get("/health");
  ASSERT_TRUE(healthy);
  EXPECT_EQ(healthy->status, 200) << healthy->body;

  const pid_t worker = d.launcher().Process("decode-worker-0")->pid;
  ASSERT_EQ(kill(worker, SIGKILL), 0);
  ASSERT_TRUE(WaitUntil([&] { return GrpcHealthStatus(grpc, "") == kHealthNotServing; }, absl::Seconds(10)))
      << d.EventsText();
  EXPECT_EQ(GrpcHealthStatus(grpc, "asyncspade.serving.v1.GenerationService"), kHealthNotServing);
  httplib::Result unhealthy = http.Get("/health");
  ASSERT_TRUE(unhealthy);
  EXPECT_EQ(unhealthy->status, 503) << unhealthy->body;
  EXPECT_TRUE(d.HasEvent("decode-worker-0 is left down (restart: never)")) << d.EventsText();

  // Requests fail with a clear status instead of hanging.
  absl::StatusOr<launcher::GenerationOutcome> refused =
      launcher::StreamGenerate(d.client(), TokenIdsRequest({1, 403}, 4), nullptr, absl::Seconds(10));
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnavailable) << refused.status();
}

}  // namespace
}  // namespace asyncspade::testing
