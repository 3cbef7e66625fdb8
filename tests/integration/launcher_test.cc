// The launcher's supervision with the real controller and stand-in members (this test binary,
// re-executed in the members' role: see stand_in_member.h), so every case runs in seconds: startup
// and readiness, restart with backoff, restart: never, max_restarts, scaling selectors, drained
// members, startup timeout and failures, SIGKILL after the grace period, the controller dying,
// config errors, and the `asyncspade launch` binary's output, exit codes and signal handling.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <map>
#include <regex>
#include <set>

#include "absl/strings/numbers.h"
#include "gtest/gtest.h"
// stand_in_member.h first: test_deployment.h (which launch_process.h includes) aliases `control`.
#include "tests/integration/stand_in_member.h"
#include "tests/integration/test_deployment.h"
#include "tests/integration/launch_process.h"

namespace asyncspade::testing {
namespace {

using launcher::Launcher;
using launcher::LauncherOptions;
using launcher::ProcessSnapshot;
using Phase = ProcessSnapshot::Phase;

std::string SelfExe() { return fs::read_symlink("/proc/self/exe").string(); }

class LauncherTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::exists(absl::StrCat(Stories260KDir(), "/config.json"))) {
      GTEST_SKIP() << "stories260K is not at " << Stories260KDir() << " (set ASYNCSPADE_SHARED_DIR)";
    }
    if (!Executable(absl::StrCat(BinaryDir(), "/", launcher::kControllerBinary))) {
      GTEST_SKIP() << launcher::kControllerBinary << " is not built in " << BinaryDir();
    }
  }

  // Options that run stand-ins for the members; `env` adds stand-in behaviour variables.
  LauncherOptions StandInOptions(const std::string& yaml,
                                 std::vector<std::pair<std::string, std::string>> env = {}) {
    LauncherOptions options;
    options.config_path = dir_.Write("deployment.yaml", yaml);
    options.log_dir = absl::StrCat(dir_.path(), "/logs");
    options.decode_worker_program = SelfExe();
    options.selector_program = SelfExe();
    options.extra_env = std::move(env);
    options.extra_env.emplace_back(kStandInEnv, "1");
    options.first_restart_backoff = absl::Milliseconds(200);
    options.stop_grace = absl::Seconds(5);
    return options;
  }

  static control::ListMembersResponse Members(LaunchedDeployment& d) {
    absl::StatusOr<control::ListMembersResponse> r = d.client().ListMembers();
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : control::ListMembersResponse();
  }

  // Waits until member `id` is READY with the pid the launcher reports for it.
  static bool ReadyWithLauncherPid(LaunchedDeployment& d, const std::string& id) {
    std::optional<ProcessSnapshot> p = d.launcher().Process(id);
    if (!p.has_value() || p->phase != Phase::kRunning) return false;
    absl::StatusOr<control::ListMembersResponse> r = d.client().ListMembers();
    if (!r.ok()) return false;
    const control::Member* m = FindMember(*r, id);
    return m != nullptr && m->state() == control::MEMBER_STATE_READY && m->pid() == p->pid;
  }

  TempDir dir_;
};

