#include "services/controller/control_service.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/control/grpc_status.h"

namespace asyncspade::controller {
namespace {

// StoreGet waits in slices this long, so a client that went away or a shutdown frees the thread
// quickly.
constexpr absl::Duration kStoreWaitSlice = absl::Milliseconds(100);

absl::Status CheckKey(const std::string& key, absl::string_view rpc) {
  if (key.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(rpc,
                                                   ": key is empty; rendezvous keys are prefixed with the "
                                                   "channel id and epoch"));
  }
  return absl::OkStatus();
}

}  // namespace

ControlServiceImpl::ControlServiceImpl(DeploymentState* state, DecodeWorkerRouter* router, std::string model_name,
                                       std::string default_policy)
    : state_(state), router_(router), model_name_(std::move(model_name)), default_policy_(std::move(default_policy)) {}

grpc::Status ControlServiceImpl::Register(grpc::ServerContext*, const control::v1::RegisterRequest* request,
                                          control::v1::RegisterResponse* response) {
  absl::StatusOr<control::v1::RegisterResponse> result = state_->Register(*request);
  if (!result.ok()) return ToGrpcStatus(result.status());
  *response = *std::move(result);
  return grpc::Status::OK;
}

grpc::Status ControlServiceImpl::Heartbeat(grpc::ServerContext*, const control::v1::HeartbeatRequest* request,
                                           control::v1::HeartbeatResponse* response) {
  *response = state_->Heartbeat(*request);
  return grpc::Status::OK;
}

grpc::Status ControlServiceImpl::Deregister(grpc::ServerContext*, const control::v1::DeregisterRequest* request,
                                            control::v1::DeregisterResponse*) {
  return ToGrpcStatus(state_->Deregister(*request));
}

grpc::Status ControlServiceImpl::ListMembers(grpc::ServerContext*, const control::v1::ListMembersRequest*,
                                             control::v1::ListMembersResponse* response) {
  *response = state_->ListMembers([this](const std::string& id) { return router_->InFlight(id); });
  response->set_model(model_name_);
  response->set_default_policy(default_policy_);
  const std::string reason = router_->NotServingReason();
  response->set_serving(reason.empty());
  response->set_not_serving_reason(reason);
  return grpc::Status::OK;
}

grpc::Status ControlServiceImpl::Drain(grpc::ServerContext*, const control::v1::DrainRequest* request,
                                       control::v1::DrainResponse*) {
  return ToGrpcStatus(state_->RequestDrain(request->member_id()));
}

grpc::Status ControlServiceImpl::ScaleSelectors(grpc::ServerContext*, const control::v1::ScaleSelectorsRequest* request,
                                                control::v1::ScaleSelectorsResponse* response) {
  absl::StatusOr<int> desired = state_->ScaleSelectors(request->replicas());
  if (!desired.ok()) return ToGrpcStatus(desired.status());
  response->set_desired_selectors(*desired);
  return grpc::Status::OK;
}

grpc::Status ControlServiceImpl::GetDesiredState(grpc::ServerContext*, const control::v1::GetDesiredStateRequest*,
                                                 control::v1::GetDesiredStateResponse* response) {
  *response = state_->DesiredState([this](const std::string& id) { return router_->InFlight(id); });
  return grpc::Status::OK;
}

grpc::Status ControlServiceImpl::StoreSet(grpc::ServerContext*, const control::v1::StoreSetRequest* request,
                                          control::v1::StoreSetResponse*) {
  absl::Status status = CheckKey(request->key(), "StoreSet");
  if (status.ok()) status = store_.Set(request->key(), request->value());
  return ToGrpcStatus(status);
}

grpc::Status ControlServiceImpl::StoreGet(grpc::ServerContext* context, const control::v1::StoreGetRequest* request,
                                          control::v1::StoreGetResponse* response) {
  absl::Status key_status = CheckKey(request->key(), "StoreGet");
  if (!key_status.ok()) return ToGrpcStatus(key_status);
  const absl::Duration timeout = absl::Milliseconds(std::max(request->timeout_ms(), 0));
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    const absl::Duration slice = std::clamp(deadline - absl::Now(), absl::ZeroDuration(), kStoreWaitSlice);
    absl::StatusOr<std::string> value = store_.Get(request->key(), slice);
    if (value.ok()) {
      response->set_value(*std::move(value));
      return grpc::Status::OK;
    }
    if (value.status().code() != absl::StatusCode::kDeadlineExceeded) return ToGrpcStatus(value.status());
    if (context->IsCancelled()) return grpc::Status(grpc::StatusCode::CANCELLED, "StoreGet cancelled by the caller");
    if (stopping_) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the controller is shutting down");
    if (absl::Now() >= deadline) {
      return grpc::Status(
          grpc::StatusCode::DEADLINE_EXCEEDED,
          absl::StrCat("rendezvous key '", request->key(), "' was not set within ", request->timeout_ms(),
                       " ms; is the peer process running and using the same channel id and epoch?"));
    }
  }
}

grpc::Status ControlServiceImpl::StoreDelete(grpc::ServerContext*, const control::v1::StoreDeleteRequest* request,
                                             control::v1::StoreDeleteResponse*) {
  absl::Status status = CheckKey(request->key(), "StoreDelete");
  if (status.ok()) status = store_.Delete(request->key());
  return ToGrpcStatus(status);
}

}  // namespace asyncspade::controller
