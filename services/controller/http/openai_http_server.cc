#include "services/controller/http/openai_http_server.h"

#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/metrics.h"
#include "glog/logging.h"
#include "httplib.h"
#include "nlohmann/json.hpp"
#include "services/controller/generation_service.h"  // RejectionReason
#include "services/controller/http/openai_error.h"
#include "services/controller/http/request_translation.h"

namespace asyncspade::controller::http {
namespace {

using json = ResponseJson;
using serving::v1::GenerateFinal;
using serving::v1::GenerateResponse;

constexpr char kJsonContentType[] = "application/json";
constexpr char kApiLabel[] = "http";
constexpr char kRoutes[] =
    "POST /v1/completions, POST /v1/chat/completions, GET /v1/models, GET /health, GET /metrics";

std::string Dump(const json& value) { return value.dump(-1, ' ', false, json::error_handler_t::replace); }

void SendJson(httplib::Response& res, int http_status, const json& body) {
  res.status = http_status;
  res.set_content(Dump(body), kJsonContentType);
}

void SendError(httplib::Response& res, const absl::Status& status) {
  SendJson(res, HttpStatusFor(status.code()), ErrorBody(status));
}

double SecondsSince(absl::Time start) { return absl::ToDoubleSeconds(absl::Now() - start); }

// One request relayed from the router to an HTTP client. Next() and Finish() run on one thread
// (GenerationCall is not thread-safe); Cancel() may come from any thread.
class CallRelay {
 public:
  CallRelay(std::unique_ptr<GenerationCall> call, ControllerMetrics* metrics, absl::Time accepted)
      : call_(std::move(call)), metrics_(metrics), accepted_(accepted), request_id_(call_->request_id()) {}

  const std::string& request_id() const { return request_id_; }

  bool Next(GenerateResponse* response) {
    if (!call_->Next(response)) return false;
    if (response->has_chunk()) {
      const absl::Time now = absl::Now();
      if (last_chunk_.has_value() && metrics_ != nullptr) {
        metrics_->InterTokenLatency(absl::ToDoubleSeconds(now - *last_chunk_));
      }
      last_chunk_ = now;
    } else if (response->has_final()) {
      final_ = response->final();
    }
    return true;
  }

  // After Next() returned false: the stream's status, and its metrics recorded. When the stream
  // ended without a final message, `final` is made up: ABORTED when we cancelled it, else ERROR.
  struct Outcome {
    absl::Status status;
    bool has_final = false;
    GenerateFinal final;
  };
  Outcome Finish() {
    Outcome outcome;
    outcome.status = call_->Finish();
    outcome.has_final = final_.has_value();
    if (final_.has_value()) {
      outcome.final = *final_;
    } else if (cancelled_.load()) {
      outcome.final.set_finish_reason(serving::v1::FINISH_REASON_ABORTED);
    } else {
      outcome.final.set_finish_reason(serving::v1::FINISH_REASON_ERROR);
      outcome.final.set_error_message(outcome.status.ok() ? "the stream ended without a final message"
                                                          : std::string(outcome.status.message()));
    }
    if (metrics_ != nullptr) metrics_->RequestFinished(outcome.final, SecondsSince(accepted_), kApiLabel);
    return outcome;
  }

  // The client went away or the server is stopping.
  void Cancel() {
    cancelled_.store(true);
    call_->Cancel();
  }

 private:
  std::unique_ptr<GenerationCall> call_;
  ControllerMetrics* metrics_;
  absl::Time accepted_;
  std::string request_id_;
  std::optional<absl::Time> last_chunk_;
  std::optional<GenerateFinal> final_;
  std::atomic<bool> cancelled_{false};
};

// The relays in flight, so that Stop() can wait for them and cancel the rest.
class CallTracker {
 public:
  // False once closed: the caller must not start relaying.
  bool Add(CallRelay* relay) {
    absl::MutexLock lock(&mu_);
    if (closed_) return false;
    relays_.insert(relay);
    return true;
  }
  void Remove(CallRelay* relay) {
    absl::MutexLock lock(&mu_);
    relays_.erase(relay);
  }
  void Close() {
    absl::MutexLock lock(&mu_);
    closed_ = true;
  }
  void AwaitEmpty(absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    auto empty = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return relays_.empty(); };
    mu_.AwaitWithTimeout(absl::Condition(&empty), timeout);
  }
  void CancelAll() {
    absl::MutexLock lock(&mu_);
    // Holding the lock keeps every relay alive: Remove() runs before a relay is destroyed.
    for (CallRelay* relay : relays_) relay->Cancel();
  }