TEST_F(LauncherTest, StartsEveryProcessReadyAndStopsThemAll) {
  StoriesYamlOptions yaml;
  yaml.decode_workers = 2;
  yaml.selectors = 2;
  yaml.policy = "asyncspade";
  LaunchedDeployment d(StandInOptions(StoriesYaml(yaml)));
  ASSERT_TRUE(d.Start().ok()) << d.EventsText();
  EXPECT_TRUE(absl::StartsWith(d.launcher().endpoints().grpc, "127.0.0.1:")) << d.launcher().endpoints().grpc;
  EXPECT_TRUE(absl::StartsWith(d.launcher().endpoints().http, "http://127.0.0.1:")) << d.launcher().endpoints().http;

  const control::ListMembersResponse members = Members(d);
  EXPECT_TRUE(members.serving()) << members.not_serving_reason();
  std::vector<pid_t> pids;
  for (const std::string id : {"decode-worker-0", "decode-worker-1", "selector-0", "selector-1"}) {
    const control::Member* m = FindMember(members, id);
    ASSERT_NE(m, nullptr) << id << " is not registered";
    EXPECT_EQ(m->state(), control::MEMBER_STATE_READY) << id;
    std::optional<ProcessSnapshot> p = d.launcher().Process(id);
    ASSERT_TRUE(p.has_value()) << id;
    EXPECT_EQ(m->pid(), p->pid) << id << ": the controller knows another process than the launcher started";
    ASSERT_EQ(m->devices_size(), 1);
    EXPECT_EQ(m->devices(0), "cpu");
    EXPECT_TRUE(fs::exists(p->log_path)) << p->log_path;
    pids.push_back(p->pid);
  }
  pids.push_back(d.launcher().Process("controller")->pid);
  for (pid_t pid : pids) EXPECT_TRUE(ProcessAlive(pid)) << pid;

  ASSERT_TRUE(d.launcher().Stop().ok());
  for (pid_t pid : pids) EXPECT_FALSE(ProcessAlive(pid)) << "pid " << pid << " survived Stop()";
  for (const ProcessSnapshot& p : d.launcher().Processes()) {
    EXPECT_EQ(p.phase, Phase::kStopped) << p.id;
    ASSERT_TRUE(p.last_exit.has_value()) << p.id;
    EXPECT_TRUE(p.last_exit->success()) << p.id << " ended with " << p.last_exit->Describe()
                                        << " instead of exiting cleanly on SIGTERM";
  }
  // Members are stopped before the controller: they deregister from a live controller.
  EXPECT_NE(launcher::TailOfFile(absl::StrCat(dir_.path(), "/logs/controller.log"), 200).find("deregistered"),
            std::string::npos);
}

TEST_F(LauncherTest, RestartsAKilledMemberWithANewProcess) {
  StoriesYamlOptions yaml;
  yaml.selectors = 2;
  yaml.policy = "asyncspade";
  LaunchedDeployment d(StandInOptions(StoriesYaml(yaml)));
  ASSERT_TRUE(d.Start().ok()) << d.EventsText();
  const pid_t old_pid = d.launcher().Process("selector-1")->pid;
  ASSERT_EQ(kill(old_pid, SIGKILL), 0);

  ASSERT_TRUE(WaitUntil(
      [&] {
        std::optional<ProcessSnapshot> p = d.launcher().Process("selector-1");
        return p->restarts == 1 && p->pid != old_pid && ReadyWithLauncherPid(d, "selector-1");
      },
      absl::Seconds(20)))
      << d.EventsText();
  EXPECT_TRUE(d.HasEvent(absl::StrCat("selector-1 (pid ", old_pid, ") exited unexpectedly: signal 9 (SIGKILL)")))
      << d.EventsText();
  EXPECT_TRUE(d.HasEvent("restarting selector-1 in 0.2 s (restart 1 of 3)")) << d.EventsText();
  EXPECT_TRUE(d.HasEvent("restarted selector-1")) << d.EventsText();
  EXPECT_TRUE(Members(d).serving());
}

TEST_F(LauncherTest, LeavesAMemberDownWithRestartNeverAndTheControllerStopsServing) {
  StoriesYamlOptions yaml;
  yaml.worker_restart = "never";
  LaunchedDeployment d(StandInOptions(StoriesYaml(yaml)));
  ASSERT_TRUE(d.Start().ok()) << d.EventsText();
  EXPECT_TRUE(Members(d).serving());
  const pid_t pid = d.launcher().Process("decode-worker-0")->pid;
  ASSERT_EQ(kill(pid, SIGKILL), 0);
  ASSERT_TRUE(WaitUntil([&] { return d.launcher().Process("decode-worker-0")->phase == Phase::kDown; },
                        absl::Seconds(10)))
      << d.EventsText();
  EXPECT_TRUE(d.HasEvent("decode-worker-0 is left down (restart: never)")) << d.EventsText();
  // The launcher deregisters the dead member at once: no wait for the heartbeat timeout.
  ASSERT_TRUE(WaitUntil([&] { return !Members(d).serving(); }, absl::Seconds(1)));
  EXPECT_FALSE(Members(d).not_serving_reason().empty());
  absl::SleepFor(absl::Seconds(1));
  EXPECT_EQ(d.launcher().Process("decode-worker-0")->restarts, 0);
}

