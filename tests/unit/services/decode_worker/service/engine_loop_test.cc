// The engine loop thread over a scripted model runner: tasks posted to the loop run between steps
// on its thread, a failing forward ends the requests in flight with an error while the loop keeps
// serving, Stop() ends everything with ABORTED, and request ids are unique.
#include "services/decode_worker/service/engine_loop.h"

#include <atomic>
#include <future>
#include <thread>

#include "absl/synchronization/notification.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace asyncspade {
namespace {

using ::testing::HasSubstr;

constexpr int kVocab = 16;
constexpr int32_t kToken = 5;  // what the scripted model always predicts

// Predicts kToken everywhere; fails a forward when told to; can be slowed down.
class ScriptedRunner : public ModelRunner {
 public:
  ScriptedRunner() {
    config_.vocab_size = kVocab;
    config_.max_position_embeddings = 256;
    config_.num_layers = 1;
    config_.num_heads = 1;
    config_.num_kv_heads = 1;
    config_.head_dim = 4;
    config_.eos_token_ids = {1};
    layout_.num_blocks = 64;
    layout_.num_kv_heads = 1;
    layout_.page_size = 16;
    layout_.head_dim = 4;
  }
  const ModelConfig& config() const override { return config_; }
  const kernels::PagedKvLayout& kv_layout() const override { return layout_; }
  absl::Status Forward(const ForwardBatch& batch, ForwardOutput* output) override {
    in_forward = true;
    ++forwards;
    if (delay > absl::ZeroDuration()) absl::SleepFor(delay);
    if (fail_next.exchange(false)) {
      in_forward = false;
      return absl::InternalError("scripted forward failure");
    }
    output->vocab_size = kVocab;
    output->logits.clear();
    output->row_offsets = {0};
    for (const ForwardSequence& s : batch.sequences) {
      const int rows = s.logits == LogitsWanted::kNone ? 0 : s.logits == LogitsWanted::kLast ? 1 : static_cast<int>(s.tokens.size());
      for (int r = 0; r < rows; ++r) {
        std::vector<float> row(kVocab, 0.0f);
        row[kToken] = 10.0f;
        output->logits.insert(output->logits.end(), row.begin(), row.end());
      }
      output->row_offsets.push_back(output->row_offsets.back() + rows);
    }
    in_forward = false;
    return absl::OkStatus();
  }

  std::atomic<bool> fail_next{false};
  std::atomic<bool> in_forward{false};
  std::atomic<int> forwards{0};
  absl::Duration delay = absl::ZeroDuration();

 private:
  ModelConfig config_;
  kernels::PagedKvLayout layout_;
};

class EngineLoopTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto runner = std::make_unique<ScriptedRunner>();
    runner_ = runner.get();
    runner_->delay = absl::Milliseconds(2);
    GenerationEngineOptions options;
    options.sparse_default.policy = SparsePolicy::kDense;
    auto engine = GenerationEngine::Create(std::move(runner), options);
    ASSERT_TRUE(engine.ok()) << engine.status();
    EngineLoopOptions loop_options;
    loop_options.worker_id = "w0";
    loop_ = std::make_unique<EngineLoop>(*std::move(engine), nullptr, loop_options);
    loop_->Start();
  }
  void TearDown() override { loop_.reset(); }

  static TranslatedRequest Request(int max_tokens) {
    TranslatedRequest request;
    request.engine_request.prompt_ids = {2, 3, 4};
    request.engine_request.max_tokens = max_tokens;
    request.engine_request.ignore_eos = true;
    request.sparse.policy = SparsePolicy::kDense;
    request.seed = 17;
    return request;
  }
  // Everything the request produced until its final message.
  static std::pair<std::vector<int32_t>, serving::v1::GenerateFinal> Drain(ActiveRequest& request) {
    std::vector<int32_t> tokens;
    while (true) {
      ActiveRequest::Output output = request.Take(absl::Seconds(10));
      tokens.insert(tokens.end(), output.token_ids.begin(), output.token_ids.end());
      if (output.final.has_value()) return {tokens, *output.final};
    }
  }

  ScriptedRunner* runner_ = nullptr;
  std::unique_ptr<EngineLoop> loop_;
};

