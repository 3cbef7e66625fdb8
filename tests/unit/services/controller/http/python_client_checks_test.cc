// Runs the Python client checks of tests/integration/python/ (which the integration tests run
// against a real deployment) against the HTTP server and a minimal gRPC GenerationService, both in
// front of the scripted fake router, so the checks themselves are tested. Skipped when the Python
// packages they need are not installed.
#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "asyncspade/serving/v1/generation.grpc.pb.h"
#include "common/control/grpc_status.h"
#include "grpcpp/grpcpp.h"
#include "httplib.h"
#include "grpcpp/health_check_service_interface.h"
#include "gtest/gtest.h"
#include "services/controller/controller_metrics.h"
#include "services/controller/http/openai_http_server.h"
#include "tests/unit/services/controller/http/fake_generation_router.h"
#include "tests/test_paths.h"

namespace asyncspade::controller {
namespace {

using ::asyncspade::testing::SourceDir;

using testing::FakeGenerationRouter;
using testing::FakeScript;

std::string Python() {
  const char* env = std::getenv("PYTHON");
  return env != nullptr ? env : "python3";
}

bool PythonHasModules(const std::string& modules) {
  return std::system(absl::StrCat(Python(), " -c 'import ", modules, "' >/dev/null 2>&1").c_str()) == 0;
}

// Runs `command`, returns its exit code and (in `output`) its stdout and stderr.
int RunCommand(const std::string& command, std::string* output) {
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  if (pipe == nullptr) return -1;
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) output->append(buffer, n);
  const int status = pclose(pipe);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

std::string Script(const std::string& name) { return absl::StrCat(SourceDir(), "/tests/integration/python/", name); }

class OpenAiClientCheckTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!PythonHasModules("openai")) {
      GTEST_SKIP() << "the `openai` Python package is not installed (pip install openai)";
    }
    server_ = std::make_unique<http::OpenAiHttpServer>(&router_, metrics_.get(), http::OpenAiServerOptions{});
    absl::StatusOr<int> port = server_->Start();
    ASSERT_TRUE(port.ok()) << port.status();
    base_url_ = absl::StrCat("http://127.0.0.1:", *port);
  }

  FakeGenerationRouter router_;
  std::unique_ptr<ControllerMetrics> metrics_ = CreateControllerMetrics();
  std::unique_ptr<http::OpenAiHttpServer> server_;
  std::string base_url_;
};

TEST_F(OpenAiClientCheckTest, PassesAgainstAWellFormedServer) {
  std::string output;
  const int code = RunCommand(absl::StrCat(Python(), " ", Script("openai_client_check.py"), " --base-url ", base_url_,
                                    " --timeout 30"),
                       &output);
  std::cout << output;
  EXPECT_EQ(code, 0) << output;
  EXPECT_NE(output.find("all checks passed"), std::string::npos) << output;
}

TEST_F(OpenAiClientCheckTest, FailsWhenTheAnswerIsEmpty) {
  FakeScript script;
  script.chunks = {""};  // a token with no text
  router_.SetScript(script);
  std::string output;
  const int code = RunCommand(absl::StrCat(Python(), " ", Script("openai_client_check.py"), " --base-url ", base_url_,
                                    " --timeout 30"),
                       &output);
  EXPECT_EQ(code, 1) << output;
  EXPECT_NE(output.find("FAILED: completions: empty text"), std::string::npos) << output;
}

// Not a test: serves the fake router over HTTP until killed, for trying clients by hand:
//   python_client_checks_test --gtest_also_run_disabled_tests --gtest_filter='*DISABLED_ServeFakeRouter'
// prints `fake OpenAI server: http://127.0.0.1:PORT`. ASYNCSPADE_FAKE_SERVER_PORT picks the port;
// ASYNCSPADE_FAKE_SERVER_SECONDS (default 600) bounds how long it serves.
TEST(ManualFakeServer, DISABLED_ServeFakeRouter) {
  FakeGenerationRouter router;
  FakeScript script;
  script.chunk_delay = absl::Milliseconds(20);
  router.SetScript(script);
  std::unique_ptr<ControllerMetrics> metrics = CreateControllerMetrics();
  http::OpenAiServerOptions options;
  if (const char* port = std::getenv("ASYNCSPADE_FAKE_SERVER_PORT")) options.port = std::atoi(port);
  http::OpenAiHttpServer server(&router, metrics.get(), options);
  absl::StatusOr<int> port = server.Start();
  ASSERT_TRUE(port.ok()) << port.status();
  std::cout << "fake OpenAI server: http://127.0.0.1:" << *port << std::endl;
  const char* seconds = std::getenv("ASYNCSPADE_FAKE_SERVER_SECONDS");
  absl::SleepFor(absl::Seconds(seconds != nullptr ? std::atoi(seconds) : 600));
}

