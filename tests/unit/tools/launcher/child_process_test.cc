#include "tools/launcher/child_process.h"

#include <signal.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace asyncspade::launcher {
namespace {

namespace fs = std::filesystem;

class ChildProcessTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (fs::temp_directory_path() / "child-process-test-XXXXXX").string();
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }
  void TearDown() override {
    std::error_code ignored;
    fs::remove_all(dir_, ignored);
  }
  ChildSpec Shell(const std::string& script) {
    ChildSpec spec;
    spec.program = "/bin/sh";
    spec.args = {"-c", script};
    spec.log_path = absl::StrCat(dir_, "/child.log");
    return spec;
  }
  std::string dir_;
};

TEST_F(ChildProcessTest, ReportsTheExitCodeAndAppendsOutputToTheLog) {
  auto child = ChildProcess::Start(Shell("echo to-stdout; echo to-stderr >&2; exit 7"));
  ASSERT_TRUE(child.ok()) << child.status();
  std::optional<ExitStatus> status = (*child)->WaitFor(10000);
  ASSERT_TRUE(status.has_value());
  EXPECT_FALSE(status->signaled);
  EXPECT_EQ(status->code, 7);
  EXPECT_FALSE(status->success());
  EXPECT_EQ(status->Describe(), "exit code 7");

  auto again = ChildProcess::Start(Shell("echo second-run"));
  ASSERT_TRUE(again.ok());
  ASSERT_TRUE((*again)->WaitFor(10000).has_value());
  const std::string log = TailOfFile(absl::StrCat(dir_, "/child.log"), 100);
  EXPECT_NE(log.find("==== "), std::string::npos) << log;
  EXPECT_NE(log.find("to-stdout\nto-stderr\n"), std::string::npos) << log;
  EXPECT_NE(log.find("second-run"), std::string::npos) << "the log was truncated on restart: " << log;
}

TEST_F(ChildProcessTest, ReportsTheSignalThatKilledIt) {
  auto child = ChildProcess::Start(Shell("sleep 30"));
  ASSERT_TRUE(child.ok());
  EXPECT_TRUE((*child)->running());
  (*child)->Signal(SIGKILL);
  std::optional<ExitStatus> status = (*child)->WaitFor(10000);
  ASSERT_TRUE(status.has_value());
  EXPECT_TRUE(status->signaled);
  EXPECT_EQ(status->code, SIGKILL);
  EXPECT_EQ(status->Describe(), "signal 9 (SIGKILL)");
}

TEST_F(ChildProcessTest, ChildrenGetTheDefaultSignalMaskAndTheirOwnProcessGroup) {
  sigset_t blocked, previous;
  sigemptyset(&blocked);
  sigaddset(&blocked, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &blocked, &previous);
  auto child = ChildProcess::Start(Shell("sleep 30"));
  pthread_sigmask(SIG_SETMASK, &previous, nullptr);
  ASSERT_TRUE(child.ok());
  EXPECT_EQ(getpgid((*child)->pid()), (*child)->pid()) << "not in its own process group";
  EXPECT_NE(getpgid((*child)->pid()), getpgrp());
  (*child)->Signal(SIGTERM);  // would be ignored if the launcher's blocked mask leaked into the child
  std::optional<ExitStatus> status = (*child)->WaitFor(10000);
  ASSERT_TRUE(status.has_value());
  EXPECT_TRUE(status->signaled);
  EXPECT_EQ(status->code, SIGTERM);
}

TEST_F(ChildProcessTest, AddsEnvironmentVariables) {
  ChildSpec spec = Shell("echo \"value=$ASYNCSPADE_CHILD_TEST\"");
  spec.extra_env = {{"ASYNCSPADE_CHILD_TEST", "forty-two"}};
  auto child = ChildProcess::Start(spec);
  ASSERT_TRUE(child.ok());
  ASSERT_TRUE((*child)->WaitFor(10000).has_value());
  EXPECT_NE(TailOfFile(spec.log_path, 10).find("value=forty-two"), std::string::npos);
}

TEST_F(ChildProcessTest, MissingProgramOrLogDirectoryIsAnErrorNamingIt) {
  ChildSpec spec = Shell("true");
  spec.program = "/nonexistent/program";
  auto missing = ChildProcess::Start(spec);
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("/nonexistent/program"), std::string::npos);

  spec = Shell("true");
  spec.log_path = "/nonexistent-dir/child.log";
  auto no_log = ChildProcess::Start(spec);
  ASSERT_FALSE(no_log.ok());
  EXPECT_NE(no_log.status().message().find("/nonexistent-dir/child.log"), std::string::npos);
}

TEST_F(ChildProcessTest, DestroyingARunningChildKillsAndReapsIt) {
  pid_t pid = 0;
  {
    auto child = ChildProcess::Start(Shell("sleep 30"));
    ASSERT_TRUE(child.ok());
    pid = (*child)->pid();
  }
  EXPECT_NE(kill(pid, 0), 0) << "pid " << pid << " still exists (alive or unreaped)";
}

TEST(TailOfFileTest, KeepsTheLastLines) {
  const std::string path = (fs::temp_directory_path() / "tail_of_file_test.txt").string();
  {
    std::ofstream out(path);
    for (int i = 1; i <= 50; ++i) out << "line " << i << "\n";
  }
  EXPECT_EQ(TailOfFile(path, 3), "line 48\nline 49\nline 50\n");
  EXPECT_EQ(TailOfFile("/nonexistent/file", 3), "");
  fs::remove(path);
}

}  // namespace
}  // namespace asyncspade::launcher
