// One supervised child process of a deployment: started with fork/exec, its stdout and stderr
// appended to a log file, in its own process group (a Ctrl-C in the terminal reaches only the
// launcher, which then stops the children in order), and killed by the kernel if the thread that
// started it dies (PR_SET_PDEATHSIG), so a crashed launcher leaves no orphans.
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace asyncspade::launcher {

// How a process ended.
struct ExitStatus {
  bool signaled = false;  // killed by a signal (`code` is the signal number), else exited with `code`
  int code = 0;

  bool success() const { return !signaled && code == 0; }
  // "exit code 1" or "signal 9 (SIGKILL)".
  std::string Describe() const;
};

struct ChildSpec {
  std::string program;            // absolute path of the executable
  std::vector<std::string> args;  // without argv[0]
  std::string log_path;           // stdout and stderr are appended here
  // Added to (or replacing entries of) the launcher's environment.
  std::vector<std::pair<std::string, std::string>> extra_env;
};

class ChildProcess {
 public:
  // Starts the process. The calling thread must outlive it: the kernel delivers the parent-death
  // signal when the *thread* that forked exits. Fails when the program is not executable or the log
  // cannot be opened; an exec failure in the child shows in the log and as exit code 127.
  static absl::StatusOr<std::unique_ptr<ChildProcess>> Start(const ChildSpec& spec);

  ~ChildProcess();  // kills (SIGKILL) and reaps the process if it is still running
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  pid_t pid() const { return pid_; }
  const ChildSpec& spec() const { return spec_; }

  // Reaps the process if it has ended (never blocks). Returns its exit status once it has ended.
  std::optional<ExitStatus> Poll();
  // Waits up to `timeout_ms` for the process to end; returns its exit status if it did.
  std::optional<ExitStatus> WaitFor(int timeout_ms);
  bool running() { return !Poll().has_value(); }

  // Sends `signal` to the process (no-op once it has been reaped).
  void Signal(int signal);

 private:
  ChildProcess(ChildSpec spec, pid_t pid) : spec_(std::move(spec)), pid_(pid) {}

  ChildSpec spec_;
  pid_t pid_;
  std::optional<ExitStatus> exit_status_;
};

// The last `max_lines` lines of a text file ("" when it cannot be read); for error reports.
std::string TailOfFile(const std::string& path, int max_lines);

// The name of a signal: "SIGKILL" (or "signal N" when unknown).
std::string SignalName(int signal);

}  // namespace asyncspade::launcher
