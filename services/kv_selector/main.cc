// asyncspade-kv-selector: a KV selector of a deployment. Registers with the controller, serves
// KvSelectorService and answers the decode workers' selection requests over the data plane.
// Started by `asyncspade launch`; see docs/processes.md.
#include <cstdio>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <pthread.h>

#include "common/config/deployment_config.h"
#include "common/shutdown_signals.h"
#include "glog/logging.h"
#include "kernels/gemm.h"
#include "services/kv_selector/service/kv_selector.h"
#include "tools/cli/member_flags.h"

namespace asyncspade {
namespace {

constexpr int kExitUsage = 2;
constexpr int kExitFailure = 1;

constexpr cli::MemberProgram kProgram = {"asyncspade-kv-selector", "selector-0",
                                         "cpu (default) or GPU ids; this build serves on the CPU"};

int Run(int argc, char** argv) {
  int exit_code = 0;
  std::optional<cli::MemberFlags> flags = cli::ParseMemberFlags(argc, argv, kProgram, &exit_code);
  if (!flags) return exit_code;

  KvSelectorOptions options;
  options.controller_address = flags->controller_address;
  options.member_id = flags->member_id;
  options.host = flags->host;
  options.port = flags->port;
  options.devices = flags->devices;
  options.register_timeout = absl::Seconds(flags->deployment.lifecycle.startup_timeout_s);
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
