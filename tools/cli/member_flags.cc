#include "tools/cli/member_flags.h"

#include <cstdio>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "tools/cli/args.h"

namespace asyncspade::cli {
namespace {

constexpr int kExitUsage = 2;

std::vector<FlagSpec> Flags(const MemberProgram& program) {
  return {
      {"config", true, "deployment YAML (required; the same file the launcher and controller use)"},
      {"controller", true, "HOST:PORT of the controller's gRPC endpoint (required)"},
      {"id", true, absl::StrCat("member id, unique in the deployment (required), e.g. ", program.example_id)},
      {"host", true, "address to listen on for gRPC and the data plane (default 127.0.0.1)"},
      {"port", true, "gRPC port (default 0: any free port)"},
      {"devices", true, program.devices_help},
      {"help", false, "print this help"},
  };
}

std::string Usage(const MemberProgram& program, const std::vector<FlagSpec>& flags) {
  return absl::StrCat("usage: ", program.name, " --config FILE.yaml --controller HOST:PORT --id NAME [flags]\n",
                      Args::FlagHelp(flags));
}

}  // namespace

std::optional<MemberFlags> ParseMemberFlags(int argc, char** argv, const MemberProgram& program,
                                            int* exit_code) {
  const std::vector<FlagSpec> flags = Flags(program);
  *exit_code = kExitUsage;
  absl::StatusOr<Args> args = Args::Parse(argc, argv, 1, flags);
  if (!args.ok()) {
    std::fprintf(stderr, "%s: %s\n%s", program.name, std::string(args.status().message()).c_str(),
                 Usage(program, flags).c_str());
    return std::nullopt;
  }
  if (args->Has("help")) {
    std::fputs(Usage(program, flags).c_str(), stdout);
    *exit_code = 0;
    return std::nullopt;
  }
  for (const char* required : {"config", "controller", "id"}) {
    if (!args->Has(required)) {
      std::fprintf(stderr, "%s: --%s is required\n%s", program.name, required, Usage(program, flags).c_str());
      return std::nullopt;
    }
  }
  if (!args->positional().empty()) {
    std::fprintf(stderr, "%s: unexpected argument '%s'\n%s", program.name, args->positional()[0].c_str(),
                 Usage(program, flags).c_str());
    return std::nullopt;
  }
  absl::StatusOr<std::optional<int64_t>> port = args->GetInt("port");
  if (!port.ok() || (port->has_value() && (**port < 0 || **port > 65535))) {
    std::fprintf(stderr, "%s: --port must be a port number in [0, 65535]\n", program.name);
    return std::nullopt;
  }
  absl::StatusOr<DeploymentConfig> deployment = LoadDeploymentConfig(*args->Get("config"));
  if (!deployment.ok()) {
    std::fprintf(stderr, "%s: %s\n", program.name, std::string(deployment.status().message()).c_str());
    return std::nullopt;
  }
  MemberFlags parsed;
  parsed.deployment = *std::move(deployment);
  parsed.controller_address = *args->Get("controller");
  parsed.member_id = *args->Get("id");
  parsed.host = args->GetOr("host", "127.0.0.1");
  parsed.port = static_cast<int>(port->value_or(0));
  parsed.devices = absl::StrSplit(args->GetOr("devices", "cpu"), ',', absl::SkipEmpty());
  return parsed;
}

}  // namespace asyncspade::cli
