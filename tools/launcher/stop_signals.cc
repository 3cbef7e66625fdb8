#include "tools/launcher/stop_signals.h"

#include <unistd.h>

#include <atomic>
#include <cstring>

namespace asyncspade::launcher {
namespace {

std::atomic<Launcher*> signalled_launcher{nullptr};
std::atomic<const char*> signalled_program{""};
std::atomic<int> signals_received{0};

void WriteLine(const char* a, const char* b) {
  // write(2) only: this runs in a signal handler.
  for (const char* part : {a, b, "\n"}) {
    const ssize_t ignored = write(STDERR_FILENO, part, std::strlen(part));
    (void)ignored;
  }
}

void OnStopSignal(int signal_number) {
  const char* program = signalled_program.load();
  if (signals_received.fetch_add(1) > 0) {
    WriteLine(program, ": already stopping; processes that do not exit in time get SIGKILL");
  } else {
    WriteLine(program, signal_number == SIGINT ? ": SIGINT: stopping every process"
                                               : ": SIGTERM: stopping every process");
  }
  if (Launcher* launcher = signalled_launcher.load(); launcher != nullptr) launcher->RequestStop();
}

}  // namespace

StopSignalHandler::StopSignalHandler(Launcher* launcher, const char* program) {
  signalled_program.store(program);
  signals_received.store(0);
  signalled_launcher.store(launcher);
  struct sigaction action = {};
  action.sa_handler = OnStopSignal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  sigaction(SIGINT, &action, &previous_int_);
  sigaction(SIGTERM, &action, &previous_term_);
}

StopSignalHandler::~StopSignalHandler() {
  sigaction(SIGINT, &previous_int_, nullptr);
  sigaction(SIGTERM, &previous_term_, nullptr);
  signalled_launcher.store(nullptr);
}

}  // namespace asyncspade::launcher
