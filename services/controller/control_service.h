// ControlService, the gRPC face of the deployment state: membership (register, heartbeat,
// deregister), operator commands (list, drain, scale), the launcher's desired state, and the
// rendezvous store of data-plane channels.
#pragma once

#include <atomic>
#include <string>

#include "asyncspade/control/v1/control.grpc.pb.h"
#include "common/data_plane/in_memory_rendezvous_store.h"
#include "services/controller/decode_worker_router.h"
#include "services/controller/deployment_state.h"

namespace asyncspade::controller {

class ControlServiceImpl final : public control::v1::ControlService::Service {
 public:
  ControlServiceImpl(DeploymentState* state, DecodeWorkerRouter* router, std::string model_name,
                     std::string default_policy);

  // Ends StoreGet waits early (shutdown).
  void Stop() { stopping_ = true; }

  grpc::Status Register(grpc::ServerContext* context, const control::v1::RegisterRequest* request,
                        control::v1::RegisterResponse* response) override;
  grpc::Status Heartbeat(grpc::ServerContext* context, const control::v1::HeartbeatRequest* request,
                         control::v1::HeartbeatResponse* response) override;
  grpc::Status Deregister(grpc::ServerContext* context, const control::v1::DeregisterRequest* request,
                          control::v1::DeregisterResponse* response) override;
  grpc::Status ListMembers(grpc::ServerContext* context, const control::v1::ListMembersRequest* request,
                           control::v1::ListMembersResponse* response) override;
  grpc::Status Drain(grpc::ServerContext* context, const control::v1::DrainRequest* request,
                     control::v1::DrainResponse* response) override;
  grpc::Status ScaleSelectors(grpc::ServerContext* context, const control::v1::ScaleSelectorsRequest* request,
                              control::v1::ScaleSelectorsResponse* response) override;
  grpc::Status GetDesiredState(grpc::ServerContext* context, const control::v1::GetDesiredStateRequest* request,
                               control::v1::GetDesiredStateResponse* response) override;
  grpc::Status StoreSet(grpc::ServerContext* context, const control::v1::StoreSetRequest* request,
                        control::v1::StoreSetResponse* response) override;
  grpc::Status StoreGet(grpc::ServerContext* context, const control::v1::StoreGetRequest* request,
                        control::v1::StoreGetResponse* response) override;
  grpc::Status StoreDelete(grpc::ServerContext* context, const control::v1::StoreDeleteRequest* request,
                           control::v1::StoreDeleteResponse* response) override;

 private:
  DeploymentState* const state_;
  DecodeWorkerRouter* const router_;
  const std::string model_name_;
  const std::string default_policy_;
  data_plane::InMemoryRendezvousStore store_;
  std::atomic<bool> stopping_{false};
};

}  // namespace asyncspade::controller
