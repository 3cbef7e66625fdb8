// The asyncspade-kv-selector binary (services/kv_selector/main.cc) as a real process under an
// in-process controller and decode worker: flag errors, registration, serving a link (the worker's
// layers are served), and a clean exit (deregistered, link closed) on SIGTERM.
#include <string>

#include "asyncspade/selector/v1/selector.grpc.pb.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/unit/services/decode_worker/service/deployment_test_util.h"

namespace asyncspade {
namespace {

using ::testing::HasSubstr;
using testing::ChildProcess;
using testing::StoriesDeployment;
using testing::StoriesDeploymentSettings;
using testing::WaitUntil;

std::string LogPath(const std::string& name) { return absl::StrCat(::testing::TempDir(), "/", getpid(), "_", name); }

TEST(KvSelectorProcessTest, FlagErrorsExitWithUsage) {
  ChildProcess selector("asyncspade-kv-selector", {"--config", "x.yaml", "--id", "selector-0"}, LogPath("flags.log"));
  int status = selector.Wait();
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 2);
  EXPECT_THAT(selector.Log(), HasSubstr("--controller is required"));

  ChildProcess port("asyncspade-kv-selector",
                    {"--config", "x.yaml", "--controller", "127.0.0.1:1", "--id", "s", "--port", "70000"},
                    LogPath("port.log"));
  status = port.Wait();
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 2);
  EXPECT_THAT(port.Log(), HasSubstr("--port"));
}

TEST(KvSelectorProcessTest, ServesTheWorkersLayersAndLeavesCleanlyOnSigterm) {
  ASYNCSPADE_REQUIRE_STORIES();
  StoriesDeploymentSettings settings;
  settings.policy = "asyncspade";
  settings.selectors = 1;
  StoriesDeployment deployment(settings);
  ASSERT_TRUE(deployment.Start());
  testing::SelectorProcess* selector = deployment.AddSelectorProcess("selector-3");
  ASSERT_TRUE(WaitUntil([&] { return deployment.IsReady("selector-3"); }, absl::Seconds(30))) << selector->Log();
  EXPECT_EQ(deployment.Member("selector-3")->role(), control::v1::ROLE_KV_SELECTOR);
  ASSERT_TRUE(WaitUntil([&] { return deployment.AllLayersServed(); }, absl::Seconds(30))) << selector->Log();

  // A sparse generation goes through it; GetStats shows the work and the sequence let go.
  serving::v1::GenerateRequest request = testing::TokenRequest({1, 291, 262, 379, 286}, 120);
  request.mutable_stop()->set_ignore_eos(true);
  testing::StreamResult result = testing::RunGenerate(deployment.worker_stub(), request);
  ASSERT_TRUE(result.status.ok()) << result.status.error_message();
  auto stub = selector::v1::KvSelectorService::NewStub(
      grpc::CreateChannel(deployment.Member("selector-3")->address(), grpc::InsecureChannelCredentials()));
  selector::v1::SelectorStatsResponse stats;
  ASSERT_TRUE(WaitUntil([&] {
    grpc::ClientContext context;
    return stub->GetStats(&context, {}, &stats).ok() && stats.selections_total() > 0 && stats.attached_sequences() == 0;
  })) << stats.ShortDebugString();
  EXPECT_GT(stats.mean_select_seconds(), 0.0);

  // Drain: the selector reports DRAINING in its heartbeats.
  grpc::ClientContext drain_context;
  control::v1::DrainRequest drain;
  drain.set_member_id("selector-3");
  control::v1::DrainResponse drained;
  ASSERT_TRUE(deployment.control_stub()->Drain(&drain_context, drain, &drained).ok());
  EXPECT_TRUE(WaitUntil([&] { return selector->Log().find("selector selector-3 draining") != std::string::npos; }))
      << selector->Log();

  const int status = selector->Kill(SIGTERM);
  ASSERT_TRUE(WIFEXITED(status)) << selector->Log();
  EXPECT_EQ(WEXITSTATUS(status), 0) << selector->Log();
  EXPECT_THAT(selector->Log(), HasSubstr("selector selector-3 stopped"));
  // It said goodbye on the link: the worker falls back at once, without waiting for a timeout.
  EXPECT_TRUE(WaitUntil([&] { return !deployment.AllLayersServed(); }, absl::Seconds(5)));
  const std::optional<control::v1::Member> gone = deployment.Member("selector-3");
  EXPECT_TRUE(!gone.has_value() || gone->state() == control::v1::MEMBER_STATE_GONE)
      << (gone ? gone->ShortDebugString() : "");
}

}  // namespace
}  // namespace asyncspade