TEST_F(LauncherTest, GivesUpAfterMaxRestarts) {
  StoriesYamlOptions yaml;
  yaml.worker_max_restarts = 1;
  LaunchedDeployment d(StandInOptions(StoriesYaml(yaml)));
  ASSERT_TRUE(d.Start().ok()) << d.EventsText();
  const pid_t first = d.launcher().Process("decode-worker-0")->pid;
  ASSERT_EQ(kill(first, SIGKILL), 0);
  ASSERT_TRUE(WaitUntil([&] { return ReadyWithLauncherPid(d, "decode-worker-0") &&
                                     d.launcher().Process("decode-worker-0")->pid != first; },
                        absl::Seconds(20)))
      << d.EventsText();
  const pid_t second = d.launcher().Process("decode-worker-0")->pid;
  ASSERT_EQ(kill(second, SIGKILL), 0);
  ASSERT_TRUE(WaitUntil([&] { return d.launcher().Process("decode-worker-0")->phase == Phase::kDown; },
                        absl::Seconds(10)))
      << d.EventsText();
  EXPECT_TRUE(d.HasEvent("decode-worker-0 is left down: it was already restarted 1 time(s) (max_restarts: 1)"))
      << d.EventsText();
}

TEST_F(LauncherTest, FollowsTheDesiredSelectorCount) {
  StoriesYamlOptions yaml;
  yaml.selectors = 2;
  yaml.policy = "dense";
  LaunchedDeployment d(StandInOptions(StoriesYaml(yaml)));
  ASSERT_TRUE(d.Start().ok()) << d.EventsText();

  ASSERT_EQ(d.client().ScaleSelectors(3).value_or(-1), 3);
  ASSERT_TRUE(WaitUntil([&] { return ReadyWithLauncherPid(d, "selector-2"); }, absl::Seconds(20)))
      << d.EventsText();
  EXPECT_TRUE(d.HasEvent("scaling selectors from 2 to 3")) << d.EventsText();

  // Down to one: the two highest are drained, then stopped, and never restarted.
  ASSERT_EQ(d.client().ScaleSelectors(1).value_or(-1), 1);
  ASSERT_TRUE(WaitUntil(
      [&] {
        return d.launcher().Process("selector-2")->phase == Phase::kRetired &&
               d.launcher().Process("selector-1")->phase == Phase::kRetired;
      },
      absl::Seconds(20)))
      << d.EventsText();
  EXPECT_TRUE(d.HasEvent("draining selector-2")) << d.EventsText();
  EXPECT_EQ(d.launcher().Process("selector-0")->phase, Phase::kRunning);
  ASSERT_TRUE(WaitUntil(
      [&] {
        control::ListMembersResponse m = Members(d);
        return FindMember(m, "selector-1") == nullptr && FindMember(m, "selector-2") == nullptr &&
               FindMember(m, "selector-0") != nullptr;
      },
      absl::Seconds(10)));
  absl::SleepFor(absl::Seconds(1));
  EXPECT_EQ(d.launcher().Process("selector-1")->phase, Phase::kRetired) << "a retired selector was restarted";

  // Up again: the lowest free id is reused.
  ASSERT_EQ(d.client().ScaleSelectors(2).value_or(-1), 2);
  ASSERT_TRUE(WaitUntil([&] { return ReadyWithLauncherPid(d, "selector-1"); }, absl::Seconds(20)))
      << d.EventsText();
  EXPECT_EQ(d.launcher().Process("selector-2")->phase, Phase::kRetired);
}

TEST_F(LauncherTest, StopsADrainedDecodeWorker) {
  StoriesYamlOptions yaml;
  yaml.decode_workers = 2;
  LaunchedDeployment d(StandInOptions(StoriesYaml(yaml)));
  ASSERT_TRUE(d.Start().ok()) << d.EventsText();
  ASSERT_TRUE(d.client().Drain("decode-worker-1").ok());
  ASSERT_TRUE(WaitUntil([&] { return d.launcher().Process("decode-worker-1")->phase == Phase::kRetired; },
                        absl::Seconds(20)))
      << d.EventsText();
  EXPECT_TRUE(d.HasEvent("decode-worker-1 finished draining: stopping it")) << d.EventsText();
  EXPECT_TRUE(d.launcher().Process("decode-worker-1")->last_exit->success());
  EXPECT_EQ(d.launcher().Process("decode-worker-0")->phase, Phase::kRunning);
  EXPECT_TRUE(Members(d).serving());
}