 private:
  absl::Mutex mu_;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  absl::flat_hash_set<CallRelay*> relays_ ABSL_GUARDED_BY(mu_);
};

// A streamed (SSE) response. A pump thread reads the router's stream into a queue, so that the
// HTTP thread can wait with a timeout and write keep-alive comments; a failed write means the
// client went away, and the request is cancelled.
class StreamSession {
 public:
  StreamSession(std::unique_ptr<CallRelay> relay, ResponseBuilder builder, CallTracker* tracker,
                absl::Duration keepalive)
      : relay_(std::move(relay)), builder_(std::move(builder)), tracker_(tracker), keepalive_(keepalive) {
    pump_ = std::thread([this] { Pump(); });
  }

  ~StreamSession() {
    // The response may be dropped without Serve() having run to the end (the client went away
    // before the headers were written): the request must not keep running for nobody.
    if (!ended_.load()) relay_->Cancel();
    pump_.join();
  }

  // Writes the whole stream. Returns false when the client went away.
  bool Serve(httplib::DataSink& sink) {
    for (const json& chunk : builder_.StreamStart()) {
      if (!Write(sink, SseEvent(chunk))) return ClientGone();
    }
    while (true) {
      std::deque<GenerateResponse> batch;
      bool pump_done;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait_for(lock, absl::ToChronoMilliseconds(std::max(keepalive_, absl::Milliseconds(10))),
                     [this] { return !queue_.empty() || pump_done_; });
        batch.swap(queue_);
        pump_done = pump_done_;
      }
      if (batch.empty() && !pump_done) {
        if (!Write(sink, ": keep-alive\n\n")) return ClientGone();
        continue;
      }
      for (const GenerateResponse& response : batch) {
        if (response.has_chunk() && !response.chunk().text().empty()) {
          if (!Write(sink, SseEvent(builder_.StreamText(response.chunk().text())))) return ClientGone();
        }
      }
      if (pump_done) break;
    }
    // The pump has ended: outcome_ is set and no longer written.
    std::string tail;
    if (outcome_.has_final && outcome_.final.finish_reason() != serving::v1::FINISH_REASON_ERROR) {
      for (const json& chunk : builder_.StreamEnd(outcome_.final)) tail += SseEvent(chunk);
    } else {
      // OpenAI's clients raise an APIError on an event carrying "error".
      absl::Status error = outcome_.status;
      if (outcome_.has_final) {
        error = absl::InternalError(absl::StrCat("generation failed: ", outcome_.final.error_message()));
      }
      if (error.ok()) error = absl::InternalError("the stream ended without a final message");
      tail += SseEvent(ErrorBody(error));
    }
    tail += kSseDone;
    if (!Write(sink, tail)) return false;
    sink.done();
    return true;
  }

 private:
  static bool Write(httplib::DataSink& sink, const std::string& data) { return sink.write(data.data(), data.size()); }

  bool ClientGone() {
    VLOG(1) << "HTTP client of request " << relay_->request_id() << " went away: cancelling it";
    relay_->Cancel();
    return false;
  }

  void Pump() {
    GenerateResponse response;
    while (relay_->Next(&response)) {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.push_back(std::move(response));
      cv_.notify_one();
      response = GenerateResponse();
    }
    CallRelay::Outcome outcome = relay_->Finish();
    tracker_->Remove(relay_.get());
    std::lock_guard<std::mutex> lock(mu_);
    outcome_ = std::move(outcome);
    pump_done_ = true;
    ended_.store(true);
    cv_.notify_one();
  }

  std::unique_ptr<CallRelay> relay_;
  ResponseBuilder builder_;
  CallTracker* tracker_;
  absl::Duration keepalive_;

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<GenerateResponse> queue_;
  bool pump_done_ = false;
  CallRelay::Outcome outcome_;
  std::atomic<bool> ended_{false};
  std::thread pump_;
};

int64_t UnixSeconds() { return absl::ToUnixSeconds(absl::Now()); }

bool IsValidRequestId(const std::string& id) {
  if (id.empty() || id.size() > 128) return false;
  for (const char c : id) {
    if (c < 0x21 || c > 0x7e) return false;  // printable ASCII, no spaces
  }
  return true;
}

