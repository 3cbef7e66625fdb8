#include "services/decode_worker/service/decode_worker_service.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/control/grpc_status.h"
#include "glog/logging.h"

namespace asyncspade {
namespace {

// How often a stream waiting for tokens checks whether its client went away.
constexpr absl::Duration kCancellationPoll = absl::Milliseconds(50);

}  // namespace

DecodeWorkerServiceImpl::DecodeWorkerServiceImpl(std::string worker_id, DecodeWorkerServiceHooks hooks)
    : worker_id_(std::move(worker_id)), hooks_(std::move(hooks)) {}

void DecodeWorkerServiceImpl::Serve(EngineLoop* loop, RequestTranslationContext context) {
  absl::MutexLock lock(&mutex_);
  loop_ = loop;
  context_ = std::move(context);
}

void DecodeWorkerServiceImpl::StopAccepting(const std::string& reason) {
  absl::MutexLock lock(&mutex_);
  if (not_accepting_reason_.empty()) not_accepting_reason_ = reason;
}

grpc::Status DecodeWorkerServiceImpl::Generate(grpc::ServerContext* context, const serving::v1::GenerateRequest* request,
                                               grpc::ServerWriter<serving::v1::GenerateResponse>* writer) {
  EngineLoop* loop = nullptr;
  std::string request_id = request->request_id();
  absl::StatusOr<TranslatedRequest> translated;
  {
    absl::MutexLock lock(&mutex_);
    if (!not_accepting_reason_.empty() || loop_ == nullptr) {
      ++rejected_total_;
      return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                          absl::StrCat("decode worker ", worker_id_, " ",
                                       loop_ == nullptr ? "is still loading its model" : not_accepting_reason_,
                                       "; send the request to another decode worker"));
    }
    loop = loop_;
    if (request_id.empty()) request_id = absl::StrCat(worker_id_, "-", next_request_number_++);
    translated = TranslateGenerateRequest(*request, context_, absl::Uniform<uint64_t>(random_));
  }
  if (!translated.ok()) {
    ++rejected_total_;
    return ToGrpcStatus(translated.status());
  }
  absl::StatusOr<std::shared_ptr<ActiveRequest>> active = loop->Submit(request_id, *std::move(translated));
  if (!active.ok()) {
    ++rejected_total_;
    return ToGrpcStatus(active.status());
  }

  serving::v1::GenerateResponse response;
  response.set_request_id(request_id);
  while (true) {
    ActiveRequest::Output output = (*active)->Take(kCancellationPoll);
    if (!output.token_ids.empty() || !output.text.empty()) {
      serving::v1::GenerateChunk* chunk = response.mutable_chunk();
      chunk->Clear();
      chunk->mutable_token_ids()->Add(output.token_ids.begin(), output.token_ids.end());
      chunk->set_text(std::move(output.text));
      if (!writer->Write(response)) {
        loop->Cancel(*active);
        return grpc::Status(grpc::StatusCode::CANCELLED, "the client went away");
      }
    }
    if (output.final.has_value()) {
      *response.mutable_final() = std::move(*output.final);
      writer->Write(response);
      return grpc::Status::OK;
    }
    if (context->IsCancelled()) {
      loop->Cancel(*active);
      return grpc::Status(grpc::StatusCode::CANCELLED, "the client cancelled the request");
    }
  }
}

grpc::Status DecodeWorkerServiceImpl::Abort(grpc::ServerContext*, const serving::v1::AbortRequest* request,
                                            serving::v1::AbortResponse* response) {
  EngineLoop* loop = nullptr;
  {
    absl::MutexLock lock(&mutex_);
    loop = loop_;
  }
  response->set_found(loop != nullptr && loop->Abort(request->request_id()));
  return grpc::Status::OK;
}

grpc::Status DecodeWorkerServiceImpl::ApplyAssignment(grpc::ServerContext*,
                                                      const control::v1::ApplyAssignmentRequest* request,
                                                      control::v1::ApplyAssignmentResponse*) {
  if (!hooks_.apply_assignment) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                        absl::StrCat("decode worker ", worker_id_, " takes no selector links"));
  }
  return ToGrpcStatus(hooks_.apply_assignment(request->assignment()));
}

grpc::Status DecodeWorkerServiceImpl::Drain(grpc::ServerContext*, const control::v1::DrainRequest*,
                                            control::v1::DrainResponse*) {
  if (hooks_.drain) hooks_.drain();
  return grpc::Status::OK;
}

}  // namespace asyncspade
