// Membership of a decode worker or KV selector in a deployment: registers with the controller,
// sends heartbeats (state + load) from a background thread, re-registers when the controller no
// longer knows it (controller restart), and deregisters on a clean exit.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "asyncspade/control/v1/control.grpc.pb.h"

namespace asyncspade {

struct MemberOptions {
  std::string controller_address;  // host:port
  control::v1::Role role = control::v1::ROLE_UNSPECIFIED;
  std::string member_id;           // e.g. "selector-1"
  std::string address;             // host:port of this member's own gRPC service
  std::vector<std::string> devices;
  absl::Duration register_timeout = absl::Seconds(60);
};

class MemberClient {
 public:
  using LoadProvider = std::function<control::v1::Load()>;

  MemberClient(MemberOptions options, LoadProvider load_provider);
  ~MemberClient();
  MemberClient(const MemberClient&) = delete;
  MemberClient& operator=(const MemberClient&) = delete;

  // Registers, retrying while the controller is unreachable, up to options.register_timeout.
  absl::Status Register();
  // Starts the heartbeat thread (after Register()).
  void StartHeartbeats();
  // Stops heartbeats; with `deregister`, tells the controller this member is leaving.
  void Stop(bool deregister);

  void SetState(control::v1::MemberState state);
  void SetAppliedAssignmentVersion(uint64_t version);

  bool drain_requested() const;
  // The controller's assignment version from the last heartbeat (0 before the first).
  uint64_t controller_assignment_version() const;
  // Time since the controller last answered a heartbeat.
  absl::Duration since_last_ack() const;
  const std::string& member_id() const { return options_.member_id; }
  uint64_t incarnation() const;

 private:
  absl::Status RegisterOnce();
  void HeartbeatLoop();

  const MemberOptions options_;
  const LoadProvider load_provider_;
  std::unique_ptr<control::v1::ControlService::Stub> stub_;

  mutable absl::Mutex mutex_;
  uint64_t incarnation_ ABSL_GUARDED_BY(mutex_) = 0;
  absl::Duration interval_ ABSL_GUARDED_BY(mutex_) = absl::Milliseconds(500);
  control::v1::MemberState state_ ABSL_GUARDED_BY(mutex_) = control::v1::MEMBER_STATE_STARTING;
  uint64_t applied_version_ ABSL_GUARDED_BY(mutex_) = 0;
  uint64_t controller_version_ ABSL_GUARDED_BY(mutex_) = 0;
  bool drain_requested_ ABSL_GUARDED_BY(mutex_) = false;
  absl::Time last_ack_ ABSL_GUARDED_BY(mutex_) = absl::Now();
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
  std::thread thread_;
};

}  // namespace asyncspade