// httplib 0.11 listens with a backlog of 5: a burst of connections (a benchmark opening hundreds
// of streams at once) overflows the accept queue. Its listening socket is protected, so the
// backlog is raised from a subclass; listen() on a listening socket only updates the backlog.
class ListeningServer : public httplib::Server {
 public:
  bool RaiseBacklog(int backlog) { return ::listen(svr_sock_, backlog) == 0; }
};

}  // namespace

class OpenAiHttpServer::Impl {
 public:
  Impl(GenerationRouter* router, ControllerMetrics* metrics, OpenAiServerOptions options)
      : router_(router), metrics_(metrics), options_(std::move(options)), started_unix_(UnixSeconds()) {}

  absl::StatusOr<int> Start() {
    if (started_.exchange(true)) return absl::FailedPreconditionError("the HTTP server was already started");
    if (!options_.model_name.empty()) {
      absl::MutexLock lock(&model_mu_);
      model_name_ = options_.model_name;
    } else {
      ModelName();  // resolve early when the router can already say; retried per request otherwise
    }
    const int threads = std::max(1, options_.max_connections);
    server_.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
    // httplib's default also sets SO_REUSEPORT, which lets a second server bind the same port and
    // silently take half the connections; a port in use must be an error instead.
    server_.set_socket_options([](int sock) {
      const int yes = 1;
      setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    });
    server_.set_tcp_nodelay(true);  // SSE chunks are small: don't let Nagle hold them back
    // httplib closes a keep-alive connection after 5 requests by default; benchmark clients send
    // thousands over one connection.
    server_.set_keep_alive_max_count(10000);
    server_.set_payload_max_length(options_.max_body_bytes);
    RegisterRoutes();

    int port = options_.port;
    if (port == 0) {
      port = server_.bind_to_any_port(options_.host);
      if (port < 0) port = 0;
    } else if (!server_.bind_to_port(options_.host, port)) {
      port = 0;
    }
    if (port <= 0) {
      return absl::UnavailableError(absl::StrCat(
          "cannot bind the OpenAI HTTP server to ", options_.host, ":", options_.port,
          ": the port is in use or the host is not an address of this machine; pick another HTTP port (0 picks a "
          "free one)"));
    }
    if (!server_.RaiseBacklog(std::max(options_.max_connections, 128))) {
      PLOG(WARNING) << "cannot raise the HTTP listen backlog; bursts of connections may be refused";
    }
    listen_thread_ = std::thread([this] {
      if (!server_.listen_after_bind()) LOG(ERROR) << "the OpenAI HTTP server's accept loop failed";
      listen_returned_.store(true);
    });
    // Server::stop() is a no-op until the listen loop runs; wait for it so Stop() cannot miss it.
    while (!server_.is_running() && !listen_returned_.load()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    LOG(INFO) << "OpenAI-compatible HTTP server listening on http://" << options_.host << ":" << port;
    return port;
  }

  void Stop() {
    if (!started_.load() || stopped_.exchange(true)) return;
    stopping_.store(true);
    tracker_.Close();
    server_.stop();  // no new connections; open ones end after their current request
    tracker_.AwaitEmpty(options_.shutdown_grace);
    tracker_.CancelAll();
    if (listen_thread_.joinable()) listen_thread_.join();
    LOG(INFO) << "OpenAI-compatible HTTP server stopped";
  }

 private:
  void RegisterRoutes() {
    server_.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) {
      HandleGenerate(req, res, OpenAiEndpoint::kCompletions);
    });
    server_.Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res) {
      HandleGenerate(req, res, OpenAiEndpoint::kChatCompletions);
    });
    server_.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) { HandleModels(res); });
    server_.Get("/v1/models/(.+)", [this](const httplib::Request& req, httplib::Response& res) {
      HandleModel(req.matches[1].str(), res);
    });
    server_.Get("/health", [this](const httplib::Request&, httplib::Response& res) { HandleHealth(res); });
    server_.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
      if (metrics_ == nullptr) {
        SendError(res, absl::NotFoundError("metrics are not enabled on this server"));
        return;
      }
      res.set_content(metrics_->Render(), metrics::kExpositionContentType);
    });
    // The right path with the wrong method says so, rather than a bare 404.
    for (const char* path : {"/v1/completions", "/v1/chat/completions"}) {
      server_.Get(path, [path](const httplib::Request&, httplib::Response& res) {
        MethodNotAllowed(res, path, "POST");
      });
    }
    for (const char* path : {"/v1/models", "/health", "/metrics"}) {
      server_.Post(path, [path](const httplib::Request&, httplib::Response& res) {
        MethodNotAllowed(res, path, "GET");
      });
    }
    server_.set_error_handler(httplib::Server::HandlerWithResponse([this](const httplib::Request& req,
                                                                          httplib::Response& res) {
      if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;  // ours already
      absl::Status status;
      switch (res.status) {
        case 404:
          status = absl::NotFoundError(absl::StrCat("no route for ", req.method, " ", req.path,
                                                    "; this server serves ", kRoutes));
          break;
        case 413:
          status = absl::InvalidArgumentError(absl::StrCat("the request body is larger than the limit of ",
                                                           options_.max_body_bytes, " bytes"));
          break;
        case 400: status = absl::InvalidArgumentError("malformed HTTP request"); break;
        default: status = absl::UnknownError(absl::StrCat("HTTP error ", res.status));
      }
      const int http_status = res.status;
      SendJson(res, http_status, ErrorBody(status));
      return httplib::Server::HandlerResponse::Handled;
    }));
    server_.set_exception_handler([](const httplib::Request& req, httplib::Response& res, std::exception_ptr ep) {
      std::string what = "unknown exception";
      try {
        if (ep) std::rethrow_exception(ep);
      } catch (const std::exception& e) {
        what = e.what();
      } catch (...) {
      }
      LOG(ERROR) << "HTTP handler for " << req.method << " " << req.path << " threw: " << what;
      SendError(res, absl::InternalError(absl::StrCat("internal error while serving ", req.path, ": ", what)));
    });
  }

  static void MethodNotAllowed(httplib::Response& res, const std::string& path, const std::string& allowed) {
    res.set_header("Allow", allowed);
    json body = ErrorBody(absl::InvalidArgumentError(absl::StrCat(path, " only accepts ", allowed)));
    body["error"]["code"] = "method_not_allowed";
    SendJson(res, 405, body);
  }

  // The served name: the option, else the router's model (cached once known).
  std::string ModelName() {
    {
      absl::MutexLock lock(&model_mu_);
      if (!model_name_.empty()) return model_name_;
    }
    absl::StatusOr<serving::v1::ModelInfo> info = router_->GetModelInfo();
    if (!info.ok() || info->name().empty()) return "";
    absl::MutexLock lock(&model_mu_);
    model_name_ = info->name();
    return model_name_;
  }

  json ModelCard(const std::string& name) {
    json card = {{"id", name}, {"object", "model"}, {"created", started_unix_}, {"owned_by", "asyncspade"}};
    if (absl::StatusOr<serving::v1::ModelInfo> info = router_->GetModelInfo(); info.ok()) {
      card["max_model_len"] = info->max_seq_len();
      card["root"] = info->name();
    }
    return card;
  }

  void HandleModels(httplib::Response& res) {
    const std::string name = ModelName();
    json data = json::array();
    if (!name.empty()) data.push_back(ModelCard(name));
    SendJson(res, 200, {{"object", "list"}, {"data", std::move(data)}});
  }

  void HandleModel(const std::string& id, httplib::Response& res) {
    const std::string name = ModelName();
    if (name.empty() || id != name) {
      SendError(res, WithParam(absl::NotFoundError(absl::StrCat("the model '", id, "' is not served here; this server "
                                                                "serves '", name, "'")),
                               "model"));
      return;
    }
    SendJson(res, 200, ModelCard(name));
  }

  void HandleHealth(httplib::Response& res) {
    if (stopping_.load()) {
      SendJson(res, 503, {{"status", "shutting_down"}, {"message", "the controller is shutting down"}});
    } else if (router_->Serving()) {
      SendJson(res, 200, {{"status", "serving"}});
    } else {
      std::string reason = router_->NotServingReason();
      if (reason.empty()) {
        reason = "no decode worker is READY, or the default policy is asyncspade and not every layer is served by a "
                 "READY KV selector; see `asyncspade ctl status`";
      }
      SendJson(res, 503, {{"status", "not_serving"}, {"message", reason}});
    }
  }

  void Reject(httplib::Response& res, const absl::Status& status) {
    if (metrics_ != nullptr) metrics_->RequestRejected(RejectionReason(status));
    SendError(res, status);
  }

  void HandleGenerate(const httplib::Request& req, httplib::Response& res, OpenAiEndpoint endpoint) {
    if (stopping_.load()) {
      Reject(res, absl::UnavailableError("the controller is shutting down; retry on another replica"));
      return;
    }
    const absl::Time accepted = absl::Now();
    const std::string model = ModelName();
    TranslationOptions translation{.served_model = model, .default_max_tokens = options_.default_max_tokens};
    absl::StatusOr<OpenAiRequest> parsed = endpoint == OpenAiEndpoint::kCompletions
                                               ? ParseCompletionRequest(req.body, translation)
                                               : ParseChatCompletionRequest(req.body, translation);
    if (!parsed.ok()) {
      Reject(res, parsed.status());
      return;
    }
    if (req.has_header("X-Request-Id")) {
      const std::string id = req.get_header_value("X-Request-Id");
      if (!IsValidRequestId(id)) {
        Reject(res, absl::InvalidArgumentError("the X-Request-Id header must be 1-128 printable ASCII characters "
                                               "without spaces"));
        return;
      }
      parsed->generate.set_request_id(id);
    }
    absl::StatusOr<std::unique_ptr<GenerationCall>> call = router_->Start(std::move(parsed->generate));
    if (!call.ok()) {
      Reject(res, call.status());
      return;
    }
    if (metrics_ != nullptr) metrics_->RequestStarted();
    auto relay = std::make_unique<CallRelay>(std::move(*call), metrics_, accepted);
    res.set_header("X-Request-Id", relay->request_id());
    ResponseBuilder builder(endpoint, relay->request_id(), UnixSeconds(), model.empty() ? "asyncspade" : model,
                            parsed->include_usage);
    if (!tracker_.Add(relay.get())) {
      // Stop() began between the check above and now.
      relay->Cancel();
      GenerateResponse ignored;
      while (relay->Next(&ignored)) {
      }
      relay->Finish();
      SendError(res, absl::UnavailableError("the controller is shutting down; retry on another replica"));
      return;
    }
    if (parsed->stream) {
      auto session = std::make_shared<StreamSession>(std::move(relay), std::move(builder), &tracker_,
                                                     options_.stream_keepalive);
      res.set_header("Cache-Control", "no-cache");
      res.set_header("X-Accel-Buffering", "no");  // nginx: do not buffer the stream
      res.set_chunked_content_provider(
          "text/event-stream",
          [session](size_t /*offset*/, httplib::DataSink& sink) { return session->Serve(sink); },
          [session](bool /*success*/) {});  // keeps the session alive as long as the response
      return;
    }
    RespondWhole(*relay, builder, res);
  }

  void RespondWhole(CallRelay& relay, const ResponseBuilder& builder, httplib::Response& res) {
    std::string text;
    GenerateResponse response;
    while (relay.Next(&response)) {
      if (response.has_chunk()) text += response.chunk().text();
    }
    CallRelay::Outcome outcome = relay.Finish();
    tracker_.Remove(&relay);
    if (!outcome.has_final) {
      SendError(res, outcome.status.ok() ? absl::InternalError("the stream ended without a final message")
                                         : outcome.status);
      return;
    }
    if (outcome.final.finish_reason() == serving::v1::FINISH_REASON_ERROR) {
      SendError(res, absl::InternalError(absl::StrCat("generation failed: ", outcome.final.error_message())));
      return;
    }
    SendJson(res, 200, builder.Complete(text, outcome.final));
  }

  GenerationRouter* router_;
  ControllerMetrics* metrics_;
  OpenAiServerOptions options_;
  const int64_t started_unix_;
  ListeningServer server_;
  std::thread listen_thread_;
  std::atomic<bool> started_{false};
  std::atomic<bool> stopped_{false};
  std::atomic<bool> stopping_{false};
  std::atomic<bool> listen_returned_{false};
  CallTracker tracker_;
  absl::Mutex model_mu_;
  std::string model_name_ ABSL_GUARDED_BY(model_mu_);
};

OpenAiHttpServer::OpenAiHttpServer(GenerationRouter* router, ControllerMetrics* metrics, OpenAiServerOptions options)
    : impl_(std::make_unique<Impl>(router, metrics, std::move(options))) {}

OpenAiHttpServer::~OpenAiHttpServer() { Stop(); }

absl::StatusOr<int> OpenAiHttpServer::Start() { return impl_->Start(); }

void OpenAiHttpServer::Stop() { impl_->Stop(); }

}  // namespace asyncspade::controller::http
