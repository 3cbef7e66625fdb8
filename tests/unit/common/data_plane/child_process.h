// Helpers for data-plane tests that need a second, real process: fork() a child that runs a
// function and exits with its result, and a unique temporary directory for the shared store.
#pragma once

#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <functional>
#include <string>
#include <system_error>

#include "tests/test_paths.h"

namespace asyncspade::data_plane::testing {

// In a child, a failed check prints where and why and makes the child exit non-zero (GoogleTest
// assertions would report in the wrong process).
#define CHILD_CHECK(condition, message)                                                   \
  do {                                                                                    \
    if (!(condition)) {                                                                   \
      std::fprintf(stderr, "child %d: %s:%d: check failed: %s: %s\n", ::getpid(),         \
                   __FILE__, __LINE__, #condition, std::string(message).c_str());        \
      return 1;                                                                           \
    }                                                                                     \
  } while (0)

class ChildProcess {
 public:
  // Forks; the child runs `body` and _exit()s with its return value (2 if it threw). Call it
  // before the parent starts threads of its own: only the forking thread survives in the child.
  static ChildProcess Fork(const std::function<int()>& body) {
    std::fflush(nullptr);
    const pid_t pid = ::fork();
    if (pid == 0) {
      int code = 2;
      try {
        code = body();
      } catch (const std::exception& e) {
        std::fprintf(stderr, "child %d threw: %s\n", ::getpid(), e.what());
      }
      std::fflush(nullptr);
      ::_exit(code);
    }
    return ChildProcess(pid);
  }

  ChildProcess(ChildProcess&& other) noexcept : pid_(other.pid_) { other.pid_ = -1; }
  ChildProcess(const ChildProcess&) = delete;
  // A child still running when the test ends (a failed assertion) must not outlive it.
  ~ChildProcess() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      Wait();
    }
  }

  pid_t pid() const { return pid_; }
  bool started() const { return pid_ > 0; }
  void Signal(int signal) const { ::kill(pid_, signal); }

  // The exit code, or 128 + the signal that ended the child.
  int Wait() {
    if (pid_ <= 0) return -1;
    int status = 0;
    while (::waitpid(pid_, &status, 0) < 0) {
      if (errno != EINTR) return -1;
    }
    pid_ = -1;
    if (WIFEXITED(status)) return WEXITSTATUS(status);
    if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
    return -1;
  }

 private:
  explicit ChildProcess(pid_t pid) : pid_(pid) {}
  pid_t pid_;
};

using ::asyncspade::testing::TempDir;  // tests/test_paths.h

}  // namespace asyncspade::data_plane::testing
