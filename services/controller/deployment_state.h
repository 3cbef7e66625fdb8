// The controller's source of truth: which members exist (decode workers and KV selectors), their
// health and load, the desired selector count, and the current assignment of selector links. Every
// change to membership recomputes the assignment under the same lock, so the links always match
// the members they were computed from.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "asyncspade/control/v1/control.pb.h"
#include "services/controller/controller_metrics.h"
#include "services/controller/selector_assignment.h"

namespace asyncspade::controller {

struct DeploymentStateOptions {
  absl::Duration heartbeat_interval = absl::Milliseconds(500);
  absl::Duration heartbeat_timeout = absl::Seconds(5);
  LayerLayout layout;
  int desired_selectors = 0;
  // The deployment's default policy is asyncspade: scaling selectors to 0 is refused.
  bool default_policy_needs_selectors = false;
  // Assignment versions and link epochs start above this value. The controller passes its start
  // time in milliseconds, so that both keep increasing across a controller restart and members
  // never mistake a new assignment for one they already hold.
  uint64_t first_counter = 0;
  // Whether the process serving `address` still answers. Asked when a registration reuses the id of
  // a member that still looks alive from another address: if the old process is gone (crashed and
  // restarted before its heartbeats timed out), the new one replaces it. Unset: always alive.
  std::function<bool(const std::string& address)> address_answers;
  ControllerMetrics* metrics = nullptr;  // optional
  // A decode worker stopped serving (heartbeats timed out, replaced by a new incarnation, or
  // deregistered): the router ends the requests it was relaying to it. Called without locks held.
  std::function<void(const std::string& member_id, const std::string& reason)> on_decode_worker_lost;
};

// A decode worker that may receive new requests.
struct RoutableWorker {
  std::string member_id;
  std::string address;
  int reported_requests = 0;  // running + waiting at its last heartbeat
};

// One RPC the reconcile loop owes a member: its links of the current assignment (and/or a drain).
struct PendingPush {
  std::string member_id;
  uint64_t incarnation = 0;
  control::v1::Role role = control::v1::ROLE_UNSPECIFIED;
  std::string address;
  bool send_assignment = false;
  control::v1::Assignment assignment;  // the links concerning this member
  bool send_drain = false;
};

class DeploymentState {
 public:
  explicit DeploymentState(DeploymentStateOptions options);

  // ControlService.
  absl::StatusOr<control::v1::RegisterResponse> Register(const control::v1::RegisterRequest& request);
  control::v1::HeartbeatResponse Heartbeat(const control::v1::HeartbeatRequest& request);
  absl::Status Deregister(const control::v1::DeregisterRequest& request);
  absl::Status RequestDrain(const std::string& member_id);
  absl::StatusOr<int> ScaleSelectors(int replicas);

  // Marks members silent for longer than the heartbeat timeout UNHEALTHY (their links are
  // withdrawn). Returns how many were newly marked.
  int CheckLiveness(absl::Time now);

  // Views. `in_flight` gives the controller's count of requests in flight per decode worker.
  using InFlightCounter = std::function<int(const std::string& member_id)>;
  control::v1::ListMembersResponse ListMembers(const InFlightCounter& in_flight) const;
  control::v1::GetDesiredStateResponse DesiredState(const InFlightCounter& in_flight) const;
  std::vector<RoutableWorker> RoutableWorkers() const;
  // Layers no READY selector serves (empty: asyncspade can be served).
  std::vector<LayerRange> UncoveredLayers() const;
  uint64_t assignment_version() const;
  control::v1::Assignment CurrentAssignment() const;

  // The reconcile loop: takes the RPCs due now (at most one in flight per member) and reports how
  // each went; failed ones are retried with backoff.
  std::vector<PendingPush> TakePendingPushes(absl::Time now);
  void PushFinished(const PendingPush& push, const absl::Status& assignment_status, const absl::Status& drain_status);
  // Blocks until something may need pushing since the last TakePendingPushes (or `timeout`).
  void AwaitPushWork(absl::Duration timeout);

 private:
  struct MemberRecord {
    std::string member_id;
    control::v1::Role role = control::v1::ROLE_UNSPECIFIED;
    std::string address;
    std::vector<std::string> devices;
    int64_t pid = 0;
    uint64_t incarnation = 0;
    control::v1::MemberState reported_state = control::v1::MEMBER_STATE_STARTING;
    control::v1::Load load;
    absl::Time last_heartbeat;
    bool silent = false;  // missed heartbeats for longer than the timeout
    bool drain_requested = false;
    bool heartbeat_since_drain = false;
    uint64_t applied_version = 0;
    uint64_t links_version = 0;  // the assignment version at which its links last changed
    // Reconcile bookkeeping.
    uint64_t delivered_version = 0;
    bool drain_delivered = false;
    bool push_in_flight = false;
    int push_failures = 0;
    absl::Time next_push_attempt = absl::InfinitePast();
  };
  struct LostWorker {
    std::string member_id;
    std::string reason;
  };

  static control::v1::MemberState EffectiveState(const MemberRecord& record);
  static bool LinkEligible(const MemberRecord& record);
  bool HasCudaDevice(const MemberRecord& record) const;
  // Recomputes the links after a membership change; bumps the version when they changed.
  void RecomputeAssignmentLocked(const std::string& reason) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  std::vector<SelectorLayers> ServedLayersLocked() const ABSL_SHARED_LOCKS_REQUIRED(mutex_);
  control::v1::Assignment AssignmentForLocked(const std::string& member_id) const ABSL_SHARED_LOCKS_REQUIRED(mutex_);
  std::string KnownMembersLocked() const ABSL_SHARED_LOCKS_REQUIRED(mutex_);
  void NotifyLost(const std::vector<LostWorker>& lost);
  void ReportLoad(const MemberRecord& record);

  const DeploymentStateOptions options_;

  mutable absl::Mutex mutex_;
  std::map<std::string, MemberRecord> members_ ABSL_GUARDED_BY(mutex_);
  std::vector<AssignedLink> links_ ABSL_GUARDED_BY(mutex_);
  uint64_t version_ ABSL_GUARDED_BY(mutex_) = 0;
  uint64_t next_epoch_ ABSL_GUARDED_BY(mutex_) = 0;
  uint64_t next_incarnation_ ABSL_GUARDED_BY(mutex_) = 0;
  int desired_selectors_ ABSL_GUARDED_BY(mutex_) = 0;
  uint64_t push_work_ ABSL_GUARDED_BY(mutex_) = 0;        // bumped whenever something may need pushing
  uint64_t push_work_taken_ ABSL_GUARDED_BY(mutex_) = 0;  // push_work_ as of the last TakePendingPushes
};

// Member ids become part of channel ids and rendezvous keys: 1 to 64 characters of [A-Za-z0-9._-].
absl::Status ValidateMemberId(const std::string& member_id);

std::string RoleName(control::v1::Role role);           // "decode worker", "kv selector"
std::string StateName(control::v1::MemberState state);  // "READY", ...

}  // namespace asyncspade::controller
