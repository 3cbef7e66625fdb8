// `asyncspade launch FILE.yaml`: starts every process of a deployment on this node, prints its
// endpoints once it is ready, supervises it until SIGINT/SIGTERM, then stops everything.
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "tools/cli/args.h"
#include "tools/cli/commands.h"
#include "tools/launcher/launcher.h"
#include "tools/launcher/stop_signals.h"

namespace asyncspade::cli {
namespace {

constexpr int kExitUsage = 2;
constexpr int kExitFailure = 1;

const std::vector<FlagSpec>& LaunchFlags() {
  static const std::vector<FlagSpec> flags = {
      {"build-dir", true, "build directory whose bin/ holds the process binaries (default: this binary's directory)"},
      {"log-dir", true, "directory for one log file per process (default: a new directory under $TMPDIR)"},
      {"help", false, "show this help"},
  };
  return flags;
}

constexpr char kSynopsis[] = "FILE.yaml [--build-dir DIR] [--log-dir DIR]";

void Say(const std::string& message) {
  std::fprintf(stderr, "asyncspade launch: %s\n", message.c_str());
  std::fflush(stderr);
}

int LaunchCommand(int argc, char** argv) {
  int exit_code = 0;
  std::optional<Args> args = ParseCommandArgs(
      argc, argv, "launch", kSynopsis, LaunchFlags(), &exit_code,
      "\nPrints `grpc: HOST:PORT` and `http: http://HOST:PORT` once every process is READY; Ctrl-C or\n"
      "SIGTERM stops every process. docs/operations.md describes supervision and failures.\n");
  if (!args) return exit_code;
  if (args->positional().size() != 1) {
    Say(args->positional().empty() ? "give the deployment YAML, e.g. asyncspade launch deploy/local.yaml"
                                    : absl::StrCat("unexpected argument '", args->positional()[1],
                                                   "'; give exactly one deployment YAML"));
    return kExitUsage;
  }

  launcher::LauncherOptions options;
  options.config_path = args->positional()[0];
  if (auto build_dir = args->Get("build-dir")) options.bin_dir = absl::StrCat(*build_dir, "/bin");
  options.log_dir = args->GetOr("log-dir", "");
  absl::StatusOr<std::unique_ptr<launcher::Launcher>> created = launcher::Launcher::Create(options);
  if (!created.ok()) {
    Say(std::string(created.status().message()));
    return kExitUsage;
  }
  launcher::Launcher& supervisor = **created;
  std::printf("logs: %s\n", supervisor.log_dir().c_str());
  std::fflush(stdout);

  launcher::StopSignalHandler stop_on_signals(&supervisor, "asyncspade launch");

  if (absl::Status started = supervisor.Start(); !started.ok()) {
    if (started.code() == absl::StatusCode::kCancelled) return 0;
    Say(absl::StrCat("launch failed: ", started.message()));
    return kExitFailure;
  }
  const launcher::Endpoints& endpoints = supervisor.endpoints();
  std::printf("grpc: %s\nhttp: %s\n", endpoints.grpc.c_str(), endpoints.http.c_str());
  if (!endpoints.metrics.empty()) std::printf("metrics: %s\n", endpoints.metrics.c_str());
  std::fflush(stdout);
  Say(absl::StrCat("ready: ", supervisor.Processes().size(), " processes; Ctrl-C stops them"));

  const absl::Status ended = supervisor.Wait();
  if (!ended.ok()) {
    Say(absl::StrCat("the deployment failed: ", ended.message()));
    return kExitFailure;
  }
  return 0;
}

}  // namespace

ASYNCSPADE_REGISTER_COMMAND(launch, "start a deployment YAML's processes on this node and supervise them",
                            LaunchCommand);

}  // namespace asyncspade::cli
