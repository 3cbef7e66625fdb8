// The decode worker's one engine thread. GenerationEngine is not thread-safe, so everything that
// touches it (submitting, aborting, stepping, reading the KV cache for a selector's re-attach) runs
// on this thread: other threads post commands, which run between two steps. The thread steps
// while any request is waiting or running and sleeps on a condition variable otherwise.
//
// Requests submitted while others run join the next step (continuous batching); the engine's
// batch size and KV blocks bound how many run at once, the rest wait in FIFO order.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/tokenizer/tokenizer.h"
#include "services/decode_worker/engine/generation_engine.h"
#include "services/decode_worker/service/active_request.h"
#include "services/decode_worker/service/request_translator.h"

namespace asyncspade {

// Counters the heartbeat reports (a consistent snapshot taken after each step).
struct EngineLoopLoad {
  int running_requests = 0;
  int waiting_requests = 0;
  int active_requests = 0;  // accepted and not yet finished (running + waiting + finishing)
  double kv_cache_usage = 0.0;
  int64_t kv_blocks_total = 0;
  int64_t steps_total = 0;
  int64_t step_failures_total = 0;
  SparseAttentionCounters sparse;  // the attention policy's counters over every request so far
};

struct EngineLoopOptions {
  std::string worker_id;  // reported as GenerateFinal.served_by
  // Called on the loop thread when a request ends, before its final message is published: adds
  // what the attention policy knows (policy used, sparse stats) to `final`.
  std::function<void(const ActiveRequest& request, serving::v1::GenerateFinal* final)> decorate_final;
  // Called on the loop thread after every step (e.g. the remote selector pool's bookkeeping).
  std::function<void(GenerationEngine& engine)> after_step;
};

class EngineLoop {
 public:
  EngineLoop(std::unique_ptr<GenerationEngine> engine, const Tokenizer* tokenizer, EngineLoopOptions options);
  ~EngineLoop();
  EngineLoop(const EngineLoop&) = delete;
  EngineLoop& operator=(const EngineLoop&) = delete;

  void Start();
  // Ends every request still in flight (FINISH_REASON_ABORTED) and joins the thread.
  void Stop();

  // Hands the request to the engine and waits (about one step at most) for its verdict: the
  // engine's validation error (the request fails alone, nothing was streamed), ALREADY_EXISTS for
  // a request id in use, UNAVAILABLE once stopping.
  absl::StatusOr<std::shared_ptr<ActiveRequest>> Submit(const std::string& request_id, TranslatedRequest request);

  // Ends the request with FINISH_REASON_ABORTED. False when no request with that id is in flight.
  bool Abort(const std::string& request_id);
  // The client went away: abort without anyone to tell.
  void Cancel(const std::shared_ptr<ActiveRequest>& request);

  // Runs `task` on the loop thread between two steps (never concurrently with a step).
  void Post(std::function<void(GenerationEngine&)> task);

  EngineLoopLoad load() const;
  // Requests accepted and not yet finished.
  int active_requests() const;

 private:
  void Loop();
  void RunStep();
  void Dispatch(GenerationEvent& event);
  // Publishes the final message and forgets the request.
  void Complete(const std::shared_ptr<ActiveRequest>& request, FinishReason reason, const std::string& error,
                const SparseAttentionCounters& sparse = {});
  void FinishAll(const std::string& why, bool as_error);
  std::string MatchedStop(const ActiveRequest& request) const;
  void PublishLoad();

  std::unique_ptr<GenerationEngine> engine_;
  const Tokenizer* const tokenizer_;
  const EngineLoopOptions options_;

  mutable absl::Mutex mutex_;
  std::deque<std::function<void(GenerationEngine&)>> commands_ ABSL_GUARDED_BY(mutex_);
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
  absl::flat_hash_map<std::string, std::shared_ptr<ActiveRequest>> by_request_id_ ABSL_GUARDED_BY(mutex_);
  EngineLoopLoad load_ ABSL_GUARDED_BY(mutex_);
  int64_t next_engine_id_ ABSL_GUARDED_BY(mutex_) = 1;

  // Loop thread only.
  absl::flat_hash_map<int64_t, std::shared_ptr<ActiveRequest>> by_engine_id_;
  // Accepted requests that were never scheduled yet, in submission order (see RunStep).
  std::deque<std::shared_ptr<ActiveRequest>> never_scheduled_;
  int64_t steps_total_ = 0;
  int64_t step_failures_total_ = 0;

  std::thread thread_;
};

}  // namespace asyncspade
