// asyncspade-kv-selector: a KV selector of a deployment. Registers with the controller, serves
// KvSelectorService and answers the decode workers' selection requests over the data plane.
// Started by `asyncspade launch`; see docs/processes.md.
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include <pthread.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/config/deployment_config.h"
#include "common/shutdown_signals.h"
#include "glog/logging.h"
#include "kernels/gemm.h"
#include "services/kv_selector/service/kv_selector.h"
#include "tools/cli/args.h"

namespace asyncspade {
namespace {

constexpr int kExitUsage = 2;
constexpr int kExitFailure = 1;

const std::vector<cli::FlagSpec>& Flags() {
  static const std::vector<cli::FlagSpec> flags = {
      {"config", true, "deployment YAML (required; the same file the launcher and controller use)"},
      {"controller", true, "HOST:PORT of the controller's gRPC endpoint (required)"},
      {"id", true, "member id, unique in the deployment (required), e.g. selector-0"},
      {"host", true, "address to listen on for gRPC and the data plane (default 127.0.0.1)"},
      {"port", true, "gRPC port (default 0: any free port)"},
      {"devices", true, "cpu (default) or GPU ids; this build serves on the CPU"},
      {"help", false, "print this help"},
  };
  return flags;
}

std::string Usage() {
  std::string out = "usage: asyncspade-kv-selector --config FILE.yaml --controller HOST:PORT --id NAME [flags]\n";
  for (const cli::FlagSpec& f : Flags()) {
    absl::StrAppend(&out, "  --", f.name, f.takes_value ? " VALUE" : "", "\n      ", f.help, "\n");
  }
  return out;
}

int Run(int argc, char** argv) {
  absl::StatusOr<cli::Args> args = cli::Args::Parse(argc, argv, 1, Flags());
  if (!args.ok()) {
    std::fprintf(stderr, "asyncspade-kv-selector: %s\n%s", std::string(args.status().message()).c_str(), Usage().c_str());
    return kExitUsage;
  }
  if (args->Has("help")) {
    std::fputs(Usage().c_str(), stdout);
    return 0;
  }
  for (const char* required : {"config", "controller", "id"}) {
    if (!args->Has(required)) {
      std::fprintf(stderr, "asyncspade-kv-selector: --%s is required\n%s", required, Usage().c_str());
      return kExitUsage;
    }
  }
  if (!args->positional().empty()) {
    std::fprintf(stderr, "asyncspade-kv-selector: unexpected argument '%s'\n%s", args->positional()[0].c_str(),
                 Usage().c_str());
    return kExitUsage;
  }
  absl::StatusOr<std::optional<int64_t>> port = args->GetInt("port");
  if (!port.ok() || (port->has_value() && (**port < 0 || **port > 65535))) {
    std::fprintf(stderr, "asyncspade-kv-selector: --port must be a port number in [0, 65535]\n");
    return kExitUsage;
  }
  absl::StatusOr<DeploymentConfig> deployment = LoadDeploymentConfig(*args->Get("config"));
  if (!deployment.ok()) {
    std::fprintf(stderr, "asyncspade-kv-selector: %s\n", std::string(deployment.status().message()).c_str());
    return kExitUsage;
  }

  KvSelectorOptions options;
  options.controller_address = *args->Get("controller");
  options.member_id = *args->Get("id");
  options.host = args->GetOr("host", "127.0.0.1");
  options.port = static_cast<int>(port->value_or(0));
  options.devices = absl::StrSplit(args->GetOr("devices", "cpu"), ',', absl::SkipEmpty());
  options.register_timeout = absl::Seconds(deployment->lifecycle.startup_timeout_s);
  absl::StatusOr<std::unique_ptr<KvSelector>> selector = KvSelector::Create(options);
  if (!selector.ok()) {
    std::fprintf(stderr, "asyncspade-kv-selector: %s\n", std::string(selector.status().message()).c_str());
    return kExitUsage;
  }
  if (absl::Status started = (*selector)->Start(); !started.ok()) {
    LOG(ERROR) << "selector " << options.member_id << ": " << started.message();
    return kExitFailure;
  }

  // SIGINT/SIGTERM were blocked before any thread started; wait for one here.
  const int signal_number = ShutdownSignals::Wait();
  LOG(INFO) << "selector " << options.member_id << ": " << ShutdownSignals::Name(signal_number)
            << ": closing links and deregistering (send the signal again to stop at once)";
  (*selector)->Shutdown();
  return 0;
}

}  // namespace
}  // namespace asyncspade

int main(int argc, char** argv) {
  asyncspade::kernels::cpu::ReexecWithTunedBlasIfNeeded(argv);
  google::InitGoogleLogging(argv[0]);
  FLAGS_logtostderr = true;
  asyncspade::ShutdownSignals::Install();
  return asyncspade::Run(argc, argv);
}
