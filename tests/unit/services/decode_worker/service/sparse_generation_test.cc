// The asyncspade policy end to end on loopback: the real controller assigns the layers of the
// decode worker (DecodeWorker, in-process) to KV selectors (in-process KvSelector, or the
// asyncspade-kv-selector binary when a test kills one), keys and predicted queries travel over
// real Gloo channels, and the selections come back one step later. stories260K.
#include <future>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/unit/services/decode_worker/service/deployment_test_util.h"

namespace asyncspade {
namespace {

using testing::RunGenerate;
using testing::StoriesDeployment;
using testing::StoriesDeploymentSettings;
using testing::StreamResult;
using testing::TokenRequest;
using testing::WaitUntil;

class SparseGenerationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASYNCSPADE_REQUIRE_STORIES();
    golden_ = testing::LoadStoriesGolden();
  }
  void TearDown() override { deployment_.reset(); }

  void Start(StoriesDeploymentSettings settings) {
    deployment_ = std::make_unique<StoriesDeployment>(settings);
    ASSERT_TRUE(deployment_->Start());
  }

  // Greedy ids of `prompt` for `max_tokens` tokens under the dense policy (the same worker).
  std::vector<int32_t> DenseIds(const std::vector<int32_t>& prompt, int max_tokens) {
    serving::v1::GenerateRequest request = TokenRequest(prompt, max_tokens);
    request.mutable_stop()->set_ignore_eos(true);
    request.mutable_sparse()->set_policy(serving::v1::SPARSE_POLICY_DENSE);
    StreamResult dense = RunGenerate(deployment_->worker_stub(), request);
    EXPECT_TRUE(dense.status.ok()) << dense.status.error_message();
    EXPECT_EQ(dense.final->policy(), serving::v1::SPARSE_POLICY_DENSE);
    EXPECT_EQ(dense.final->sparse_stats().sparse_layer_steps(), 0);
    return dense.token_ids;
  }

  testing::StoriesGolden golden_;
  std::unique_ptr<StoriesDeployment> deployment_;
};

TEST_F(SparseGenerationTest, OneSelectorServesEveryLayerAndDecodeStepsAttendSparsely) {
  StoriesDeploymentSettings settings;
  settings.policy = "asyncspade";
  settings.selectors = 1;
  settings.budget = 16;
  settings.sinks = 4;
  settings.recent = 16;  // sparse once the context exceeds 4 + 16 + 16 = 36 tokens
  settings.lockstep = true;
  Start(settings);
  ASSERT_TRUE(deployment_->AddSelector("selector-0"));
  ASSERT_TRUE(WaitUntil([&] { return deployment_->AllLayersServed(); })) << "the controller links every layer";

  const std::vector<int32_t>& prompt = golden_.prompts[0].ids;  // 13 tokens
  const int kTokens = 200;
  serving::v1::GenerateRequest request = TokenRequest(prompt, kTokens);
  request.mutable_stop()->set_ignore_eos(true);
  StreamResult result = RunGenerate(deployment_->worker_stub(), request);
  ASSERT_TRUE(result.status.ok()) << result.status.error_message();
  ASSERT_EQ(result.token_ids.size(), static_cast<size_t>(kTokens));
  const serving::v1::GenerateFinal& final = *result.final;
  EXPECT_EQ(final.policy(), serving::v1::SPARSE_POLICY_ASYNCSPADE);

  // Decode steps run the query positions 13 .. 13 + 198; those with a context (position + 1) above
  // 36 attend sparsely, each layer with the selection requested one step earlier: positions 36 ..
  // 211. The selector kept up (lockstep), so there is no fallback and nothing stale.
  const int layers = deployment_->worker()->model_config().num_layers;
  const int last_position = static_cast<int>(prompt.size()) + kTokens - 2;
  const int sparse_steps = last_position - 36 + 1;
  const serving::v1::SparseStats& stats = final.sparse_stats();
  EXPECT_EQ(stats.sparse_layer_steps(), sparse_steps * layers) << stats.ShortDebugString();
  EXPECT_EQ(stats.dense_fallbacks(), 0) << stats.ShortDebugString();
  EXPECT_EQ(stats.stale_selections(), 0) << stats.ShortDebugString();

  // One selection per layer per step from position 35 (made for 36) on, the last one unused.
  KvSelector* selector = deployment_->selectors()[0].get();
  // (The selector counts a selection just after sending it.)
  EXPECT_TRUE(WaitUntil([&] { return selector->Stats().selections_total() == (sparse_steps + 1) * layers; }))
      << selector->Stats().ShortDebugString();
  // ... and it let the sequence go when it finished.
  EXPECT_TRUE(WaitUntil([&] { return selector->Stats().attached_sequences() == 0; }));
  const RemoteSelectorPoolStats pool = deployment_->worker()->selector_pool()->stats();
  EXPECT_EQ(pool.link_failures_total, 0);
  EXPECT_EQ(pool.selector_errors_total, 0);

  // The heartbeat reports the policy's totals.
  const control::v1::Load load = deployment_->worker()->CurrentLoad();
  EXPECT_EQ(load.dense_fallbacks_total(), 0);
  EXPECT_EQ(load.selector_stalls_total(), 0);
  EXPECT_DOUBLE_EQ(load.selector_lag_steps(), 1.0);
}

