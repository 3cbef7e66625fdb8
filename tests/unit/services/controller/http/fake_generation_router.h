// A GenerationRouter that streams scripted chunks, for testing the front ends without workers.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "services/controller/generation_router.h"

namespace asyncspade::controller::testing {

struct FakeScript {
  std::vector<std::string> chunks = {"Hello", ",", " world", "!"};
  absl::Duration chunk_delay = absl::ZeroDuration();
  serving::v1::FinishReason finish_reason = serving::v1::FINISH_REASON_STOP;
  int prompt_tokens = 5;
  // Start() fails with this.
  absl::Status start_error;
  // Instead of a final message, the stream ends with this status (after the chunks).
  absl::Status end_error;
  // After the chunks, wait until cancelled (then end with FINISH_REASON_ABORTED): a worker still
  // decoding. Also for every request whose max_tokens is above `long_request_max_tokens` (> 0).
  bool hang_after_chunks = false;
  int long_request_max_tokens = 0;
};

class FakeGenerationRouter;  // calls tell it when they end

class FakeGenerationCall final : public GenerationCall {
 public:
  FakeGenerationCall(FakeScript script, std::string request_id, std::atomic<int>* cancels,
                     FakeGenerationRouter* router)
      : script_(std::move(script)), request_id_(std::move(request_id)), cancels_(cancels), router_(router) {}
  ~FakeGenerationCall() override;

  bool Next(serving::v1::GenerateResponse* response) override {
    response->Clear();
    response->set_request_id(request_id_);
    if (ended_) return false;
    if (next_chunk_ < script_.chunks.size() && !cancelled()) {
      if (!WaitUntilCancelled(script_.chunk_delay)) {
        response->mutable_chunk()->set_text(script_.chunks[next_chunk_]);
        response->mutable_chunk()->add_token_ids(static_cast<int32_t>(100 + next_chunk_));
        ++next_chunk_;
        return true;
      }
    }
    if (script_.hang_after_chunks && !cancelled()) WaitUntilCancelled(absl::InfiniteDuration());
    ended_ = true;
    if (!cancelled() && !script_.end_error.ok()) {
      status_ = script_.end_error;
      return false;
    }
    serving::v1::GenerateFinal* final = response->mutable_final();
    final->set_finish_reason(cancelled() ? serving::v1::FINISH_REASON_ABORTED : script_.finish_reason);
    final->mutable_usage()->set_prompt_tokens(script_.prompt_tokens);
    final->mutable_usage()->set_completion_tokens(static_cast<int32_t>(next_chunk_));
    final->mutable_timings()->set_queue_seconds(0.002);
    final->mutable_timings()->set_first_token_seconds(0.01);
    final->mutable_timings()->set_total_seconds(0.05);
    final->set_seed(1234);
    final->set_served_by("decode-0");
    final->set_policy(serving::v1::SPARSE_POLICY_ASYNCSPADE);
    return true;
  }

  absl::Status Finish() override { return status_; }

  void Cancel() override {
    absl::MutexLock lock(&mu_);
    if (!cancelled_) cancels_->fetch_add(1);
    cancelled_ = true;
  }

  const std::string& request_id() const override { return request_id_; }

 private:
  bool cancelled() {
    absl::MutexLock lock(&mu_);
    return cancelled_;
  }
  // True when cancelled within `timeout`.
  bool WaitUntilCancelled(absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    mu_.AwaitWithTimeout(absl::Condition(&cancelled_), timeout);
    return cancelled_;
  }

  FakeScript script_;
  std::string request_id_;
  std::atomic<int>* cancels_;
  FakeGenerationRouter* router_;
  size_t next_chunk_ = 0;
  bool ended_ = false;
  absl::Status status_;
  absl::Mutex mu_;
  bool cancelled_ = false;
};

class FakeGenerationRouter final : public GenerationRouter {
 public:
  void SetScript(FakeScript script) {
    absl::MutexLock lock(&mu_);
    script_ = std::move(script);
  }
  void SetServing(bool serving) { serving_.store(serving); }

  absl::StatusOr<std::unique_ptr<GenerationCall>> Start(serving::v1::GenerateRequest request) override {
    absl::MutexLock lock(&mu_);
    requests_.push_back(request);
    if (!script_.start_error.ok()) return script_.start_error;
    if (request.has_token_ids() && request.token_ids().ids().empty()) {
      return absl::InvalidArgumentError("the prompt is an empty list of token ids");
    }
    std::string id = request.request_id().empty() ? "req-" + std::to_string(++next_id_) : request.request_id();
    FakeScript script = script_;
    if (script.long_request_max_tokens > 0 && request.stop().max_tokens() > script.long_request_max_tokens) {
      script.hang_after_chunks = true;
    }
    auto call = std::make_unique<FakeGenerationCall>(std::move(script), id, &cancels_, this);
    live_calls_[id] = call.get();
    return call;
  }

  absl::StatusOr<bool> Abort(const std::string& request_id) override {
    absl::MutexLock lock(&mu_);
    const auto it = live_calls_.find(request_id);
    if (it == live_calls_.end()) return false;
    it->second->Cancel();
    return true;
  }

  void CallEnded(const std::string& request_id) {
    absl::MutexLock lock(&mu_);
    live_calls_.erase(request_id);
  }

  absl::StatusOr<serving::v1::ModelInfo> GetModelInfo() override {
    serving::v1::ModelInfo info;
    info.set_name("fake-model");
    info.set_architecture("FakeForCausalLM");
    info.set_vocab_size(32000);
    info.set_num_layers(4);
    info.set_max_seq_len(4096);
    return info;
  }

  bool Serving() const override { return serving_.load(); }

  std::vector<serving::v1::GenerateRequest> requests() {
    absl::MutexLock lock(&mu_);
    return requests_;
  }
  int cancels() const { return cancels_.load(); }

 private:
  absl::Mutex mu_;
  FakeScript script_ ABSL_GUARDED_BY(mu_);
  std::vector<serving::v1::GenerateRequest> requests_ ABSL_GUARDED_BY(mu_);
  int next_id_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<std::string, FakeGenerationCall*> live_calls_ ABSL_GUARDED_BY(mu_);
  std::atomic<bool> serving_{true};
  std::atomic<int> cancels_{0};
};

inline FakeGenerationCall::~FakeGenerationCall() { router_->CallEnded(request_id_); }

}  // namespace asyncspade::controller::testing
