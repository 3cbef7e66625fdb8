#include "services/controller/generation_service.h"

#include "absl/strings/ascii.h"
#include "absl/time/clock.h"
#include "common/control/grpc_status.h"

namespace asyncspade::controller {

std::string RejectionReason(const absl::Status& status) {
  return absl::AsciiStrToLower(absl::StatusCodeToString(status.code()));
}

GenerationServiceImpl::GenerationServiceImpl(DecodeWorkerRouter* router, ControllerMetrics* metrics)
    : router_(router), metrics_(metrics) {}

grpc::Status GenerationServiceImpl::Generate(grpc::ServerContext* context, const serving::v1::GenerateRequest* request,
                                             grpc::ServerWriter<serving::v1::GenerateResponse>* writer) {
  const absl::Time started = absl::Now();
  absl::StatusOr<std::unique_ptr<GenerationCall>> call = router_->StartWithParent(*request, context);
  if (!call.ok()) {
    if (metrics_ != nullptr) metrics_->RequestRejected(RejectionReason(call.status()));
    return ToGrpcStatus(call.status());
  }
  if (metrics_ != nullptr) metrics_->RequestStarted();
  serving::v1::GenerateResponse response;
  serving::v1::GenerateFinal final_message;
  bool has_final = false;
  std::optional<absl::Time> last_chunk;
  while ((*call)->Next(&response)) {
    if (response.has_chunk()) {
      const absl::Time now = absl::Now();
      if (last_chunk.has_value() && metrics_ != nullptr) {
        metrics_->InterTokenLatency(absl::ToDoubleSeconds(now - *last_chunk));
      }
      last_chunk = now;
    }
    if (response.has_final()) {
      final_message = response.final();
      has_final = true;
    }
    // The client went away: cancel upstream and let the stream end.
    if (!writer->Write(response)) (*call)->Cancel();
  }
  const absl::Status status = (*call)->Finish();
  if (metrics_ != nullptr) {
    if (!has_final) {
      final_message.set_finish_reason(status.code() == absl::StatusCode::kCancelled ? serving::v1::FINISH_REASON_ABORTED
                                                                                    : serving::v1::FINISH_REASON_ERROR);
      final_message.set_error_message(std::string(status.message()));
    }
    metrics_->RequestFinished(final_message, absl::ToDoubleSeconds(absl::Now() - started), "grpc");
  }
  return ToGrpcStatus(status);
}

grpc::Status GenerationServiceImpl::Abort(grpc::ServerContext*, const serving::v1::AbortRequest* request,
                                          serving::v1::AbortResponse* response) {
  if (request->request_id().empty()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "request_id is empty; pass the id of the request to abort (sent back in every "
                        "GenerateResponse)");
  }
  absl::StatusOr<bool> found = router_->Abort(request->request_id());
  if (!found.ok()) return ToGrpcStatus(found.status());
  response->set_found(*found);
  return grpc::Status::OK;
}

grpc::Status GenerationServiceImpl::GetModelInfo(grpc::ServerContext*, const serving::v1::GetModelInfoRequest*,
                                                 serving::v1::ModelInfo* response) {
  absl::StatusOr<serving::v1::ModelInfo> info = router_->GetModelInfo();
  if (!info.ok()) return ToGrpcStatus(info.status());
  *response = *std::move(info);
  return grpc::Status::OK;
}

}  // namespace asyncspade::controller
