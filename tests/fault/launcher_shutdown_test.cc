// The `asyncspade launch` binary with the real processes: SIGTERM stops every process it started
// (no orphans: each pid is checked) and it exits 0; a SIGKILLed launcher takes its children with it
// (PR_SET_PDEATHSIG).
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <map>
#include <regex>

#include "gtest/gtest.h"
#include "tests/integration/test_deployment.h"

extern char** environ;

namespace asyncspade::testing {
namespace {

struct LaunchProcess {
  pid_t pid = 0;
  int stdout_fd = -1;
  std::string stderr_path;
};

LaunchProcess SpawnLaunch(const std::vector<std::string>& args, const std::string& stderr_path) {
  std::vector<std::string> storage = {absl::StrCat(BinaryDir(), "/asyncspade"), "launch"};
  storage.insert(storage.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& s : storage) argv.push_back(s.data());
  argv.push_back(nullptr);
  // TMPDIR: the launcher's own temporary directory lands in the test's, even if it is SIGKILLed.
  std::vector<std::string> env_storage = {
      absl::StrCat("TMPDIR=", std::filesystem::path(stderr_path).parent_path().string())};
  for (char** e = environ; *e != nullptr; ++e) {
    if (std::string(*e).rfind("TMPDIR=", 0) != 0) env_storage.emplace_back(*e);
  }
  std::vector<char*> envp;
  for (std::string& s : env_storage) envp.push_back(s.data());
  envp.push_back(nullptr);
  const int err = open(stderr_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  int out[2];
  EXPECT_EQ(pipe2(out, O_CLOEXEC), 0);
  LaunchProcess p;
  p.stderr_path = stderr_path;
  p.pid = fork();
  if (p.pid == 0) {
    dup2(out[1], STDOUT_FILENO);
    dup2(err, STDERR_FILENO);
    execve(argv[0], argv.data(), envp.data());
    _exit(127);
  }
  close(out[1]);
  close(err);
  p.stdout_fd = out[0];
  return p;
}

std::map<std::string, std::string> ReadEndpoints(int fd) {
  std::map<std::string, std::string> lines;
  std::string buffer;
  char c;
  while (read(fd, &c, 1) == 1) {
    if (c != '\n') {
      buffer.push_back(c);
      continue;
    }
    const size_t colon = buffer.find(": ");
    if (colon != std::string::npos) lines[buffer.substr(0, colon)] = buffer.substr(colon + 2);
    buffer.clear();
    if (lines.count("grpc") > 0 && lines.count("http") > 0) break;
  }
  return lines;
}

std::vector<pid_t> StartedPids(const std::string& stderr_path) {
  std::vector<pid_t> pids;
  const std::string text = launcher::TailOfFile(stderr_path, 1000);
  static const std::regex started(R"(started [a-z0-9-]+ \(pid ([0-9]+))");
  for (auto it = std::sregex_iterator(text.begin(), text.end(), started); it != std::sregex_iterator(); ++it) {
    pids.push_back(std::stoi((*it)[1].str()));
  }
  return pids;
}

int WaitExit(pid_t pid, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    absl::SleepFor(absl::Milliseconds(20));
  }
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
  return -1;
}

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