TEST_F(LauncherTest, ADrainedSelectorIsStoppedAndReplacedUnderANewId) {
  StoriesYamlOptions yaml;
  yaml.selectors = 2;
  yaml.policy = "asyncspade";
  LaunchedDeployment d(StandInOptions(StoriesYaml(yaml)));
  ASSERT_TRUE(d.Start().ok()) << d.EventsText();
  const pid_t drained_pid = d.launcher().Process("selector-1")->pid;
  ASSERT_TRUE(d.client().Drain("selector-1").ok());
  // The desired count is still 2: the launcher keeps two selectors, the replacement under a free id.
  ASSERT_TRUE(WaitUntil(
      [&] {
        return d.launcher().Process("selector-1")->phase == Phase::kRetired &&
               ReadyWithLauncherPid(d, "selector-2") && Members(d).serving();
      },
      absl::Seconds(20)))
      << d.EventsText();
  EXPECT_FALSE(ProcessAlive(drained_pid));
  EXPECT_TRUE(d.HasEvent("selector-1 finished draining: stopping it")) << d.EventsText();
  EXPECT_TRUE(d.launcher().Process("selector-1")->last_exit->success());
  EXPECT_EQ(d.launcher().Process("selector-0")->phase, Phase::kRunning);
}

TEST_F(LauncherTest, StartupTimeoutNamesTheProcessThatIsNotReadyAndStopsEverything) {
  StoriesYamlOptions yaml;
  yaml.selectors = 2;
  yaml.startup_timeout_s = 3;
  LaunchedDeployment d(StandInOptions(StoriesYaml(yaml), {{"ASYNCSPADE_STANDIN_NEVER_READY", "selector-1"}}));
  const absl::Status started = d.Start();
  ASSERT_EQ(started.code(), absl::StatusCode::kDeadlineExceeded) << started;
  const std::string message(started.message());
  EXPECT_NE(message.find("lifecycle.startup_timeout_s"), std::string::npos) << message;
  EXPECT_NE(message.find("selector-1 (pid"), std::string::npos) << message;
  EXPECT_NE(message.find("state STARTING"), std::string::npos) << message;
  EXPECT_NE(message.find("stand-in selector-1: registered"), std::string::npos) << "no log tail: " << message;
  EXPECT_EQ(message.find("selector-0 (pid"), std::string::npos) << "selector-0 was ready: " << message;
  for (const ProcessSnapshot& p : d.launcher().Processes()) {
    EXPECT_FALSE(ProcessAlive(p.pid)) << p.id << " survived a failed start";
  }
}

TEST_F(LauncherTest, AMemberExitingDuringStartupFailsTheLaunchWithItsLog) {
  LaunchedDeployment d(StandInOptions(StoriesYaml({}), {{"ASYNCSPADE_STANDIN_FAIL_AT_START", "decode-worker-0"}}));
  const absl::Status started = d.Start();
  ASSERT_EQ(started.code(), absl::StatusCode::kFailedPrecondition) << started;
  const std::string message(started.message());
  EXPECT_NE(message.find("decode-worker-0 (pid"), std::string::npos) << message;
  EXPECT_NE(message.find("exited while starting (exit code 3)"), std::string::npos) << message;
  EXPECT_NE(message.find("failing at start as asked"), std::string::npos) << message;
  EXPECT_FALSE(ProcessAlive(d.launcher().Process("controller")->pid));
}

TEST_F(LauncherTest, KillsAProcessThatIgnoresSigtermAfterTheGracePeriod) {
  StoriesYamlOptions yaml;
  yaml.selectors = 1;
  LauncherOptions options = StandInOptions(StoriesYaml(yaml), {{"ASYNCSPADE_STANDIN_IGNORE_SIGTERM", "selector-0"}});
  options.stop_grace = absl::Seconds(1);
  LaunchedDeployment d(options);
  ASSERT_TRUE(d.Start().ok()) << d.EventsText();
  const absl::Time start = absl::Now();
  ASSERT_TRUE(d.launcher().Stop().ok());
  EXPECT_LT(absl::Now() - start, absl::Seconds(10));
  std::optional<ProcessSnapshot> selector = d.launcher().Process("selector-0");
  ASSERT_TRUE(selector->last_exit.has_value());
  EXPECT_TRUE(selector->last_exit->signaled && selector->last_exit->code == SIGKILL)
      << selector->last_exit->Describe();
  EXPECT_TRUE(d.HasEvent("selector-0 (pid")) << d.EventsText();
  EXPECT_TRUE(d.HasEvent("of SIGTERM: sending SIGKILL")) << d.EventsText();
  EXPECT_TRUE(d.launcher().Process("decode-worker-0")->last_exit->success());
}