TEST_F(EngineLoopTest, RequestsStreamTheirTokensAndFinishWithUsageAndTimings) {
  auto a = loop_->Submit("a", Request(20));
  auto b = loop_->Submit("b", Request(30));
  ASSERT_TRUE(a.ok() && b.ok());
  auto [tokens_a, final_a] = Drain(**a);
  auto [tokens_b, final_b] = Drain(**b);
  EXPECT_EQ(tokens_a, std::vector<int32_t>(20, kToken));
  EXPECT_EQ(tokens_b, std::vector<int32_t>(30, kToken));
  EXPECT_EQ(final_a.finish_reason(), serving::v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(final_a.usage().prompt_tokens(), 3);
  EXPECT_EQ(final_a.usage().completion_tokens(), 20);
  EXPECT_EQ(final_a.served_by(), "w0");
  EXPECT_EQ(final_a.seed(), 17u);
  EXPECT_GT(final_b.timings().decode_seconds(), 0.0);
  // Both ran in the same steps (continuous batching): 30 steps for both, not 50.
  EXPECT_LE(runner_->forwards.load(), 31);
  EXPECT_EQ(loop_->active_requests(), 0);
}

TEST_F(EngineLoopTest, PostedTasksRunOnTheLoopThreadBetweenSteps) {
  auto a = loop_->Submit("a", Request(40));
  ASSERT_TRUE(a.ok());
  std::vector<std::future<std::pair<std::thread::id, bool>>> results;
  for (int i = 0; i < 10; ++i) {
    auto promise = std::make_shared<std::promise<std::pair<std::thread::id, bool>>>();
    results.push_back(promise->get_future());
    loop_->Post([this, promise](GenerationEngine& engine) {
      promise->set_value({std::this_thread::get_id(), runner_->in_forward.load()});
    });
    absl::SleepFor(absl::Milliseconds(3));
  }
  std::thread::id loop_thread;
  for (auto& result : results) {
    auto [thread, during_forward] = result.get();
    EXPECT_NE(thread, std::this_thread::get_id());
    if (loop_thread == std::thread::id()) loop_thread = thread;
    EXPECT_EQ(thread, loop_thread) << "always the one loop thread";
    EXPECT_FALSE(during_forward);
  }
  Drain(**a);
}

TEST_F(EngineLoopTest, AFailedStepEndsTheRequestsInFlightWithAnErrorAndTheLoopGoesOn) {
  auto a = loop_->Submit("a", Request(100));
  auto b = loop_->Submit("b", Request(100));
  ASSERT_TRUE(a.ok() && b.ok());
  while ((*a)->Take(absl::Seconds(5)).token_ids.empty()) {
  }
  runner_->fail_next = true;
  auto [tokens_a, final_a] = Drain(**a);
  auto [tokens_b, final_b] = Drain(**b);
  for (const auto& final : {final_a, final_b}) {
    EXPECT_EQ(final.finish_reason(), serving::v1::FINISH_REASON_ERROR);
    EXPECT_THAT(final.error_message(), HasSubstr("scripted forward failure"));
  }
  // (The counters are published right after the step.)
  for (int i = 0; i < 500 && loop_->load().step_failures_total == 0; ++i) absl::SleepFor(absl::Milliseconds(10));
  EXPECT_EQ(loop_->load().step_failures_total, 1);
  // The next request is served normally.
  auto c = loop_->Submit("c", Request(5));
  ASSERT_TRUE(c.ok());
  auto [tokens_c, final_c] = Drain(**c);
  EXPECT_EQ(final_c.finish_reason(), serving::v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(tokens_c.size(), 5u);
}

TEST_F(EngineLoopTest, IdsAreUniqueAndInvalidRequestsFailAtSubmit) {
  auto a = loop_->Submit("same", Request(50));
  ASSERT_TRUE(a.ok());
  auto again = loop_->Submit("same", Request(5));
  EXPECT_EQ(again.status().code(), absl::StatusCode::kAlreadyExists);
  TranslatedRequest bad = Request(5);
  bad.engine_request.prompt_ids = {kVocab + 3};
  auto refused = loop_->Submit("bad", bad);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(loop_->Abort("same"));
  auto [tokens, final] = Drain(**a);
  EXPECT_EQ(final.finish_reason(), serving::v1::FINISH_REASON_ABORTED);
  EXPECT_FALSE(loop_->Abort("same"));
  EXPECT_TRUE(loop_->Submit("same", Request(1)).ok()) << "an id is free again once its request ended";
}

TEST_F(EngineLoopTest, StopEndsEveryRequestAndRefusesNewOnes) {
  auto a = loop_->Submit("a", Request(200));
  ASSERT_TRUE(a.ok());
  loop_->Stop();
  auto [tokens, final] = Drain(**a);
  EXPECT_EQ(final.finish_reason(), serving::v1::FINISH_REASON_ABORTED);
  EXPECT_THAT(final.error_message(), HasSubstr("shutting down"));
  EXPECT_EQ(loop_->Submit("b", Request(1)).status().code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace asyncspade
