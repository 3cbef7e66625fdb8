// GenerationService, the public gRPC API (asyncspade.serving.v1), relayed through the router. The
// upstream call to the decode worker inherits the client's deadline and cancellation.
#pragma once

#include "asyncspade/serving/v1/generation.grpc.pb.h"
#include "services/controller/controller_metrics.h"
#include "services/controller/decode_worker_router.h"

namespace asyncspade::controller {

class GenerationServiceImpl final : public serving::v1::GenerationService::Service {
 public:
  // `metrics` may be null.
  GenerationServiceImpl(DecodeWorkerRouter* router, ControllerMetrics* metrics);

  grpc::Status Generate(grpc::ServerContext* context, const serving::v1::GenerateRequest* request,
                        grpc::ServerWriter<serving::v1::GenerateResponse>* writer) override;
  grpc::Status Abort(grpc::ServerContext* context, const serving::v1::AbortRequest* request,
                     serving::v1::AbortResponse* response) override;
  grpc::Status GetModelInfo(grpc::ServerContext* context, const serving::v1::GetModelInfoRequest* request,
                            serving::v1::ModelInfo* response) override;

 private:
  DecodeWorkerRouter* const router_;
  ControllerMetrics* const metrics_;
};

// The label of a refused request in asyncspade_requests_rejected_total: the status code in lower
// case ("invalid_argument", "unavailable", ...).
std::string RejectionReason(const absl::Status& status);

}  // namespace asyncspade::controller
