// The reconcile loop: delivers to every live member the links of the current assignment that
// concern it (DecodeWorkerService.ApplyAssignment / KvSelectorService.ApplyLinks) and drain
// requests (their Drain RPC), retrying with backoff. Members apply asynchronously (both ends of a
// link must meet in the rendezvous store, so the RPC cannot wait for the channel) and report the
// version they applied in their heartbeats.
#pragma once

#include <thread>

#include "absl/status/status.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "services/controller/deployment_state.h"
#include "services/controller/member_channels.h"

namespace asyncspade::controller {

class AssignmentPusher {
 public:
  AssignmentPusher(DeploymentState* state, MemberChannels* channels, absl::Duration rpc_timeout);
  ~AssignmentPusher();

  void Start();
  void Stop();

 private:
  void Loop();
  // The two RPCs of one push; returns (assignment status, drain status).
  std::pair<absl::Status, absl::Status> Deliver(const PendingPush& push);

  DeploymentState* const state_;
  MemberChannels* const channels_;
  const absl::Duration rpc_timeout_;
  absl::Notification stop_;
  std::thread thread_;
};

}  // namespace asyncspade::controller
