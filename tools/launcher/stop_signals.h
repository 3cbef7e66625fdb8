// SIGINT/SIGTERM -> Launcher::RequestStop() for the CLI commands that own a deployment (`launch`,
// `demo`). A signal handler rather than a sigwait thread: threads that exist before main() (OpenBLAS
// starts its pool when the library loads) do not block the signals, so the kernel may deliver them
// to such a thread, whose default action would kill the launcher without stopping its children.
#pragma once

#include <csignal>

#include "tools/launcher/launcher.h"

namespace asyncspade::launcher {

class StopSignalHandler {
 public:
  // `program` prefixes the one line written per signal ("asyncspade launch"). One at a time.
  StopSignalHandler(Launcher* launcher, const char* program);
  ~StopSignalHandler();  // restores the previous handlers
  StopSignalHandler(const StopSignalHandler&) = delete;
  StopSignalHandler& operator=(const StopSignalHandler&) = delete;

 private:
  struct sigaction previous_int_ = {};
  struct sigaction previous_term_ = {};
};

}  // namespace asyncspade::launcher
