// The asyncspade-decode-worker binary (services/decode_worker/main.cc) as a real process under an
// in-process controller: flag and configuration errors, serving generation through the controller,
// and a clean exit (deregistered) on SIGTERM.
#include <filesystem>
#include <string>

#include "gmock/gmock.h"
#include "services/decode_worker/model/model_runner_factory.h"
#include "gtest/gtest.h"
#include "tests/unit/services/decode_worker/service/deployment_test_util.h"

namespace asyncspade {
namespace {

using ::testing::HasSubstr;
using testing::ChildProcess;
using testing::RunGenerate;
using testing::StoriesDeployment;
using testing::StoriesDeploymentSettings;
using testing::StreamResult;
using testing::TokenRequest;
using testing::WaitUntil;
using testing::WriteTempFile;

std::string LogPath(const std::string& name) { return absl::StrCat(::testing::TempDir(), "/", getpid(), "_", name); }

TEST(DecodeWorkerProcessTest, FlagAndConfigurationErrorsExitWithAMessage) {
  {
    ChildProcess worker("asyncspade-decode-worker", {}, LogPath("noflags.log"));
    const int status = worker.Wait();
    ASSERT_TRUE(WIFEXITED(status));
    EXPECT_EQ(WEXITSTATUS(status), 2);
    EXPECT_THAT(worker.Log(), HasSubstr("--config is required"));
  }
  {
    ChildProcess worker("asyncspade-decode-worker",
                        {"--config", "/nonexistent/deploy.yaml", "--controller", "127.0.0.1:1", "--id", "w"},
                        LogPath("nofile.log"));
    const int status = worker.Wait();
    ASSERT_TRUE(WIFEXITED(status));
    EXPECT_EQ(WEXITSTATUS(status), 2);
    EXPECT_THAT(worker.Log(), HasSubstr("/nonexistent/deploy.yaml"));
  }
  if (!ModelRunnerFactoryHasCuda()) {
    const std::string yaml = WriteTempFile("cpu.yaml", testing::StoriesDeploymentYaml({}));
    ChildProcess worker("asyncspade-decode-worker",
                        {"--config", yaml, "--controller", "127.0.0.1:1", "--id", "w", "--devices", "0"},
                        LogPath("gpu.log"));
    const int status = worker.Wait();
    ASSERT_TRUE(WIFEXITED(status));
    EXPECT_EQ(WEXITSTATUS(status), 2);
    EXPECT_THAT(worker.Log(), HasSubstr("this build has no CUDA"));
  }
  {
    // model.path is a directory without a model.
    const std::string empty_dir = absl::StrCat(::testing::TempDir(), "/", getpid(), "_empty_model");
    std::filesystem::create_directories(empty_dir);
    const std::string yaml = WriteTempFile("bad_model.yaml", absl::StrCat(R"(
model:
  path: )", empty_dir, R"(
decode_workers:
  devices: cpu
  kv_cache:
    blocks: 64
sparse:
  policy: dense
)"));
    ChildProcess worker("asyncspade-decode-worker", {"--config", yaml, "--controller", "127.0.0.1:1", "--id", "w"},
                        LogPath("badmodel.log"));
    const int status = worker.Wait();
    ASSERT_TRUE(WIFEXITED(status));
    EXPECT_NE(WEXITSTATUS(status), 0);
    EXPECT_THAT(worker.Log(), HasSubstr("model.path"));
    EXPECT_THAT(worker.Log(), HasSubstr(absl::StrCat(getpid(), "_empty_model")));
  }
}

TEST(DecodeWorkerProcessTest, ServesThroughTheControllerAndDeregistersOnSigterm) {
  ASYNCSPADE_REQUIRE_STORIES();
  const testing::StoriesGolden golden = testing::LoadStoriesGolden();
  StoriesDeploymentSettings settings;
  StoriesDeployment deployment(settings);
  ASSERT_TRUE(deployment.Start(/*with_worker=*/false));
  const std::string yaml = WriteTempFile("worker.yaml", testing::StoriesDeploymentYaml(settings));
  ChildProcess worker("asyncspade-decode-worker",
                      {"--config", yaml, "--controller", deployment.controller()->grpc_endpoint(), "--id",
                       "decode-worker-7"},
                      LogPath("worker.log"));
  ASSERT_TRUE(WaitUntil([&] { return deployment.IsReady("decode-worker-7"); }, absl::Seconds(30))) << worker.Log();
  const std::optional<control::v1::Member> member = deployment.Member("decode-worker-7");
  EXPECT_EQ(member->pid(), worker.pid());
  EXPECT_EQ(member->role(), control::v1::ROLE_DECODE_WORKER);

  const testing::GoldenPrompt& prompt = golden.prompts[0];
  serving::v1::GenerateRequest request;
  request.set_text(prompt.text);
  request.mutable_stop()->set_max_tokens(static_cast<int>(prompt.continuation_ids.size()));
  StreamResult result;
  ASSERT_TRUE(WaitUntil([&] {
    result = RunGenerate(deployment.generation_stub(), request);
    return result.status.ok();
  })) << result.status.error_message();
  EXPECT_EQ(result.token_ids, prompt.continuation_ids);
  EXPECT_EQ(result.final->served_by(), "decode-worker-7");

  const int status = worker.Kill(SIGTERM);
  ASSERT_TRUE(WIFEXITED(status)) << worker.Log();
  EXPECT_EQ(WEXITSTATUS(status), 0) << worker.Log();
  EXPECT_THAT(worker.Log(), HasSubstr("decode worker decode-worker-7 stopped"));
  const std::optional<control::v1::Member> gone = deployment.Member("decode-worker-7");
  EXPECT_TRUE(!gone.has_value() || gone->state() == control::v1::MEMBER_STATE_GONE)
      << "deregistered: " << (gone ? gone->ShortDebugString() : "");
}

}  // namespace
}  // namespace asyncspade