TEST_F(LauncherTest, TheControllerDyingStopsTheDeployment) {
  StoriesYamlOptions yaml;
  yaml.selectors = 1;
  LaunchedDeployment d(StandInOptions(StoriesYaml(yaml)));
  ASSERT_TRUE(d.Start().ok()) << d.EventsText();
  const pid_t controller = d.launcher().Process("controller")->pid;
  const pid_t worker = d.launcher().Process("decode-worker-0")->pid;
  ASSERT_EQ(kill(controller, SIGKILL), 0);
  const absl::Status ended = d.launcher().Wait();
  EXPECT_EQ(ended.code(), absl::StatusCode::kUnavailable) << ended;
  EXPECT_TRUE(d.HasEvent("controller (pid")) << d.EventsText();
  EXPECT_FALSE(ProcessAlive(worker));
  EXPECT_FALSE(ProcessAlive(d.launcher().Process("selector-0")->pid));
}

TEST_F(LauncherTest, ConfigErrorsNameTheKeyBeforeAnythingStarts) {
  const std::string dense = "sparse:\n  policy: dense\n";
  LauncherOptions options = StandInOptions(absl::StrCat("model:\n  path: /nonexistent/model\ndecode_workers:\n"
                                                        "  kv_cache:\n    blocks: 64\n", dense));
  absl::StatusOr<std::unique_ptr<Launcher>> missing_model = Launcher::Create(options);
  ASSERT_FALSE(missing_model.ok());
  EXPECT_EQ(missing_model.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(missing_model.status().message().find("model.path: '/nonexistent/model'"), std::string::npos)
      << missing_model.status();

  options.config_path = dir_.Write("typo.yaml", absl::StrCat("model:\n  path: ", Stories260KDir(),
                                                             "\ndecode_workers:\n  kv_cache:\n    blokcs: 64\n"));
  absl::StatusOr<std::unique_ptr<Launcher>> typo = Launcher::Create(options);
  ASSERT_FALSE(typo.ok());
  EXPECT_EQ(typo.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(typo.status().message().find("decode_workers.kv_cache.blokcs"), std::string::npos) << typo.status();

  options.config_path = dir_.Write("gpu.yaml", absl::StrCat("model:\n  path: ", Stories260KDir(),
                                                            "\ndecode_workers:\n  devices: [[999]]\n  kv_cache:\n"
                                                            "    blocks: 64\n", dense));
  absl::StatusOr<std::unique_ptr<Launcher>> gpu = Launcher::Create(options);
  ASSERT_FALSE(gpu.ok());
  EXPECT_NE(gpu.status().message().find("decode_workers.devices[0]"), std::string::npos) << gpu.status();

  options.config_path = dir_.Write("ok.yaml", StoriesYaml({}));
  options.decode_worker_program = "/nonexistent/asyncspade-decode-worker";
  absl::StatusOr<std::unique_ptr<Launcher>> no_binary = Launcher::Create(options);
  ASSERT_FALSE(no_binary.ok());
  EXPECT_NE(no_binary.status().message().find("/nonexistent/asyncspade-decode-worker"), std::string::npos)
      << no_binary.status();
}

// --- the `asyncspade launch` binary ---

// A build directory whose bin/ runs the real controller and this binary as the members.
std::string StandInBuildDir(const TempDir& dir) {
  const fs::path bin = fs::path(dir.path()) / "build" / "bin";
  fs::create_directories(bin);
  fs::create_symlink(absl::StrCat(BinaryDir(), "/", launcher::kControllerBinary), bin / launcher::kControllerBinary);
  fs::create_symlink(SelfExe(), bin / launcher::kDecodeWorkerBinary);
  fs::create_symlink(SelfExe(), bin / launcher::kSelectorBinary);
  return (fs::path(dir.path()) / "build").string();
}

TEST_F(LauncherTest, LaunchBinaryPrintsEndpointsAndSigtermStopsEveryProcess) {
  StoriesYamlOptions yaml;
  yaml.selectors = 2;
  yaml.policy = "asyncspade";
  const std::string config = dir_.Write("deployment.yaml", StoriesYaml(yaml));
  const std::string build = StandInBuildDir(dir_);
  LaunchProcess launch = SpawnLaunch({config, "--build-dir", build, "--log-dir", absl::StrCat(dir_.path(), "/logs")},
                                     absl::StrCat(dir_.path(), "/launch.stderr"), {absl::StrCat(kStandInEnv, "=1")});
  std::map<std::string, std::string> lines = ReadEndpoints(launch.stdout_fd);
  ASSERT_EQ(lines.count("grpc"), 1u) << launcher::TailOfFile(launch.stderr_path, 50);
  EXPECT_TRUE(std::regex_match(lines["grpc"], std::regex(R"(127\.0\.0\.1:[0-9]+)"))) << lines["grpc"];
  EXPECT_TRUE(std::regex_match(lines["http"], std::regex(R"(http://127\.0\.0\.1:[0-9]+)"))) << lines["http"];
  EXPECT_EQ(lines["logs"], absl::StrCat(dir_.path(), "/logs"));

  launcher::ControllerClient client(lines["grpc"]);
  absl::StatusOr<control::ListMembersResponse> members = client.ListMembers();
  ASSERT_TRUE(members.ok()) << members.status();
  EXPECT_EQ(members->members_size(), 3);
  EXPECT_TRUE(members->serving());

  const std::vector<pid_t> pids = StartedPids(launch.stderr_path);
  ASSERT_EQ(pids.size(), 4u) << launcher::TailOfFile(launch.stderr_path, 50);
  for (pid_t pid : pids) EXPECT_TRUE(ProcessAlive(pid)) << pid;
  ASSERT_EQ(kill(launch.pid, SIGTERM), 0);
  EXPECT_EQ(WaitExit(launch.pid, absl::Seconds(30)), 0) << launcher::TailOfFile(launch.stderr_path, 50);
  for (pid_t pid : pids) EXPECT_FALSE(ProcessAlive(pid)) << "pid " << pid << " is an orphan";
  EXPECT_NE(launcher::TailOfFile(launch.stderr_path, 50).find("every process is stopped"), std::string::npos);
  close(launch.stdout_fd);
}

TEST_F(LauncherTest, ChildrenDieWithAKilledLauncher) {
  StoriesYamlOptions yaml;
  yaml.selectors = 1;
  const std::string config = dir_.Write("deployment.yaml", StoriesYaml(yaml));
  const std::string build = StandInBuildDir(dir_);
  LaunchProcess launch = SpawnLaunch({config, "--build-dir", build, "--log-dir", absl::StrCat(dir_.path(), "/logs")},
                                     absl::StrCat(dir_.path(), "/launch.stderr"), {absl::StrCat(kStandInEnv, "=1")});
  std::map<std::string, std::string> lines = ReadEndpoints(launch.stdout_fd);
  ASSERT_EQ(lines.count("grpc"), 1u) << launcher::TailOfFile(launch.stderr_path, 50);
  const std::vector<pid_t> pids = StartedPids(launch.stderr_path);
  ASSERT_EQ(pids.size(), 3u);
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
      << "children outlived a SIGKILLed launcher";
  close(launch.stdout_fd);
}

TEST_F(LauncherTest, LaunchBinaryExitsWithTwoOnABadYamlAndOneOnAFailedStart) {
  const std::string build = StandInBuildDir(dir_);
  const std::string bad = dir_.Write("bad.yaml", "model:\n  path: x\ndecode_workers:\n  replicas: two\n");
  std::string output;
  EXPECT_EQ(RunCommand(absl::StrCat(BinaryDir(), "/asyncspade launch ", bad, " --build-dir ", build, " 2>&1"), &output),
            2);
  EXPECT_NE(output.find("decode_workers.replicas"), std::string::npos) << output;

  output.clear();
  StoriesYamlOptions yaml;
  yaml.startup_timeout_s = 2;
  const std::string slow = dir_.Write("slow.yaml", StoriesYaml(yaml));
  EXPECT_EQ(RunCommand(absl::StrCat("ASYNCSPADE_STANDIN_NEVER_READY=decode-worker-0 ", kStandInEnv, "=1 ", BinaryDir(),
                                    "/asyncspade launch ", slow, " --build-dir ", build, " --log-dir ", dir_.path(),
                                    "/logs 2>&1"),
                       &output),
            1);
  EXPECT_NE(output.find("decode-worker-0 (pid"), std::string::npos) << output;
  EXPECT_EQ(output.find("grpc: "), std::string::npos) << "endpoints printed for a failed launch: " << output;
}

}  // namespace
}  // namespace asyncspade::testing

int main(int argc, char** argv) {
  if (std::optional<int> code = asyncspade::testing::MaybeRunStandInMember(argc, argv); code.has_value()) {
    return *code;
  }
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
