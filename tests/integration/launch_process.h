// The `asyncspade launch` binary as a child process of a test: spawn it with its stdout on a pipe
// and its stderr in a file, read the endpoint lines it prints, find the pids it reports, wait for
// it to exit. Shared by tests/integration/launcher_test.cc (stand-in members) and
// tests/fault/launcher_shutdown_test.cc (real processes).
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <map>
#include <regex>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "tests/integration/test_deployment.h"

extern char** environ;

namespace asyncspade::testing {

struct LaunchProcess {
  pid_t pid = 0;
  int stdout_fd = -1;
  std::string stderr_path;
};

// Starts `asyncspade launch ARGS...` with this process's environment plus `extra_env`
// ("NAME=value"). TMPDIR points at stderr_path's folder, so the launcher's own temporary
// directory lands in the test's even if it is SIGKILLed.
inline LaunchProcess SpawnLaunch(const std::vector<std::string>& args, const std::string& stderr_path,
                                 const std::vector<std::string>& extra_env = {}) {
  // Everything is prepared before fork: the child of a threaded process may only exec.
  std::vector<std::string> storage = {absl::StrCat(BinaryDir(), "/asyncspade"), "launch"};
  storage.insert(storage.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& s : storage) argv.push_back(s.data());
  argv.push_back(nullptr);
  std::vector<std::string> env_storage = extra_env;
  env_storage.push_back(
      absl::StrCat("TMPDIR=", std::filesystem::path(stderr_path).parent_path().string()));
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

// Reads stdout lines until `grpc:` and `http:` are seen (or EOF); returns the lines.
inline std::map<std::string, std::string> ReadEndpoints(int fd) {
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

// The pids of the processes the launcher reported as started, from its stderr.
inline std::vector<pid_t> StartedPids(const std::string& stderr_path) {
  std::vector<pid_t> pids;
  const std::string text = launcher::TailOfFile(stderr_path, 1000);
  static const std::regex started(R"(started [a-z0-9-]+ \(pid ([0-9]+))");
  for (auto it = std::sregex_iterator(text.begin(), text.end(), started); it != std::sregex_iterator(); ++it) {
    pids.push_back(std::stoi((*it)[1].str()));
  }
  return pids;
}

// The exit code (128 + signal for a signal), or −1 after SIGKILLing a process still running at
// the timeout.
inline int WaitExit(pid_t pid, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid) {
      return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
  return -1;
}

}  // namespace asyncspade::testing