TEST_F(SparseGenerationTest, ABudgetCoveringTheContextAttendsDenselyByDefault) {
  StoriesDeploymentSettings settings;
  settings.policy = "asyncspade";
  settings.selectors = 1;
  settings.budget = 512;  // sinks + recent + budget exceed every context of this model
  Start(settings);
  ASSERT_TRUE(deployment_->AddSelector("selector-0"));
  ASSERT_TRUE(WaitUntil([&] { return deployment_->AllLayersServed(); }));
  const testing::GoldenPrompt& prompt = golden_.prompts[2];
  StreamResult result = RunGenerate(deployment_->worker_stub(),
                                    TokenRequest(prompt.ids, static_cast<int>(prompt.continuation_ids.size())));
  ASSERT_TRUE(result.status.ok()) << result.status.error_message();
  EXPECT_EQ(result.token_ids, prompt.continuation_ids);
  EXPECT_EQ(result.final->policy(), serving::v1::SPARSE_POLICY_ASYNCSPADE);
  EXPECT_EQ(result.final->sparse_stats().sparse_layer_steps(), 0);
  EXPECT_EQ(result.final->sparse_stats().dense_fallbacks(), 0) << "short contexts are dense by rule, not by fallback";
}

TEST_F(SparseGenerationTest, TwoSelectorsSplitTheLayersAndSelectionsCoveringTheContextGiveTheDenseTokens) {
  StoriesDeploymentSettings settings;
  settings.policy = "asyncspade";
  settings.selectors = 2;
  settings.budget = 512;                   // every position the selector may choose ...
  settings.dense_below_threshold = false;  // ... and every decode step takes the selector's path
  settings.lockstep = true;
  Start(settings);
  ASSERT_TRUE(deployment_->AddSelector("selector-0"));
  ASSERT_TRUE(deployment_->AddSelector("selector-1"));
  ASSERT_TRUE(WaitUntil([&] {
    return deployment_->AllLayersServed() && deployment_->worker()->selector_pool()->stats().links_serving == 2;
  }));

  const int kTokens = 120;
  std::vector<std::vector<int32_t>> expected;
  for (const testing::GoldenPrompt& prompt : golden_.prompts) expected.push_back(DenseIds(prompt.ids, kTokens));
  std::vector<std::future<StreamResult>> streams;
  for (const testing::GoldenPrompt& prompt : golden_.prompts) {
    serving::v1::GenerateRequest request = TokenRequest(prompt.ids, kTokens);
    request.mutable_stop()->set_ignore_eos(true);
    streams.push_back(std::async(std::launch::async, [this, request] {
      return RunGenerate(deployment_->worker_stub(), request);
    }));
  }
  for (size_t i = 0; i < streams.size(); ++i) {
    StreamResult result = streams[i].get();
    ASSERT_TRUE(result.status.ok()) << result.status.error_message();
    EXPECT_EQ(result.token_ids, expected[i]) << golden_.prompts[i].text;
    const serving::v1::SparseStats& stats = result.final->sparse_stats();
    EXPECT_EQ(result.final->policy(), serving::v1::SPARSE_POLICY_ASYNCSPADE);
    EXPECT_GT(stats.sparse_layer_steps(), 0) << "the selections were used";
    EXPECT_EQ(stats.stale_selections(), 0) << stats.ShortDebugString();
  }
  for (auto& selector : deployment_->selectors()) EXPECT_GT(selector->Stats().selections_total(), 0);
}

