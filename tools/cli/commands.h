// Each subcommand of `asyncspade` is one function, defined in `cmd_<name>.cc`, that receives the
// arguments after the subcommand name and returns the process exit code.
#pragma once

#include <string>
#include <vector>

namespace asyncspade::cli {

struct Command {
  const char* name;
  const char* summary;
  int (*run)(int argc, char** argv);  // argv[0] is the subcommand name
};

// Commands register themselves from their own translation unit:
//   ASYNCSPADE_REGISTER_COMMAND(run, "offline single-process generation", RunCommand);
std::vector<Command>& CommandRegistry();
struct CommandRegistrar {
  CommandRegistrar(const char* name, const char* summary, int (*run)(int, char**)) {
    CommandRegistry().push_back({name, summary, run});
  }
};
#define ASYNCSPADE_REGISTER_COMMAND(name, summary, fn) \
  static ::asyncspade::cli::CommandRegistrar asyncspade_cmd_##name(#name, summary, fn)

}  // namespace asyncspade::cli
