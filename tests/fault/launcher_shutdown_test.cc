// The `asyncspade launch` binary with the real processes: SIGTERM stops every process it started
// (no orphans: each pid is checked) and it exits 0; a SIGKILLed launcher takes its children with it
// (PR_SET_PDEATHSIG).
#include <signal.h>
#include <unistd.h>

#include <map>
#include <thread>

#include "gtest/gtest.h"
#include "tests/integration/launch_process.h"
#include "tests/integration/test_deployment.h"

namespace asyncspade::testing {
namespace {

class LauncherShutdownTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (const std::string why = WhyNoStoriesDeployment(); !why.empty()) GTEST_SKIP() << why;
    if (!Executable(absl::StrCat(BinaryDir(), "/asyncspade"))) GTEST_SKIP() << "asyncspade is not built";
    StoriesYamlOptions yaml;
    yaml.selectors = 2;
    yaml.policy = "asyncspade";
    yaml.budget = 16;
    config_ = dir_.Write("deployment.yaml", StoriesYaml(yaml));
  }
  TempDir dir_;
  std::string config_;
};

TEST_F(LauncherShutdownTest, SigtermStopsEveryProcessAndExitsZero) {
  LaunchProcess launch = SpawnLaunch({config_, "--log-dir", absl::StrCat(dir_.path(), "/logs")},
                                     absl::StrCat(dir_.path(), "/launch.stderr"));
  std::map<std::string, std::string> lines = ReadEndpoints(launch.stdout_fd);
  ASSERT_EQ(lines.count("grpc"), 1u) << launcher::TailOfFile(launch.stderr_path, 50);
  const std::vector<pid_t> pids = StartedPids(launch.stderr_path);
  ASSERT_EQ(pids.size(), 4u) << launcher::TailOfFile(launch.stderr_path, 50);
  for (pid_t pid : pids) ASSERT_TRUE(ProcessAlive(pid)) << pid;

  // A request in flight does not keep anything alive.
  launcher::ControllerClient client(lines["grpc"]);
  serving::GenerateRequest request = TokenIdsRequest({1, 403, 407}, 400);
  request.mutable_stop()->set_ignore_eos(true);
  std::thread streaming([&] { (void)launcher::StreamGenerate(client, request, nullptr, absl::Seconds(30)); });
  absl::SleepFor(absl::Milliseconds(100));

  ASSERT_EQ(kill(launch.pid, SIGTERM), 0);
  EXPECT_EQ(WaitExit(launch.pid, absl::Seconds(60)), 0) << launcher::TailOfFile(launch.stderr_path, 50);
  streaming.join();
  for (pid_t pid : pids) EXPECT_FALSE(ProcessAlive(pid)) << "pid " << pid << " outlived the launcher";
  const std::string log = launcher::TailOfFile(launch.stderr_path, 100);
  EXPECT_NE(log.find("SIGTERM: stopping every process"), std::string::npos) << log;
  EXPECT_NE(log.find("every process is stopped"), std::string::npos) << log;
  EXPECT_EQ(log.find("SIGKILL"), std::string::npos) << "a process needed SIGKILL: " << log;
  close(launch.stdout_fd);
}

TEST_F(LauncherShutdownTest, ChildrenDieWithASigkilledLauncher) {
  LaunchProcess launch = SpawnLaunch({config_, "--log-dir", absl::StrCat(dir_.path(), "/logs")},
                                     absl::StrCat(dir_.path(), "/launch.stderr"));
  std::map<std::string, std::string> lines = ReadEndpoints(launch.stdout_fd);
  ASSERT_EQ(lines.count("grpc"), 1u) << launcher::TailOfFile(launch.stderr_path, 50);
  const std::vector<pid_t> pids = StartedPids(launch.stderr_path);
  ASSERT_EQ(pids.size(), 4u);
  ASSERT_EQ(kill(launch.pid, SIGKILL), 0);
  WaitExit(launch.pid, absl::Seconds(5));
  EXPECT_TRUE(WaitUntil(
      [&] {
        for (pid_t pid : pids) {
          if (ProcessAlive(pid)) return false;
        }
        return true;
      },
      absl::Seconds(5)))
      << "orphans survived a SIGKILLed launcher";
  close(launch.stdout_fd);
}

}  // namespace
}  // namespace asyncspade::testing