// The exposition parses with the reference Python parser (prometheus_client's), labels and all.
TEST(MetricsExpositionTest, ParsesWithPrometheusClient) {
  if (!PythonHasModules("prometheus_client")) {
    GTEST_SKIP() << "the prometheus_client Python package is not installed (pip install prometheus-client)";
  }
  FakeGenerationRouter router;
  std::unique_ptr<ControllerMetrics> metrics = CreateControllerMetrics();
  control::v1::Load load;
  load.set_running_requests(2);
  load.set_kv_cache_usage(0.5);
  metrics->MemberLoad("decode-\\0\n", control::v1::ROLE_DECODE_WORKER, control::v1::MEMBER_STATE_READY, load);
  http::OpenAiHttpServer server(&router, metrics.get(), http::OpenAiServerOptions{});
  absl::StatusOr<int> port = server.Start();
  ASSERT_TRUE(port.ok()) << port.status();
  httplib::Client client("127.0.0.1", *port);
  ASSERT_EQ(client.Post("/v1/completions", "{\"prompt\": \"x\"}", "application/json")->status, 200);
  auto exposition = client.Get("/metrics");
  ASSERT_TRUE(exposition);
  ASSERT_EQ(exposition->status, 200);
  const std::string path = ::testing::TempDir() + "/asyncspade_metrics.txt";
  {
    FILE* file = fopen(path.c_str(), "w");
    ASSERT_NE(file, nullptr);
    fwrite(exposition->body.data(), 1, exposition->body.size(), file);
    fclose(file);
  }
  const std::string program =
      "import sys\n"
      "from prometheus_client.parser import text_string_to_metric_families\n"
      "families = list(text_string_to_metric_families(open(sys.argv[1]).read()))\n"
      "samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}\n"
      "assert samples[('asyncspade_requests_total', (('api', 'http'), ('finish_reason', 'stop')))] == 1\n"
      "assert samples[('asyncspade_member_requests_running', (('member', 'decode-\\\\0\\n'),))] == 2\n"
      "assert samples[('asyncspade_e2e_request_latency_seconds_bucket', (('le', '+Inf'),))] == 1\n"
      "print(len(families), 'families', len(samples), 'samples')\n";
  const std::string program_path = ::testing::TempDir() + "/asyncspade_parse_metrics.py";
  {
    FILE* file = fopen(program_path.c_str(), "w");
    ASSERT_NE(file, nullptr);
    fwrite(program.data(), 1, program.size(), file);
    fclose(file);
  }
  std::string output;
  const int code = RunCommand(absl::StrCat(Python(), " ", program_path, " ", path), &output);
  std::cout << output;
  EXPECT_EQ(code, 0) << output;
  EXPECT_NE(output.find("20 families"), std::string::npos) << output;
}

// The public Generation API in its simplest form over the fake router (the real one is the
// controller's GenerationServiceImpl, which needs real decode workers).
class FakeGenerationService final : public serving::v1::GenerationService::Service {
 public:
  explicit FakeGenerationService(GenerationRouter* router) : router_(router) {}

  grpc::Status Generate(grpc::ServerContext*, const serving::v1::GenerateRequest* request,
                        grpc::ServerWriter<serving::v1::GenerateResponse>* writer) override {
    absl::StatusOr<std::unique_ptr<GenerationCall>> call = router_->Start(*request);
    if (!call.ok()) return ToGrpcStatus(call.status());
    serving::v1::GenerateResponse response;
    while ((*call)->Next(&response)) {
      if (!writer->Write(response)) (*call)->Cancel();
    }
    return ToGrpcStatus((*call)->Finish());
  }
  grpc::Status Abort(grpc::ServerContext*, const serving::v1::AbortRequest* request,
                     serving::v1::AbortResponse* response) override {
    absl::StatusOr<bool> found = router_->Abort(request->request_id());
    if (!found.ok()) return ToGrpcStatus(found.status());
    response->set_found(*found);
    return grpc::Status::OK;
  }
  grpc::Status GetModelInfo(grpc::ServerContext*, const serving::v1::GetModelInfoRequest*,
                            serving::v1::ModelInfo* response) override {
    absl::StatusOr<serving::v1::ModelInfo> info = router_->GetModelInfo();
    if (!info.ok()) return ToGrpcStatus(info.status());
    *response = *info;
    return grpc::Status::OK;
  }

 private:
  GenerationRouter* router_;
};

class GrpcClientCheckTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!PythonHasModules("grpc, grpc_tools")) {
      GTEST_SKIP() << "the grpcio / grpcio-tools Python packages are not installed (pip install grpcio grpcio-tools)";
    }
    FakeScript script;
    script.long_request_max_tokens = 1000;  // the check's aborted request runs until aborted
    router_.SetScript(script);
    grpc::EnableDefaultHealthCheckService(true);
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(&service_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    ASSERT_GT(port_, 0);
  }

  void TearDown() override {
    if (server_ != nullptr) server_->Shutdown();
  }

  void SetServing(bool serving) {
    for (const char* service : {"", "asyncspade.serving.v1.GenerationService"}) {
      server_->GetHealthCheckService()->SetServingStatus(service, serving);
    }
  }

  std::string RunCheck() {
    std::string output;
    exit_code_ = RunCommand(absl::StrCat(Python(), " ", Script("grpc_client_check.py"), " --endpoint 127.0.0.1:", port_,
                                  " --proto-dir ", SourceDir(), "/proto --timeout 30"),
                     &output);
    return output;
  }

  FakeGenerationRouter router_;
  FakeGenerationService service_{&router_};
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  int exit_code_ = -1;
};

TEST_F(GrpcClientCheckTest, PassesAgainstAWellFormedServer) {
  SetServing(true);
  const std::string output = RunCheck();
  std::cout << output;
  EXPECT_EQ(exit_code_, 0) << output;
  EXPECT_NE(output.find("all checks passed"), std::string::npos) << output;
  EXPECT_GE(router_.cancels(), 1) << "the check's Abort did not reach the router";
}

TEST_F(GrpcClientCheckTest, FailsWhenNotServing) {
  SetServing(false);
  const std::string output = RunCheck();
  EXPECT_EQ(exit_code_, 1) << output;
  EXPECT_NE(output.find("NOT_SERVING, expected SERVING"), std::string::npos) << output;
}

}  // namespace
}  // namespace asyncspade::controller
