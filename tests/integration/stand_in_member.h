// A stand-in for asyncspade-decode-worker and asyncspade-kv-selector, so the launcher's supervision
// can be tested in seconds and without a model: the test binary, re-executed by the launcher with
// the members' flags (--config --controller --id --host --port --devices), registers with the real
// controller, heartbeats READY, accepts assignments/links and drain, and exits on SIGTERM.
//
// Behaviour per member id, from the environment (a comma-separated list of ids each):
//   ASYNCSPADE_STANDIN_NEVER_READY    stays STARTING
//   ASYNCSPADE_STANDIN_FAIL_AT_START  exits with code 3 at once
//   ASYNCSPADE_STANDIN_IGNORE_SIGTERM ignores SIGTERM (the launcher must SIGKILL it)
// A test's main() calls MaybeRunStandInMember() first.
#pragma once

#include <signal.h>
#include <unistd.h>

#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "asyncspade/control/v1/control.grpc.pb.h"
#include "asyncspade/selector/v1/selector.grpc.pb.h"
#include "common/control/member_client.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"

namespace asyncspade::testing {

inline constexpr char kStandInEnv[] = "ASYNCSPADE_LAUNCHER_STANDIN";

inline bool StandInListed(const char* variable, const std::string& id) {
  const char* value = std::getenv(variable);
  if (value == nullptr) return false;
  for (absl::string_view item : absl::StrSplit(value, ',', absl::SkipEmpty())) {
    if (item == id) return true;
  }
  return false;
}

class StandInDecodeWorkerService final : public control::v1::DecodeWorkerService::Service {
  grpc::Status ApplyAssignment(grpc::ServerContext*, const control::v1::ApplyAssignmentRequest*,
                               control::v1::ApplyAssignmentResponse*) override {
    return grpc::Status::OK;
  }
  grpc::Status Drain(grpc::ServerContext*, const control::v1::DrainRequest*, control::v1::DrainResponse*) override {
    return grpc::Status::OK;
  }
};

class StandInSelectorService final : public selector::v1::KvSelectorService::Service {
  grpc::Status ApplyLinks(grpc::ServerContext*, const selector::v1::ApplyLinksRequest*,
                          selector::v1::ApplyLinksResponse*) override {
    return grpc::Status::OK;
  }
  grpc::Status Drain(grpc::ServerContext*, const control::v1::DrainRequest*, control::v1::DrainResponse*) override {
    return grpc::Status::OK;
  }
};

// Returns the exit code when this process is a stand-in member, nullopt when it is the test itself.
inline std::optional<int> MaybeRunStandInMember(int argc, char** argv) {
  if (std::getenv(kStandInEnv) == nullptr) return std::nullopt;
  std::string controller, id, host = "127.0.0.1", devices = "cpu";
  bool member = false;
  for (int i = 1; i + 1 < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "--controller") controller = argv[i + 1];
    if (flag == "--id") id = argv[i + 1], member = true;
    if (flag == "--host") host = argv[i + 1];
    if (flag == "--devices") devices = argv[i + 1];
  }
  if (!member) return std::nullopt;  // the test binary itself (the variable is inherited by the test)
  if (StandInListed("ASYNCSPADE_STANDIN_FAIL_AT_START", id)) {
    std::fprintf(stderr, "stand-in %s: failing at start as asked\n", id.c_str());
    return 3;
  }
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  if (StandInListed("ASYNCSPADE_STANDIN_IGNORE_SIGTERM", id)) {
    // Not blocked, so that the kernel discards it (a blocked signal would still be queued).
    sigdelset(&signals, SIGTERM);
    signal(SIGTERM, SIG_IGN);
  }
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  const bool is_selector = absl::StartsWith(id, "selector-");
  StandInDecodeWorkerService worker_service;
  StandInSelectorService selector_service;
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(absl::StrCat(host, ":0"), grpc::InsecureServerCredentials(), &port);
  if (is_selector) {
    builder.RegisterService(&selector_service);
  } else {
    builder.RegisterService(&worker_service);
  }
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr) {
    std::fprintf(stderr, "stand-in %s: cannot listen on %s\n", id.c_str(), host.c_str());
    return 1;
  }
  MemberOptions options;
  options.controller_address = controller;
  options.role = is_selector ? control::v1::ROLE_KV_SELECTOR : control::v1::ROLE_DECODE_WORKER;
  options.member_id = id;
  options.address = absl::StrCat(host, ":", port);
  if (devices == "cpu") {
    options.devices = {"cpu"};
  } else {
    for (absl::string_view gpu : absl::StrSplit(devices, ',')) options.devices.push_back(absl::StrCat("cuda:", gpu));
  }
  MemberClient client(options, [] { return control::v1::Load(); });
  if (absl::Status s = client.Register(); !s.ok()) {
    std::fprintf(stderr, "stand-in %s: %s\n", id.c_str(), std::string(s.message()).c_str());
    return 1;
  }
  if (!StandInListed("ASYNCSPADE_STANDIN_NEVER_READY", id)) client.SetState(control::v1::MEMBER_STATE_READY);
  client.StartHeartbeats();
  std::fprintf(stderr, "stand-in %s: registered (pid %d, %s)\n", id.c_str(), getpid(), options.address.c_str());

  const timespec tick{0, 50 * 1000 * 1000};
  while (true) {
    // Pretend every assignment is applied at once, and report draining when asked to.
    client.SetAppliedAssignmentVersion(client.controller_assignment_version());
    if (client.drain_requested()) client.SetState(control::v1::MEMBER_STATE_DRAINING);
    const int signal_number = sigtimedwait(&signals, nullptr, &tick);
    if (signal_number == SIGTERM || signal_number == SIGINT) break;
  }
  std::fprintf(stderr, "stand-in %s: stopping\n", id.c_str());
  client.Stop(/*deregister=*/true);
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  return 0;
}

}  // namespace asyncspade::testing
