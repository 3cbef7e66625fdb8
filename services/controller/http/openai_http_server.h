// The controller's OpenAI-compatible HTTP front end (cpp-httplib): /v1/completions,
// /v1/chat/completions (both with server-sent-event streaming), /v1/models, /health and /metrics,
// on top of the same GenerationRouter as the gRPC GenerationService. Reference: docs/api.md.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "services/controller/controller_metrics.h"
#include "services/controller/generation_router.h"

namespace asyncspade::controller::http {

struct OpenAiServerOptions {
  std::string host = "127.0.0.1";
  int port = 0;  // 0: the kernel picks a free port; Start() returns it
  // The model name clients send and see. Empty: the router's ModelInfo name.
  std::string model_name;
  // max_tokens of a request that gives none; 0 leaves it to the decode worker (256).
  int default_max_tokens = 0;
  // Worker threads: each open connection holds one while it is served, so this caps the
  // connections (and hence the streams) served at once; more wait to be accepted.
  int max_connections = 512;
  size_t max_body_bytes = size_t{32} << 20;
  // A stream with nothing to send for this long gets an SSE comment line: it keeps proxies from
  // timing out and lets the server notice a client that went away (the write fails) and cancel.
  absl::Duration stream_keepalive = absl::Seconds(1);
  // Stop() lets requests in flight finish for up to this long before cancelling them.
  absl::Duration shutdown_grace = absl::ZeroDuration();
};

class OpenAiHttpServer {
 public:
  // `router` must outlive the server; `metrics` may be null (then /metrics is 404).
  OpenAiHttpServer(GenerationRouter* router, ControllerMetrics* metrics, OpenAiServerOptions options);
  ~OpenAiHttpServer();  // Stop()s
  OpenAiHttpServer(const OpenAiHttpServer&) = delete;
  OpenAiHttpServer& operator=(const OpenAiHttpServer&) = delete;

  // Binds and serves on its own threads; returns the bound port. UNAVAILABLE when the address
  // cannot be bound, FAILED_PRECONDITION when called twice.
  absl::StatusOr<int> Start();
  // Stops accepting, answers new requests on open connections with 503, waits up to
  // options.shutdown_grace for requests in flight, cancels the rest and joins every thread.
  // Idempotent.
  void Stop();

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace asyncspade::controller::http
