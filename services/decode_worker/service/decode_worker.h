// The decode-worker process as a library (main.cc is a thin wrapper; tests run it in-process):
// its gRPC DecodeWorkerService, the model, tokenizer and generation engine driven by one engine
// loop thread, the remote selector pool, and its membership in the deployment (register with the
// controller, heartbeat its load, drain, deregister).
//
// Lifecycle: Start() serves gRPC and registers as STARTING (so the controller sees a slow model
// load), loads the model, then reports READY. Drain (the controller's Drain RPC or a heartbeat's
// drain_requested) stops accepting requests; the running ones finish and the heartbeat then shows
// an idle DRAINING worker. Shutdown() drains for up to a timeout, aborts what is left and
// deregisters.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "common/config/deployment_config.h"
#include "common/control/member_client.h"
#include "common/data_plane/rendezvous_store.h"
#include "common/model_config.h"
#include "common/tokenizer/chat_template.h"
#include "common/tokenizer/tokenizer.h"
#include "grpcpp/server.h"
#include "services/decode_worker/service/decode_worker_service.h"
#include "services/decode_worker/service/engine_loop.h"
#include "services/decode_worker/service/remote_selector_pool.h"

namespace asyncspade {

struct DecodeWorkerOptions {
  DeploymentConfig deployment;
  std::string controller_address;  // host:port of the controller (membership, rendezvous store)
  std::string member_id = "decode-worker-0";
  std::string host = "127.0.0.1";  // gRPC and data-plane interface; also what the controller dials
  int port = 0;                    // 0: any free port
  // {"cpu"} or GPU ordinals {"0", "1"} (tensor parallel over them; needs a CUDA build).
  std::vector<std::string> devices = {"cpu"};
  // Data-plane timing (tests shorten them).
  absl::Duration connect_timeout = absl::Seconds(20);
  absl::Duration peer_timeout = absl::Seconds(10);
  // false: decode steps take the sparse path even while the budget covers the whole context (so a
  // test can check that such selections reproduce dense attention). Production keeps true.
  bool sparse_dense_below_threshold = true;
  // Called on the decode loop thread after every step. Tests use it to hold the loop until the
  // selectors answered (lockstep), which makes selection timing deterministic.
  std::function<void(RemoteSelectorPool&)> after_step_for_tests;
};

// Reads keys back from the engine's paged KV cache (CPU or GPU runner) for the selector pool
// (decode loop thread).
class EngineKvKeyReader : public KvKeyReader {
 public:
  void Bind(GenerationEngine* engine) { engine_ = engine; }
  bool ReadKeys(int64_t sequence_id, int layer, int32_t start, int32_t num_tokens, float* out) const override;

 private:
  GenerationEngine* engine_ = nullptr;
};

class DecodeWorker {
 public:
  // Checks the options and the deployment against the model's config.json (cheap; the weights are
  // loaded by Start()). Errors name the key or flag to fix.
  static absl::StatusOr<std::unique_ptr<DecodeWorker>> Create(DecodeWorkerOptions options);
  ~DecodeWorker();
  DecodeWorker(const DecodeWorker&) = delete;
  DecodeWorker& operator=(const DecodeWorker&) = delete;

  // Serves gRPC, registers (STARTING), loads the model, reports READY. On an error the worker has
  // deregistered and stopped serving.
  absl::Status Start();
  // Stops taking requests; those in flight finish. Idempotent.
  void Drain(const std::string& why);
  // Drains for up to `drain_timeout`, aborts what is left, closes the selector links, stops the
  // server and deregisters. Idempotent.
  void Shutdown(absl::Duration drain_timeout);

  const std::string& member_id() const { return options_.member_id; }
  // host:port of the gRPC service (after Start).
  std::string address() const;
  const ModelConfig& model_config() const { return model_config_; }
  bool draining() const { return draining_; }

  // After Start(); for tests and metrics.
  EngineLoop* engine_loop() { return loop_.get(); }
  RemoteSelectorPool* selector_pool() { return pool_.get(); }
  control::v1::Load CurrentLoad() const;

 private:
  DecodeWorker(DecodeWorkerOptions options, ModelConfig model_config, int max_seq_len);
  absl::Status LoadAndServe();
  absl::Status ApplyAssignment(const control::v1::Assignment& assignment);
  void WatchMembership();

  const DecodeWorkerOptions options_;
  const ModelConfig model_config_;
  const int max_seq_len_;

  std::unique_ptr<DecodeWorkerServiceImpl> service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  std::unique_ptr<data_plane::RendezvousStore> store_;
  std::unique_ptr<MemberClient> member_;

  std::unique_ptr<Tokenizer> tokenizer_;
  std::optional<ChatTemplate> chat_template_;
  EngineKvKeyReader key_reader_;
  std::unique_ptr<RemoteSelectorPool> pool_;
  std::unique_ptr<EngineLoop> loop_;

  mutable absl::Mutex mutex_;
  bool pool_ready_ ABSL_GUARDED_BY(mutex_) = false;
  std::optional<control::v1::Assignment> pending_assignment_ ABSL_GUARDED_BY(mutex_);

  std::atomic<bool> draining_{false};
  std::atomic<bool> shut_down_{false};
  absl::Notification stop_watching_;
  std::thread watcher_;
};

}  // namespace asyncspade
