#include "common/control/member_client.h"

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/control/grpc_status.h"
#include "glog/logging.h"
#include "grpcpp/create_channel.h"

namespace asyncspade {

MemberClient::MemberClient(MemberOptions options, LoadProvider load_provider)
    : options_(std::move(options)),
      load_provider_(std::move(load_provider)),
      stub_(control::v1::ControlService::NewStub(
          grpc::CreateChannel(options_.controller_address, grpc::InsecureChannelCredentials()))) {}

MemberClient::~MemberClient() { Stop(/*deregister=*/false); }

absl::Status MemberClient::RegisterOnce() {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  control::v1::RegisterRequest request;
  request.set_role(options_.role);
  request.set_member_id(options_.member_id);
  request.set_address(options_.address);
  for (const auto& d : options_.devices) request.add_devices(d);
  request.set_pid(static_cast<int64_t>(getpid()));
  control::v1::RegisterResponse response;
  grpc::Status status = stub_->Register(&ctx, request, &response);
  if (!status.ok()) {
    return FromGrpcStatus(status, absl::StrCat("controller ", options_.controller_address, ": Register"));
  }
  absl::MutexLock lock(&mutex_);
  incarnation_ = response.incarnation();
  if (response.heartbeat_interval_ms() > 0) interval_ = absl::Milliseconds(response.heartbeat_interval_ms());
  last_ack_ = absl::Now();
  return absl::OkStatus();
}

absl::Status MemberClient::Register() {
  const absl::Time deadline = absl::Now() + options_.register_timeout;
  absl::Status last;
  while (absl::Now() < deadline) {
    last = RegisterOnce();
    if (last.ok()) {
      LOG(INFO) << options_.member_id << " registered with controller " << options_.controller_address;
      return last;
    }
    // Only an unreachable controller is worth waiting for; a refusal (duplicate id, bad request)
    // will not change by retrying.
    if (last.code() != absl::StatusCode::kUnavailable && last.code() != absl::StatusCode::kDeadlineExceeded) {
      return last;
    }
    absl::SleepFor(absl::Milliseconds(200));
  }
  return absl::UnavailableError(absl::StrCat("could not register ", options_.member_id,
                                             " with the controller at ", options_.controller_address,
                                             " within ", absl::FormatDuration(options_.register_timeout),
                                             ": ", last.message()));
}

void MemberClient::StartHeartbeats() {
  absl::MutexLock lock(&mutex_);
  if (thread_.joinable() || stopping_) return;
  thread_ = std::thread([this] { HeartbeatLoop(); });
}

void MemberClient::HeartbeatLoop() {
  while (true) {
    control::v1::HeartbeatRequest request;
    absl::Duration interval;
    {
      absl::MutexLock lock(&mutex_);
      interval = interval_;
      request.set_member_id(options_.member_id);
      request.set_incarnation(incarnation_);
      request.set_state(state_);
      request.set_assignment_version(applied_version_);
    }
    *request.mutable_load() = load_provider_ ? load_provider_() : control::v1::Load();
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + std::max(interval * 2, absl::Seconds(1))));
    control::v1::HeartbeatResponse response;
    grpc::Status status = stub_->Heartbeat(&ctx, request, &response);
    bool re_register = false;
    if (status.ok()) {
      absl::MutexLock lock(&mutex_);
      last_ack_ = absl::Now();
      drain_requested_ = response.drain_requested();
      controller_version_ = response.assignment_version();
      re_register = response.re_register();
    } else {
      LOG_EVERY_N(WARNING, 20) << options_.member_id << ": heartbeat to controller "
                               << options_.controller_address << " failed: " << status.error_message();
    }
    if (re_register) {
      absl::Status s = RegisterOnce();
      if (!s.ok()) LOG(WARNING) << options_.member_id << ": re-registration failed: " << s;
    }
    absl::MutexLock lock(&mutex_);
    auto stop = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) { return stopping_; };
    mutex_.AwaitWithTimeout(absl::Condition(&stop), interval);
    if (stopping_) return;
  }
}

void MemberClient::Stop(bool deregister) {
  {
    absl::MutexLock lock(&mutex_);
    if (stopping_) return;
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
  if (!deregister) return;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
  control::v1::DeregisterRequest request;
  request.set_member_id(options_.member_id);
  request.set_incarnation(incarnation());
  control::v1::DeregisterResponse response;
  grpc::Status status = stub_->Deregister(&ctx, request, &response);
  if (!status.ok()) LOG(WARNING) << options_.member_id << ": deregister failed: " << status.error_message();
}

void MemberClient::SetState(control::v1::MemberState state) {
  absl::MutexLock lock(&mutex_);
  state_ = state;
}

void MemberClient::SetAppliedAssignmentVersion(uint64_t version) {
  absl::MutexLock lock(&mutex_);
  applied_version_ = version;
}

bool MemberClient::drain_requested() const {
  absl::MutexLock lock(&mutex_);
  return drain_requested_;
}

uint64_t MemberClient::controller_assignment_version() const {
  absl::MutexLock lock(&mutex_);
  return controller_version_;
}

absl::Duration MemberClient::since_last_ack() const {
  absl::MutexLock lock(&mutex_);
  return absl::Now() - last_ack_;
}

uint64_t MemberClient::incarnation() const {
  absl::MutexLock lock(&mutex_);
  return incarnation_;
}

}  // namespace asyncspade
