// `asyncspade <command> [flags]`: dispatches to the subcommands registered in cmd_*.cc.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "glog/logging.h"
#include "kernels/gemm.h"
#include "tools/cli/commands.h"

namespace asyncspade::cli {
std::vector<Command>& CommandRegistry() {
  static std::vector<Command> registry;
  return registry;
}
}  // namespace asyncspade::cli

int main(int argc, char** argv) {
  asyncspade::kernels::cpu::ReexecWithTunedBlasIfNeeded(argv);
  google::InitGoogleLogging(argv[0]);
  FLAGS_logtostderr = true;
  FLAGS_minloglevel = 1;  // warnings and errors only, unless ASYNCSPADE_VERBOSE is set
  if (std::getenv("ASYNCSPADE_VERBOSE") != nullptr) FLAGS_minloglevel = 0;
  auto& registry = asyncspade::cli::CommandRegistry();
  std::sort(registry.begin(), registry.end(),
            [](const auto& a, const auto& b) { return std::strcmp(a.name, b.name) < 0; });
  if (argc >= 2) {
    for (const auto& cmd : registry) {
      if (std::strcmp(argv[1], cmd.name) == 0) return cmd.run(argc - 1, argv + 1);
    }
  }
  bool asked = argc >= 2 && (std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "help") == 0);
  std::FILE* out = asked ? stdout : stderr;
  if (argc >= 2 && !asked) std::fprintf(out, "asyncspade: unknown command '%s'\n\n", argv[1]);
  std::fprintf(out, "usage: asyncspade <command> [flags]   (asyncspade <command> --help for flags)\n\ncommands:\n");
  for (const auto& cmd : registry) std::fprintf(out, "  %-10s %s\n", cmd.name, cmd.summary);
  return asked ? 0 : 2;
}
