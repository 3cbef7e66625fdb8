#include "services/decode_worker/service/engine_loop.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "glog/logging.h"

namespace asyncspade {
namespace {

// How many prompt tokens the engine primes its detokenizer with (generation_engine.cc); the
// matched stop string is recovered with the same context.
constexpr size_t kDetokenizerContext = 4;

double Seconds(absl::Duration d) { return absl::ToDoubleSeconds(std::max(d, absl::ZeroDuration())); }

}  // namespace

EngineLoop::EngineLoop(std::unique_ptr<GenerationEngine> engine, const Tokenizer* tokenizer, EngineLoopOptions options)
    : engine_(std::move(engine)), tokenizer_(tokenizer), options_(std::move(options)) {
  PublishLoad();
}

EngineLoop::~EngineLoop() { Stop(); }

void EngineLoop::Start() {
  absl::MutexLock lock(&mutex_);
  if (thread_.joinable() || stopping_) return;
  thread_ = std::thread([this] { Loop(); });
}

void EngineLoop::Stop() {
  {
    absl::MutexLock lock(&mutex_);
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

absl::StatusOr<std::shared_ptr<ActiveRequest>> EngineLoop::Submit(const std::string& request_id,
                                                                  TranslatedRequest request) {
  struct Verdict {
    absl::Notification done;
    absl::Status status;
  };
  auto verdict = std::make_shared<Verdict>();
  std::shared_ptr<ActiveRequest> active;
  {
    absl::MutexLock lock(&mutex_);
    if (stopping_) {
      return absl::UnavailableError(absl::StrCat("decode worker ", options_.worker_id,
                                                 " is shutting down; retry on another decode worker"));
    }
    if (by_request_id_.contains(request_id)) {
      return absl::AlreadyExistsError(absl::StrCat("request id '", request_id,
                                                   "' is already in flight on this decode worker; use a unique id"));
    }
    active = std::make_shared<ActiveRequest>(request_id, next_engine_id_++, std::move(request), absl::Now());
    by_request_id_[request_id] = active;
    // Queued under the same lock as the stopping check, so the loop runs it before it exits.
    commands_.push_back([this, active, verdict](GenerationEngine& engine) {
      verdict->status = engine.Submit(active->engine_id(), active->translated().engine_request);
      if (verdict->status.ok()) {
        by_engine_id_[active->engine_id()] = active;
        never_scheduled_.push_back(active);
      }
      verdict->done.Notify();
    });
  }
  verdict->done.WaitForNotification();
  if (!verdict->status.ok()) {
    absl::MutexLock lock(&mutex_);
    by_request_id_.erase(request_id);
    return verdict->status;
  }
  return active;
}

bool EngineLoop::Abort(const std::string& request_id) {
  std::shared_ptr<ActiveRequest> active;
  {
    absl::MutexLock lock(&mutex_);
    auto it = by_request_id_.find(request_id);
    if (it == by_request_id_.end() || it->second->finished()) return false;
    active = it->second;
  }
  Cancel(active);
  return true;
}

void EngineLoop::Cancel(const std::shared_ptr<ActiveRequest>& request) {
  Post([this, request](GenerationEngine& engine) {
    if (!by_engine_id_.contains(request->engine_id())) return;  // already finished
    request->loop_state().abort_requested = true;
    // NOT_FOUND only when it already finished in the engine; its event is on its way.
    engine.Abort(request->engine_id()).IgnoreError();
  });
}

void EngineLoop::Post(std::function<void(GenerationEngine&)> task) {
  absl::MutexLock lock(&mutex_);
  if (stopping_ && !thread_.joinable()) return;
  commands_.push_back(std::move(task));
}

EngineLoopLoad EngineLoop::load() const {
  absl::MutexLock lock(&mutex_);
  EngineLoopLoad load = load_;
  load.active_requests = static_cast<int>(by_request_id_.size());
  return load;
}

int EngineLoop::active_requests() const {
  absl::MutexLock lock(&mutex_);
  return static_cast<int>(by_request_id_.size());
}

void EngineLoop::PublishLoad() {
  EngineLoopLoad load;
  load.running_requests = engine_->num_running();
  load.waiting_requests = engine_->num_waiting();
  load.kv_cache_usage = engine_->kv_usage();
  load.kv_blocks_total = engine_->kv_blocks_total();
  load.steps_total = steps_total_;
  load.step_failures_total = step_failures_total_;
  load.sparse = engine_->sparse_totals();
  absl::MutexLock lock(&mutex_);
  load_ = load;
}

void EngineLoop::Loop() {
  while (true) {
    std::deque<std::function<void(GenerationEngine&)>> commands;
    bool stopping = false;
    {
      absl::MutexLock lock(&mutex_);
      if (!engine_->HasWork()) {
        auto wake = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) { return stopping_ || !commands_.empty(); };
        mutex_.Await(absl::Condition(&wake));
      }
      commands.swap(commands_);
      stopping = stopping_;
    }
    for (auto& command : commands) command(*engine_);
    if (stopping) {
      FinishAll(absl::StrCat("decode worker ", options_.worker_id, " is shutting down"), /*as_error=*/false);
      absl::MutexLock lock(&mutex_);
      if (commands_.empty()) break;
      continue;  // submissions queued before the stop still get their verdict
    }
    if (engine_->HasWork()) RunStep();
    PublishLoad();
  }
  PublishLoad();
}

void EngineLoop::RunStep() {
  const absl::Time step_start = absl::Now();
  absl::StatusOr<std::vector<GenerationEvent>> events = engine_->Step();
  ++steps_total_;
  if (!events.ok()) {
    // The forward failed for the whole batch and the cache of its sequences is unspecified; the
    // requests cannot continue, but the worker can serve new ones.
    ++step_failures_total_;
    LOG(ERROR) << "decode worker " << options_.worker_id << ": engine step failed: " << events.status();
    PublishLoad();
    FinishAll(absl::StrCat("the decode worker's engine step failed: ", events.status().message()), /*as_error=*/true);
    return;
  }
  // Published before any request learns it finished, so whoever sees the end also sees its KV
  // blocks freed.
  PublishLoad();
  for (GenerationEvent& event : *events) {
    auto it = by_engine_id_.find(event.request_id);
    if (it == by_engine_id_.end()) continue;  // ended by the worker already
    std::shared_ptr<ActiveRequest> active = it->second;
    ActiveRequest::LoopState& state = active->loop_state();
    if (!state.scheduled) state.scheduled = step_start;
    if (event.token_id) {
      const absl::Time now = absl::Now();
      if (!state.first_token) state.first_token = now;
      state.last_token = now;
      state.generated.push_back(*event.token_id);
      state.streamed_text += event.text;
      active->Append(*event.token_id, event.text);
    } else if (!event.text.empty()) {
      state.streamed_text += event.text;
      active->AppendText(event.text);
    }
    if (event.finished) Complete(active, event.finish_reason, "", event.sparse_stats);
  }
  // Waiting requests that were never scheduled sit at the back of the engine's FIFO queue (a
  // preempted sequence goes back to its front), so every older one beyond the queue's length was
  // admitted by this step.
  const size_t still_waiting = static_cast<size_t>(engine_->num_waiting());
  while (never_scheduled_.size() > still_waiting) {
    never_scheduled_.front()->loop_state().scheduled = step_start;
    never_scheduled_.pop_front();
  }
  if (options_.after_step) options_.after_step(*engine_);
}

void EngineLoop::FinishAll(const std::string& why, bool as_error) {
  std::vector<std::shared_ptr<ActiveRequest>> all;
  all.reserve(by_engine_id_.size());
  for (auto& [id, active] : by_engine_id_) all.push_back(active);
  for (const auto& active : all) {
    engine_->Abort(active->engine_id()).IgnoreError();
    if (as_error) {
      Complete(active, FinishReason::kNone, why);
    } else {
      active->loop_state().abort_reason = why;
      Complete(active, FinishReason::kAbort, "");
    }
  }
}

std::string EngineLoop::MatchedStop(const ActiveRequest& request) const {
  const std::vector<std::string>& stops = request.translated().engine_request.stop_strings;
  if (tokenizer_ == nullptr || stops.empty()) return "";
  const std::vector<int32_t>& prompt = request.translated().engine_request.prompt_ids;
  const size_t context = std::min(prompt.size(), kDetokenizerContext);
  std::vector<int32_t> ids(prompt.end() - static_cast<std::ptrdiff_t>(context), prompt.end());
  const std::string prefix = tokenizer_->Decode(ids, /*skip_special_tokens=*/true);
  const std::vector<int32_t>& generated = request.loop_state().generated;
  ids.insert(ids.end(), generated.begin(), generated.end());
  std::string text = tokenizer_->Decode(ids, /*skip_special_tokens=*/true);
  if (text.compare(0, prefix.size(), prefix) == 0) text.erase(0, prefix.size());
  // The engine stops at the earliest match; at equal positions the longer string is the one shown
  // to be a match (it contains the shorter).
  std::string best;
  size_t best_at = std::string::npos;
  for (const std::string& stop : stops) {
    const size_t at = text.find(stop);
    if (at == std::string::npos) continue;
    if (at < best_at || (at == best_at && stop.size() > best.size())) {
      best_at = at;
      best = stop;
    }
  }
  return best;
}

void EngineLoop::Complete(const std::shared_ptr<ActiveRequest>& active, FinishReason reason,
                          const std::string& error, const SparseAttentionCounters& sparse) {
  const absl::Time now = absl::Now();
  ActiveRequest::LoopState& state = active->loop_state();
  const TranslatedRequest& translated = active->translated();
  serving::v1::GenerateFinal final;
  if (!error.empty()) {
    final.set_finish_reason(serving::v1::FINISH_REASON_ERROR);
    final.set_error_message(error);
  } else {
    final.set_finish_reason(ToProtoFinishReason(reason));
    if (reason == FinishReason::kStopString) final.set_matched_stop(MatchedStop(*active));
    // Says why the worker itself aborted it (e.g. shutdown); empty for a client's abort.
    if (reason == FinishReason::kAbort) final.set_error_message(state.abort_reason);
  }
  final.mutable_usage()->set_prompt_tokens(static_cast<int32_t>(translated.engine_request.prompt_ids.size()));
  final.mutable_usage()->set_completion_tokens(static_cast<int32_t>(state.generated.size()));
  serving::v1::Timings* timings = final.mutable_timings();
  const absl::Time scheduled = state.scheduled.value_or(now);
  timings->set_queue_seconds(Seconds(scheduled - active->accepted()));
  if (state.first_token) {
    timings->set_first_token_seconds(Seconds(*state.first_token - active->accepted()));
    const double decode = Seconds(state.last_token - *state.first_token);
    timings->set_decode_seconds(decode);
    if (state.generated.size() > 1) {
      timings->set_mean_inter_token_seconds(decode / static_cast<double>(state.generated.size() - 1));
    }
  }
  timings->set_total_seconds(Seconds(now - active->accepted()));
  final.set_seed(translated.seed);
  final.set_served_by(options_.worker_id);
  final.set_policy(ToProtoSparsePolicy(translated.sparse.policy));
  serving::v1::SparseStats* stats = final.mutable_sparse_stats();
  stats->set_sparse_layer_steps(sparse.sparse_layer_steps);
  stats->set_dense_fallbacks(sparse.dense_fallbacks);
  stats->set_stale_selections(sparse.stale_selections);
  if (options_.decorate_final) options_.decorate_final(*active, &final);

  by_engine_id_.erase(active->engine_id());
  std::erase(never_scheduled_, active);
  {
    absl::MutexLock lock(&mutex_);
    auto it = by_request_id_.find(active->request_id());
    if (it != by_request_id_.end() && it->second == active) by_request_id_.erase(it);
  }
  active->Finish(std::move(final));
}

}  // namespace asyncspade
