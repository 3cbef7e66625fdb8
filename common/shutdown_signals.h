// SIGINT/SIGTERM handling for our long-running processes. The first signal asks for a clean
// shutdown (drain, deregister); a second one exits at once.
//
// Why a handler and not the usual "block the signals, sigwait in main" pattern: libraries start
// threads before main() runs (OpenBLAS creates its thread pool from a library constructor) with the
// signals unblocked, and the kernel may deliver a process-directed signal to any such thread, whose
// default action kills the process without cleanup. A process-wide handler is called whichever
// thread receives the signal; it only writes to a pipe, which Wait() reads.
#pragma once

namespace asyncspade {

class ShutdownSignals {
 public:
  // Installs the handlers. Call once, early in main().
  static void Install();
  // Blocks until the first SIGINT or SIGTERM and returns its number. From then on, another
  // SIGINT/SIGTERM ends the process immediately with exit code 1.
  static int Wait();
  // "SIGINT" / "SIGTERM".
  static const char* Name(int signal_number);
};

}  // namespace asyncspade
