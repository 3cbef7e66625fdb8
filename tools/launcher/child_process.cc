#include "tools/launcher/child_process.h"

#include <fcntl.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstring>
#include <ctime>
#include <deque>
#include <fstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

extern char** environ;

namespace asyncspade::launcher {

std::string SignalName(int signal) {
  switch (signal) {
    case SIGHUP: return "SIGHUP";
    case SIGINT: return "SIGINT";
    case SIGQUIT: return "SIGQUIT";
    case SIGILL: return "SIGILL";
    case SIGTRAP: return "SIGTRAP";
    case SIGABRT: return "SIGABRT";
    case SIGBUS: return "SIGBUS";
    case SIGFPE: return "SIGFPE";
    case SIGKILL: return "SIGKILL";
    case SIGUSR1: return "SIGUSR1";
    case SIGSEGV: return "SIGSEGV";
    case SIGUSR2: return "SIGUSR2";
    case SIGPIPE: return "SIGPIPE";
    case SIGALRM: return "SIGALRM";
    case SIGTERM: return "SIGTERM";
    default: return absl::StrCat("signal ", signal);
  }
}

std::string ExitStatus::Describe() const {
  if (signaled) return absl::StrCat("signal ", code, " (", SignalName(code), ")");
  return absl::StrCat("exit code ", code);
}

namespace {

std::optional<ExitStatus> FromWaitStatus(int status) {
  if (WIFEXITED(status)) return ExitStatus{false, WEXITSTATUS(status)};
  if (WIFSIGNALED(status)) return ExitStatus{true, WTERMSIG(status)};
  return std::nullopt;  // stopped/continued: still alive
}

// Writes without allocating: the child between fork and exec may only call async-signal-safe code.
void WriteAll(int fd, const char* text) {
  size_t left = std::strlen(text);
  while (left > 0) {
    ssize_t n = write(fd, text, left);
    if (n <= 0) return;
    text += n;
    left -= static_cast<size_t>(n);
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<ChildProcess>> ChildProcess::Start(const ChildSpec& spec) {
  if (access(spec.program.c_str(), X_OK) != 0) {
    return absl::NotFoundError(absl::StrCat("cannot execute '", spec.program, "': ", std::strerror(errno)));
  }
  const int log_fd = open(spec.log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log_fd < 0) {
    return absl::UnavailableError(absl::StrCat("cannot open the log file '", spec.log_path, "': ",
                                               std::strerror(errno), "; is the log directory writable?"));
  }
  {
    // A header per start, so that the restarts of one process are told apart in its log.
    const std::time_t now = std::time(nullptr);
    std::tm local{};
    localtime_r(&now, &local);
    char when[64];
    std::strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S", &local);
    std::string header = absl::StrCat("==== ", when, ": starting ", spec.program);
    for (const std::string& a : spec.args) absl::StrAppend(&header, " ", a);
    absl::StrAppend(&header, "\n");
    WriteAll(log_fd, header.c_str());
  }

  // Everything the child needs is prepared before fork: after it, only async-signal-safe calls.
  std::vector<std::string> argv_storage;
  argv_storage.push_back(spec.program);
  argv_storage.insert(argv_storage.end(), spec.args.begin(), spec.args.end());
  std::vector<char*> argv;
  for (std::string& a : argv_storage) argv.push_back(a.data());
  argv.push_back(nullptr);

  std::vector<std::string> env_storage;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    const std::string entry(*e);
    bool replaced = false;
    for (const auto& [name, value] : spec.extra_env) {
      if (entry.compare(0, name.size() + 1, absl::StrCat(name, "=")) == 0) replaced = true;
    }
    if (!replaced) env_storage.push_back(entry);
  }
  for (const auto& [name, value] : spec.extra_env) env_storage.push_back(absl::StrCat(name, "=", value));
  std::vector<char*> envp;
  for (std::string& e : env_storage) envp.push_back(e.data());
  envp.push_back(nullptr);
  const std::string exec_failed = absl::StrCat("launcher: exec '", spec.program, "' failed\n");
  const pid_t launcher_pid = getpid();

  const pid_t pid = fork();
  if (pid < 0) {
    const int error = errno;
    close(log_fd);
    return absl::ResourceExhaustedError(absl::StrCat("fork for '", spec.program, "' failed: ", std::strerror(error)));
  }
  if (pid == 0) {
    // The child. Die with the launcher (even a SIGKILLed one); if it died before prctl took
    // effect, exit now.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != launcher_pid) _exit(1);
    setpgid(0, 0);
    // The launcher blocks SIGINT/SIGTERM for its own signal thread and gRPC may ignore SIGPIPE:
    // both survive exec, so give the program the defaults it expects.
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    for (int s : {SIGINT, SIGTERM, SIGPIPE, SIGCHLD, SIGHUP, SIGQUIT}) signal(s, SIG_DFL);
    const int null_fd = open("/dev/null", O_RDONLY);
    if (null_fd >= 0) dup2(null_fd, STDIN_FILENO);
    dup2(log_fd, STDOUT_FILENO);
    dup2(log_fd, STDERR_FILENO);
    close_range(3, ~0U, 0);
    execve(argv[0], argv.data(), envp.data());
    WriteAll(STDERR_FILENO, exec_failed.c_str());
    _exit(127);
  }
  // Also here, so that the group exists when Start returns, whichever of the two runs first.
  setpgid(pid, pid);
  close(log_fd);
  return std::unique_ptr<ChildProcess>(new ChildProcess(spec, pid));
}

ChildProcess::~ChildProcess() {
  if (exit_status_.has_value()) return;
  kill(pid_, SIGKILL);
  int status = 0;
  while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
  }
}

std::optional<ExitStatus> ChildProcess::Poll() {
  if (exit_status_.has_value()) return exit_status_;
  int status = 0;
  const pid_t r = waitpid(pid_, &status, WNOHANG);
  if (r == pid_) {
    exit_status_ = FromWaitStatus(status);
  } else if (r < 0 && errno == ECHILD) {
    // Reaped elsewhere (should not happen: only this object waits for its pid).
    exit_status_ = ExitStatus{false, -1};
  }
  return exit_status_;
}

std::optional<ExitStatus> ChildProcess::WaitFor(int timeout_ms) {
  const absl::Time deadline = absl::Now() + absl::Milliseconds(timeout_ms);
  while (true) {
    if (auto status = Poll(); status.has_value()) return status;
    if (absl::Now() >= deadline) return std::nullopt;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

void ChildProcess::Signal(int signal) {
  if (Poll().has_value()) return;  // reaped: the pid may belong to someone else by now
  kill(pid_, signal);
}

std::string TailOfFile(const std::string& path, int max_lines) {
  std::ifstream in(path);
  if (!in) return "";
  std::deque<std::string> lines;
  std::string line;
  while (std::getline(in, line)) {
    lines.push_back(std::move(line));
    if (static_cast<int>(lines.size()) > max_lines) lines.pop_front();
  }
  std::string out;
  for (const std::string& l : lines) absl::StrAppend(&out, l, "\n");
  return out;
}

}  // namespace asyncspade::launcher
