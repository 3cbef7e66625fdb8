// DecodeWorkerService (control.proto): what the controller calls on a decode worker. Generate
// streams one request's tokens (the controller relays them to the client), Abort ends one,
// ApplyAssignment hands over the selector links, Drain stops the worker from taking new requests.
//
// Generate runs on a gRPC thread per stream: it translates and submits the request (errors come
// back as the gRPC status, before anything was streamed), then writes what the engine loop
// produces. A client that goes away (cancelled context, failed write) aborts the request.
#pragma once

#include <atomic>
#include <functional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/random/random.h"
#include "absl/synchronization/mutex.h"
#include "asyncspade/control/v1/control.grpc.pb.h"
#include "services/decode_worker/service/engine_loop.h"
#include "services/decode_worker/service/request_translator.h"

namespace asyncspade {

struct DecodeWorkerServiceHooks {
  // Applies the controller's selector links (returns at once).
  std::function<absl::Status(const control::v1::Assignment&)> apply_assignment;
  // The controller asked this worker to drain.
  std::function<void()> drain;
};

class DecodeWorkerServiceImpl final : public control::v1::DecodeWorkerService::Service {
 public:
  DecodeWorkerServiceImpl(std::string worker_id, DecodeWorkerServiceHooks hooks);

  // Until Serve() is called (model still loading) Generate answers UNAVAILABLE. Not owned; both
  // must outlive the service.
  void Serve(EngineLoop* loop, RequestTranslationContext context);
  // Refuses new requests (UNAVAILABLE, so the controller routes them elsewhere); those in flight
  // continue.
  void StopAccepting(const std::string& reason);

  grpc::Status Generate(grpc::ServerContext* context, const serving::v1::GenerateRequest* request,
                        grpc::ServerWriter<serving::v1::GenerateResponse>* writer) override;
  grpc::Status Abort(grpc::ServerContext* context, const serving::v1::AbortRequest* request,
                     serving::v1::AbortResponse* response) override;
  grpc::Status ApplyAssignment(grpc::ServerContext* context, const control::v1::ApplyAssignmentRequest* request,
                               control::v1::ApplyAssignmentResponse* response) override;
  grpc::Status Drain(grpc::ServerContext* context, const control::v1::DrainRequest* request,
                     control::v1::DrainResponse* response) override;

  // Requests refused before streaming (bad input, not accepting).
  int64_t rejected_total() const { return rejected_total_; }

 private:
  const std::string worker_id_;
  const DecodeWorkerServiceHooks hooks_;

  mutable absl::Mutex mutex_;
  EngineLoop* loop_ ABSL_GUARDED_BY(mutex_) = nullptr;
  RequestTranslationContext context_ ABSL_GUARDED_BY(mutex_);
  std::string not_accepting_reason_ ABSL_GUARDED_BY(mutex_);
  absl::BitGen random_ ABSL_GUARDED_BY(mutex_);
  uint64_t next_request_number_ ABSL_GUARDED_BY(mutex_) = 1;

  std::atomic<int64_t> rejected_total_{0};
};

}  // namespace asyncspade
