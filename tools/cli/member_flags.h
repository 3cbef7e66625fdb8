// The command line of the member processes a deployment launches, asyncspade-decode-worker and
// asyncspade-kv-selector: --config FILE.yaml --controller HOST:PORT --id NAME [--host H]
// [--port P] [--devices cpu|0,1] [--help]. See docs/processes.md.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "common/config/deployment_config.h"

namespace asyncspade::cli {

// What differs between the member programs.
struct MemberProgram {
  const char* name;          // e.g. "asyncspade-decode-worker": usage line and message prefix
  const char* example_id;    // e.g. "decode-worker-0", in --id's help
  const char* devices_help;  // --devices' help
};

struct MemberFlags {
  DeploymentConfig deployment;  // --config, loaded and validated
  std::string controller_address;
  std::string member_id;
  std::string host;  // default 127.0.0.1
  int port = 0;      // 0: any free port
  std::vector<std::string> devices;  // default {"cpu"}
};

// Parses argv[1..argc). nullopt with *exit_code set when the process should exit now: 0 after
// --help (usage on stdout), 2 after a usage error or a deployment file that does not load (the
// message, with the usage for flag errors, on stderr).
std::optional<MemberFlags> ParseMemberFlags(int argc, char** argv, const MemberProgram& program,
                                            int* exit_code);

}  // namespace asyncspade::cli
