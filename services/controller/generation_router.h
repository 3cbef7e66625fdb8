// The controller's request path, shared by its two front ends (the gRPC GenerationService and the
// OpenAI-compatible HTTP server): pick a decode worker, forward the request, relay its stream.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "asyncspade/serving/v1/generation.pb.h"

namespace asyncspade::controller {

// One request in flight. Not thread-safe except Cancel(), which may be called from any thread.
class GenerationCall {
 public:
  virtual ~GenerationCall() = default;
  // Blocks until the next response of the stream. Returns false once the stream has ended; then
  // Finish() gives its status.
  virtual bool Next(serving::v1::GenerateResponse* response) = 0;
  // The status of the ended stream: OK when a final message was delivered; otherwise the error
  // (e.g. INVALID_ARGUMENT for a bad request, UNAVAILABLE when the decode worker died mid-stream).
  virtual absl::Status Finish() = 0;
  // The client went away or asked to stop: aborts the request on its decode worker.
  virtual void Cancel() = 0;
  virtual const std::string& request_id() const = 0;
};

class GenerationRouter {
 public:
  virtual ~GenerationRouter() = default;
  // Validates what the controller can validate (input present, policy known and servable),
  // assigns a request id when empty, picks a READY decode worker (least loaded) and starts the
  // request there. Errors: INVALID_ARGUMENT (bad request), UNAVAILABLE (no decode worker ready),
  // FAILED_PRECONDITION (e.g. asyncspade asked for but no selector is serving).
  virtual absl::StatusOr<std::unique_ptr<GenerationCall>> Start(serving::v1::GenerateRequest request) = 0;
  // NOT_FOUND-free: returns false when no request with that id is in flight.
  virtual absl::StatusOr<bool> Abort(const std::string& request_id) = 0;
  virtual absl::StatusOr<serving::v1::ModelInfo> GetModelInfo() = 0;
  // True when the deployment can serve: at least one decode worker READY and, when the default
  // policy is asyncspade, every layer served by a READY selector.
  virtual bool Serving() const = 0;
  // Why Serving() is false, for health answers ("" when serving or when the router cannot say).
  virtual std::string NotServingReason() const { return ""; }
};

}  // namespace asyncspade::controller
