// The GenerationRouter of the controller: validates a request, sends it to the least loaded READY
// decode worker (DecodeWorkerService.Generate) and relays that worker's stream. A worker that dies
// or goes silent ends only the requests it was serving (UNAVAILABLE naming it); a request that
// failed on a worker before receiving anything is retried on another one.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/config/sparse_policy_config.h"
#include "grpcpp/server_context.h"
#include "services/controller/deployment_state.h"
#include "services/controller/generation_router.h"
#include "services/controller/member_channels.h"
#include "services/controller/served_model.h"

namespace asyncspade::controller {

class RoutedGenerationCall;

struct DecodeWorkerRouterOptions {
  DeploymentState* state = nullptr;    // not owned
  MemberChannels* channels = nullptr;  // not owned
  ServedModel model;
  SparsePolicyConfig sparse_defaults;
};

class DecodeWorkerRouter : public GenerationRouter {
 public:
  explicit DecodeWorkerRouter(DecodeWorkerRouterOptions options);
  // Calls must be destroyed before the router.
  ~DecodeWorkerRouter() override;

  absl::StatusOr<std::unique_ptr<GenerationCall>> Start(serving::v1::GenerateRequest request) override;
  // The gRPC front end's Start: the upstream call inherits `parent`'s deadline and cancellation,
  // so a client that goes away cancels the request on its worker without any polling.
  absl::StatusOr<std::unique_ptr<GenerationCall>> StartWithParent(serving::v1::GenerateRequest request,
                                                                  const grpc::ServerContext* parent);
  absl::StatusOr<bool> Abort(const std::string& request_id) override;
  absl::StatusOr<serving::v1::ModelInfo> GetModelInfo() override;
  bool Serving() const override;
  // Why Serving() is false ("" when it is true), for health messages and `ctl status`.
  std::string NotServingReason() const;

  // The worker stopped serving: its streams end with UNAVAILABLE naming it and `reason`.
  void WorkerLost(const std::string& member_id, const std::string& reason);
  // Requests this controller is relaying to `member_id` / in total.
  int InFlight(const std::string& member_id) const;
  int TotalInFlight() const;
  // Shutdown: new requests are refused with UNAVAILABLE and `reason`.
  void StopAccepting(const std::string& reason);
  // Waits until no request is in flight; false on timeout.
  bool WaitUntilIdle(absl::Duration timeout) const;

 private:
  friend class RoutedGenerationCall;
  struct Picked {
    std::string member_id;
    std::string address;
  };

  // What the controller can check before any worker sees the request.
  absl::Status Validate(const serving::v1::GenerateRequest& request) const;
  std::string NewRequestId();
  // The least loaded of `candidates` (READY workers, fetched before taking mutex_: the deployment
  // state calls into the router under its own lock) not in `exclude`; counts a request against it.
  // nullopt when there is none.
  std::optional<Picked> PickWorkerLocked(const std::vector<RoutableWorker>& candidates,
                                         const std::set<std::string>& exclude) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // For a retry: releases the call's count on its current worker and picks another.
  std::optional<Picked> Repick(RoutedGenerationCall* call, const std::set<std::string>& exclude);
  void Release(RoutedGenerationCall* call);
  std::string NoWorkerMessage() const;

  const DecodeWorkerRouterOptions options_;
  const serving::v1::ModelInfo model_info_;
  const uint32_t request_id_nonce_;
  std::atomic<uint64_t> next_request_number_{0};

  mutable absl::Mutex mutex_;
  bool accepting_ ABSL_GUARDED_BY(mutex_) = true;
  std::string stop_reason_ ABSL_GUARDED_BY(mutex_);
  std::map<std::string, RoutedGenerationCall*> calls_ ABSL_GUARDED_BY(mutex_);  // by request id
  absl::flat_hash_map<std::string, int> in_flight_ ABSL_GUARDED_BY(mutex_);     // by worker id
  absl::flat_hash_map<std::string, uint64_t> last_pick_ ABSL_GUARDED_BY(mutex_);
  uint64_t pick_counter_ ABSL_GUARDED_BY(mutex_) = 0;
};

}  // namespace asyncspade::controller
