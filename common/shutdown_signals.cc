#include "common/shutdown_signals.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdlib>

#include "glog/logging.h"

namespace asyncspade {
namespace {

int g_pipe[2] = {-1, -1};
std::atomic<int> g_signals_seen{0};

void OnShutdownSignal(int signal_number) {
  const int saved_errno = errno;
  if (g_signals_seen.fetch_add(1) >= 1) {
    constexpr char kMessage[] = "second shutdown signal: exiting at once\n";
    (void)!write(STDERR_FILENO, kMessage, sizeof(kMessage) - 1);
    _exit(1);
  }
  const unsigned char byte = static_cast<unsigned char>(signal_number);
  (void)!write(g_pipe[1], &byte, 1);
  errno = saved_errno;
}

}  // namespace

void ShutdownSignals::Install() {
  CHECK_EQ(pipe2(g_pipe, O_CLOEXEC), 0) << "pipe2 failed";
  struct sigaction action = {};
  action.sa_handler = OnShutdownSignal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  CHECK_EQ(sigaction(SIGINT, &action, nullptr), 0);
  CHECK_EQ(sigaction(SIGTERM, &action, nullptr), 0);
  // Threads created earlier may have blocked the signals in their own masks; make sure this one
  // (and every thread it creates from here on) can take them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_UNBLOCK, &signals, nullptr);
}

int ShutdownSignals::Wait() {
  CHECK_GE(g_pipe[0], 0) << "ShutdownSignals::Install() was not called";
  unsigned char byte = 0;
  while (true) {
    const ssize_t n = read(g_pipe[0], &byte, 1);
    if (n == 1) return byte;
    if (n < 0 && errno == EINTR) continue;
    PLOG(FATAL) << "reading the shutdown-signal pipe";
  }
}

const char* ShutdownSignals::Name(int signal_number) {
  return signal_number == SIGINT ? "SIGINT" : signal_number == SIGTERM ? "SIGTERM" : "signal";
}

}  // namespace asyncspade
