// asyncspade-decode-worker: a decode worker of a deployment. Loads the model, registers with the
// controller, serves DecodeWorkerService (the controller routes generation requests here) and talks
// to its KV selectors over the data plane. Started by `asyncspade launch`; see docs/processes.md.
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
#include "services/decode_worker/service/decode_worker.h"
#include "tools/cli/member_flags.h"

namespace asyncspade {
namespace {

constexpr int kExitUsage = 2;
constexpr int kExitFailure = 1;

constexpr cli::MemberProgram kProgram = {
    "asyncspade-decode-worker", "decode-worker-0",
    "cpu (default) or GPU ids, e.g. 0,1 (tensor parallel over them; needs a CUDA build)"};

int Run(int argc, char** argv) {
  int exit_code = 0;
  std::optional<cli::MemberFlags> flags = cli::ParseMemberFlags(argc, argv, kProgram, &exit_code);
  if (!flags) return exit_code;
  const DeploymentConfig& deployment = flags->deployment;

  DecodeWorkerOptions options;
  options.deployment = deployment;
  options.controller_address = flags->controller_address;
  options.member_id = flags->member_id;
  options.host = flags->host;
  options.port = flags->port;
  options.devices = flags->devices;
  absl::StatusOr<std::unique_ptr<DecodeWorker>> worker = DecodeWorker::Create(options);
  if (!worker.ok()) {
    std::fprintf(stderr, "asyncspade-decode-worker: %s\n", std::string(worker.status().message()).c_str());
    return kExitUsage;
  }
  if (absl::Status started = (*worker)->Start(); !started.ok()) {
    LOG(ERROR) << "decode worker " << options.member_id << ": " << started.message();
    return kExitFailure;
  }

  const int signal_number = ShutdownSignals::Wait();
  const absl::Duration drain_timeout = absl::Seconds(deployment.lifecycle.drain_timeout_s);
  LOG(INFO) << "decode worker " << options.member_id << ": " << ShutdownSignals::Name(signal_number)
            << ": finishing the requests in flight (up to " << absl::FormatDuration(drain_timeout)
            << "), then deregistering (send the signal again to stop at once)";
  (*worker)->Shutdown(drain_timeout);
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
