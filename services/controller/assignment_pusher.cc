#include "services/controller/assignment_pusher.h"

#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "asyncspade/control/v1/control.grpc.pb.h"
#include "asyncspade/selector/v1/selector.grpc.pb.h"
#include "common/control/grpc_status.h"
#include "glog/logging.h"

namespace asyncspade::controller {
namespace {

// How often the loop looks for retries that came due even when nothing changed.
constexpr absl::Duration kIdleWakeup = absl::Milliseconds(100);

}  // namespace

AssignmentPusher::AssignmentPusher(DeploymentState* state, MemberChannels* channels, absl::Duration rpc_timeout)
    : state_(state), channels_(channels), rpc_timeout_(rpc_timeout) {}

AssignmentPusher::~AssignmentPusher() { Stop(); }

void AssignmentPusher::Start() {
  if (thread_.joinable()) return;
  thread_ = std::thread([this] { Loop(); });
}

void AssignmentPusher::Stop() {
  if (!stop_.HasBeenNotified()) stop_.Notify();
  if (thread_.joinable()) thread_.join();
}

void AssignmentPusher::Loop() {
  while (!stop_.HasBeenNotified()) {
    std::vector<PendingPush> pushes = state_->TakePendingPushes(absl::Now());
    // One thread per member, so an unreachable member (not yet declared dead) delays nobody else.
    std::vector<std::thread> workers;
    workers.reserve(pushes.size());
    for (const PendingPush& push : pushes) {
      workers.emplace_back([this, &push] {
        auto [assignment_status, drain_status] = Deliver(push);
        state_->PushFinished(push, assignment_status, drain_status);
      });
    }
    for (std::thread& t : workers) t.join();
    state_->AwaitPushWork(kIdleWakeup);
  }
}

std::pair<absl::Status, absl::Status> AssignmentPusher::Deliver(const PendingPush& push) {
  std::shared_ptr<grpc::Channel> channel = channels_->Get(push.address);
  const std::string where = absl::StrCat("member ", push.member_id, " at ", push.address);
  absl::Status assignment_status;
  absl::Status drain_status;
  const bool is_worker = push.role == control::v1::ROLE_DECODE_WORKER;
  if (push.send_assignment) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + rpc_timeout_));
    grpc::Status status;
    if (is_worker) {
      control::v1::ApplyAssignmentRequest request;
      *request.mutable_assignment() = push.assignment;
      control::v1::ApplyAssignmentResponse response;
      status = control::v1::DecodeWorkerService::NewStub(channel)->ApplyAssignment(&ctx, request, &response);
    } else {
      selector::v1::ApplyLinksRequest request;
      *request.mutable_assignment() = push.assignment;
      selector::v1::ApplyLinksResponse response;
      status = selector::v1::KvSelectorService::NewStub(channel)->ApplyLinks(&ctx, request, &response);
    }
    assignment_status = FromGrpcStatus(status, absl::StrCat(where, ": ", is_worker ? "ApplyAssignment" : "ApplyLinks"));
    if (assignment_status.ok()) {
      VLOG(1) << where << ": delivered assignment version " << push.assignment.version() << " ("
              << push.assignment.links_size() << " link(s))";
    }
  }
  if (push.send_drain) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + rpc_timeout_));
    control::v1::DrainRequest request;
    request.set_member_id(push.member_id);
    control::v1::DrainResponse response;
    grpc::Status status = is_worker
                              ? control::v1::DecodeWorkerService::NewStub(channel)->Drain(&ctx, request, &response)
                              : selector::v1::KvSelectorService::NewStub(channel)->Drain(&ctx, request, &response);
    drain_status = FromGrpcStatus(status, absl::StrCat(where, ": Drain"));
  }
  return {assignment_status, drain_status};
}

}  // namespace asyncspade::controller