TEST_F(SparseGenerationTest, PreemptedSequencesAreRebuiltOnTheSelector) {
  StoriesDeploymentSettings settings;
  settings.policy = "asyncspade";
  settings.selectors = 1;
  settings.budget = 16;
  settings.recent = 16;
  settings.kv_blocks = 32;  // 512 tokens: four sequences of 13 + 150 tokens do not fit at once
  settings.lockstep = true;
  Start(settings);
  ASSERT_TRUE(deployment_->AddSelector("selector-0"));
  ASSERT_TRUE(WaitUntil([&] { return deployment_->AllLayersServed(); }));

  // A preempted sequence is recomputed by a (dense) prefill, so its later keys differ slightly
  // from a run that kept decoding sparsely: the tokens are not compared, the bookkeeping is.
  const int kTokens = 150;
  auto request_for = [&](int i) {
    serving::v1::GenerateRequest request = TokenRequest(golden_.prompts[i % 3].ids, kTokens);
    request.mutable_stop()->set_ignore_eos(true);
    return request;
  };
  std::vector<std::future<StreamResult>> streams;
  for (int i = 0; i < 4; ++i) {
    streams.push_back(std::async(std::launch::async, [&, i] {
      return RunGenerate(deployment_->worker_stub(), request_for(i));
    }));
  }
  for (int i = 0; i < 4; ++i) {
    StreamResult result = streams[i].get();
    ASSERT_TRUE(result.status.ok()) << result.status.error_message();
    EXPECT_EQ(result.token_ids.size(), static_cast<size_t>(kTokens));
    EXPECT_EQ(result.final->finish_reason(), serving::v1::FINISH_REASON_LENGTH);
    EXPECT_GT(result.final->sparse_stats().sparse_layer_steps(), 0);
  }
  std::promise<int64_t> preemptions;
  deployment_->worker()->engine_loop()->Post(
      [&](GenerationEngine& engine) { preemptions.set_value(engine.num_preemptions()); });
  EXPECT_GT(preemptions.get_future().get(), 0) << "the test needs the cache to run short";
  // The selector never saw a gap or a stale index: every restart was detached and rebuilt.
  EXPECT_EQ(deployment_->worker()->selector_pool()->stats().selector_errors_total, 0);
  KvSelector* selector = deployment_->selectors()[0].get();
  EXPECT_TRUE(WaitUntil([&] { return selector->Stats().attached_sequences() == 0; }));
}

TEST_F(SparseGenerationTest, KillingTheSelectorProcessMidGenerationFallsBackDenseAndAReplacementResumes) {
  StoriesDeploymentSettings settings;
  settings.policy = "asyncspade";
  settings.selectors = 1;
  settings.budget = 16;
  settings.recent = 16;
  settings.lockstep = true;
  Start(settings);
  testing::SelectorProcess* selector = deployment_->AddSelectorProcess("selector-0");
  ASSERT_GT(selector->pid(), 0);
  ASSERT_TRUE(WaitUntil([&] { return deployment_->AllLayersServed(); }, absl::Seconds(30)))
      << "the selector process registers and the controller links it";

  // Several long streams; the selector process dies while they attend sparsely.
  const int kStreams = 4;
  const int kTokens = 400;
  std::vector<std::future<StreamResult>> streams;
  for (int i = 0; i < kStreams; ++i) {
    serving::v1::GenerateRequest request = TokenRequest(golden_.prompts[i % 3].ids, kTokens);
    request.mutable_stop()->set_ignore_eos(true);
    streams.push_back(std::async(std::launch::async, [this, request] {
      return RunGenerate(deployment_->worker_stub(), request);
    }));
  }
  EngineLoop* loop = deployment_->worker()->engine_loop();
  ASSERT_TRUE(WaitUntil([&] { return loop->load().sparse.sparse_layer_steps > 50; }));
  const int status = selector->Kill(SIGKILL);
  EXPECT_TRUE(WIFSIGNALED(status));
  const int64_t sparse_before_kill = loop->load().sparse.sparse_layer_steps;

  int64_t fallbacks = 0;
  for (auto& stream : streams) {
    StreamResult result = stream.get();
    ASSERT_TRUE(result.status.ok()) << result.status.error_message();
    ASSERT_TRUE(result.final.has_value());
    EXPECT_EQ(result.final->finish_reason(), serving::v1::FINISH_REASON_LENGTH) << result.final->error_message();
    EXPECT_EQ(result.token_ids.size(), static_cast<size_t>(kTokens));
    fallbacks += result.final->sparse_stats().dense_fallbacks();
  }
  EXPECT_GT(sparse_before_kill, 0);
  EXPECT_GT(fallbacks, 0) << "the steps after the kill attended densely";
  EXPECT_GE(deployment_->worker()->selector_pool()->stats().link_failures_total, 1);
  EXPECT_FALSE(deployment_->AllLayersServed());

  // A new selector process under the same id: the controller gives the link a new epoch and the
  // worker brings it up from its own cache; new requests attend sparsely again.
  deployment_->AddSelectorProcess("selector-0");
  ASSERT_TRUE(WaitUntil([&] { return deployment_->AllLayersServed(); }, absl::Seconds(30)));
  serving::v1::GenerateRequest request = TokenRequest(golden_.prompts[1].ids, 100);
  request.mutable_stop()->set_ignore_eos(true);
  StreamResult after = RunGenerate(deployment_->worker_stub(), request);
  ASSERT_TRUE(after.status.ok()) << after.status.error_message();
  EXPECT_GT(after.final->sparse_stats().sparse_layer_steps(), 0) << after.final->sparse_stats().ShortDebugString();
  EXPECT_EQ(after.final->sparse_stats().dense_fallbacks(), 0) << after.final->sparse_stats().ShortDebugString();
}

}  // namespace
}  // namespace asyncspade
