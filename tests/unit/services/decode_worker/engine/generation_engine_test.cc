#include "services/decode_worker/engine/generation_engine.h"

#include <gtest/gtest.h>

#include <map>

#include "services/decode_worker/model/cpu_model_runner.h"
#include "services/decode_worker/model/dense_attention_stage.h"
#include "tests/unit/services/decode_worker/stories_test_util.h"

namespace asyncspade {
namespace {

struct EngineSetup {
  int num_blocks = 64;
  int page_size = 16;
  GenerationEngineOptions options;
  const Tokenizer* tokenizer = nullptr;
};

std::unique_ptr<GenerationEngine> MakeEngine(const EngineSetup& setup) {
  auto runner = CpuModelRunner::Create(testing::StoriesWeights(), {setup.num_blocks, setup.page_size});
  EXPECT_TRUE(runner.ok()) << runner.status();
  auto engine = GenerationEngine::Create(std::move(runner).value(), setup.options, setup.tokenizer);
  EXPECT_TRUE(engine.ok()) << engine.status();
  return std::move(engine).value();
}

GenerationRequest Greedy(std::vector<int32_t> prompt, int max_tokens) {
  GenerationRequest r;
  r.prompt_ids = std::move(prompt);
  r.max_tokens = max_tokens;
  return r;
}

struct Outcome {
  std::vector<int32_t> ids;
  std::string text;
  FinishReason reason = FinishReason::kNone;
  int finished_events = 0;
};

// Steps until idle; `on_step` runs before each step (to submit or abort mid-flight).
std::map<int64_t, Outcome> RunToCompletion(GenerationEngine* engine,
                                           const std::function<void(int step)>& on_step = nullptr) {
  std::map<int64_t, Outcome> outcomes;
  for (int step = 0; step < 10000; ++step) {
    if (on_step) on_step(step);
    if (!engine->HasWork()) break;
    auto events = engine->Step();
    EXPECT_TRUE(events.ok()) << events.status();
    if (!events.ok()) break;
    for (const GenerationEvent& e : *events) {
      Outcome& o = outcomes[e.request_id];
      EXPECT_EQ(o.finished_events, 0) << "event after finish for request " << e.request_id;
      if (e.token_id) o.ids.push_back(*e.token_id);
      o.text += e.text;
      if (e.finished) {
        o.reason = e.finish_reason;
        ++o.finished_events;
      }
    }
  }
  return outcomes;
}

std::vector<int32_t> RunAlone(GenerationRequest request) {
  auto engine = MakeEngine({});
  EXPECT_TRUE(engine->Submit(0, std::move(request)).ok());
  return RunToCompletion(engine.get())[0].ids;
}

std::vector<int32_t> Prefix(const std::vector<int32_t>& v, size_t n) { return {v.begin(), v.begin() + n}; }

// Prompts of different lengths, from 1 to 65 tokens.
std::vector<std::vector<int32_t>> MixedPrompts(const testing::StoriesGolden& golden) {
  std::vector<std::vector<int32_t>> prompts = {{1}};
  for (const auto& p : golden.prompts) prompts.push_back(p.ids);
  std::vector<int32_t> long_prompt = {1};
  long_prompt.insert(long_prompt.end(), golden.greedy_from_bos.begin(), golden.greedy_from_bos.end());
  prompts.push_back(long_prompt);
  return prompts;
}

TEST(GenerationEngineTest, BatchedRequestsProduceWhatEachProducesAlone) {
  ASYNCSPADE_REQUIRE_STORIES();
  const testing::StoriesGolden golden = testing::LoadStoriesGolden();
  const auto prompts = MixedPrompts(golden);
  std::vector<std::vector<int32_t>> alone;
  for (const auto& p : prompts) alone.push_back(RunAlone(Greedy(p, 30)));
  // Sanity: the alone runs themselves follow the golden vectors.
  EXPECT_EQ(alone[0], Prefix(golden.greedy_from_bos, 30));
  EXPECT_EQ(alone[1], Prefix(golden.prompts[0].continuation_ids, 30));

  for (int max_batch_tokens : {512, 7}) {  // 7: long prompts are prefilled in chunks, mixed with decodes
    SCOPED_TRACE(::testing::Message() << "max_batch_tokens " << max_batch_tokens);
    EngineSetup setup;
    setup.options.max_batch_tokens = max_batch_tokens;
    // Together.
    auto engine = MakeEngine(setup);
    for (size_t i = 0; i < prompts.size(); ++i) ASSERT_TRUE(engine->Submit(i, Greedy(prompts[i], 30)).ok());
    auto together = RunToCompletion(engine.get());
    // Staggered: one new request every 3 steps.
    engine = MakeEngine(setup);
    auto staggered = RunToCompletion(engine.get(), [&](int step) {
      if (step % 3 == 0 && step / 3 < static_cast<int>(prompts.size())) {
        ASSERT_TRUE(engine->Submit(step / 3, Greedy(prompts[step / 3], 30)).ok());
      }
    });
    for (size_t i = 0; i < prompts.size(); ++i) {
      EXPECT_EQ(together[i].ids, alone[i]) << "request " << i;
      EXPECT_EQ(together[i].reason, FinishReason::kLength);
      EXPECT_EQ(staggered[i].ids, alone[i]) << "request " << i;
    }
    EXPECT_EQ(engine->kv_blocks_used(), 0);
  }
}

TEST(GenerationEngineTest, RequestsWaitForKvCapacityThenRun) {
  ASYNCSPADE_REQUIRE_STORIES();
  const testing::StoriesGolden golden = testing::LoadStoriesGolden();
  // 12 blocks of 4 tokens. Each request needs 13 + 24 = 37 tokens = 10 blocks at the end, so only
  // one fits at a time; admission needs 13 + reserve 4 = 17 tokens = 5 blocks.
  EngineSetup setup;
  setup.num_blocks = 12;
  setup.page_size = 4;
  setup.options.decode_reserve_tokens = 4;
  auto engine = MakeEngine(setup);
  const auto& prompt = golden.prompts[0].ids;
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(engine->Submit(i, Greedy(prompt, 24)).ok());
  int max_running = 0, max_waiting = 0;
  double max_usage = 0;
  std::map<int64_t, Outcome> outcomes;
  while (engine->HasWork()) {
    auto events = engine->Step();
    ASSERT_TRUE(events.ok()) << events.status();
    max_running = std::max(max_running, engine->num_running());
    max_waiting = std::max(max_waiting, engine->num_waiting());
    max_usage = std::max(max_usage, engine->kv_usage());
    EXPECT_LE(engine->kv_blocks_used(), 12);
    for (const auto& e : *events) {
      if (e.token_id) outcomes[e.request_id].ids.push_back(*e.token_id);
    }
  }
  EXPECT_EQ(max_running, 2);  // two prompts fit at admission; growth then preempts one
  EXPECT_GE(max_waiting, 1);
  EXPECT_GT(max_usage, 0.75);
  EXPECT_GE(engine->num_preemptions(), 1);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(outcomes[i].ids, Prefix(golden.prompts[0].continuation_ids, 24)) << i;
  EXPECT_EQ(engine->kv_blocks_used(), 0);
}

TEST(GenerationEngineTest, AbortFreesBlocksOfRunningAndWaitingRequests) {
  ASYNCSPADE_REQUIRE_STORIES();
  EngineSetup setup;
  setup.options.max_batch_size = 1;
  auto engine = MakeEngine(setup);
  ASSERT_TRUE(engine->Submit(1, Greedy({1, 403}, 50)).ok());
  ASSERT_TRUE(engine->Submit(2, Greedy({1}, 50)).ok());
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(engine->Step().ok());
  EXPECT_EQ(engine->num_running(), 1);
  EXPECT_EQ(engine->num_waiting(), 1);
  EXPECT_GT(engine->kv_blocks_used(), 0);
  ASSERT_TRUE(engine->Abort(1).ok());
  ASSERT_TRUE(engine->Abort(2).ok());
  EXPECT_EQ(engine->kv_blocks_used(), 0);
  EXPECT_EQ(engine->Abort(1).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(engine->Abort(99).code(), absl::StatusCode::kNotFound);
  auto events = engine->Step();
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->size(), 2u);
  for (const auto& e : *events) {
    EXPECT_TRUE(e.finished);
    EXPECT_EQ(e.finish_reason, FinishReason::kAbort);
    EXPECT_FALSE(e.token_id.has_value());
  }
  EXPECT_FALSE(engine->HasWork());
  // The id can be reused after it finished.
  EXPECT_TRUE(engine->Submit(1, Greedy({1}, 2)).ok());
}

class ReleaseRecorder : public DenseAttentionStage {
 public:
  explicit ReleaseRecorder(std::vector<int64_t>* released) : released_(released) {}
  void OnSequenceReleased(int64_t id) override { released_->push_back(id); }

 private:
  std::vector<int64_t>* released_;
};

TEST(GenerationEngineTest, AttentionPolicyHearsAboutEveryReleasedSequence) {
  ASYNCSPADE_REQUIRE_STORIES();
  std::vector<int64_t> released;
  auto runner = CpuModelRunner::Create(testing::StoriesWeights(), {64, 16}, std::make_unique<ReleaseRecorder>(&released));
  ASSERT_TRUE(runner.ok());
  auto engine = GenerationEngine::Create(std::move(runner).value(), {});
  ASSERT_TRUE(engine.ok());
  ASSERT_TRUE((*engine)->Submit(5, Greedy({1}, 3)).ok());
  ASSERT_TRUE((*engine)->Submit(6, Greedy({1}, 50)).ok());
  for (int i = 0; i < 3; ++i) ASSERT_TRUE((*engine)->Step().ok());
  EXPECT_EQ(released, (std::vector<int64_t>{5}));  // finished after 3 tokens
  ASSERT_TRUE((*engine)->Abort(6).ok());
  EXPECT_EQ(released, (std::vector<int64_t>{5, 6}));
}

TEST(GenerationEngineTest, InvalidRequestsFailAloneWithClearMessages) {
  ASYNCSPADE_REQUIRE_STORIES();
  const testing::StoriesGolden golden = testing::LoadStoriesGolden();
  EngineSetup setup;
  setup.num_blocks = 8;  // 128 tokens
  auto engine = MakeEngine(setup);
  ASSERT_TRUE(engine->Submit(1, Greedy(golden.prompts[1].ids, 20)).ok());
  struct Bad {
    GenerationRequest request;
    absl::StatusCode code;
    std::string message;
    int64_t id = 2;
  };
  GenerationRequest hot = Greedy({1}, 5);
  hot.sampling.temperature = -1;
  GenerationRequest nucleus = Greedy({1}, 5);
  nucleus.sampling.top_p = 0;
  GenerationRequest stops = Greedy({1}, 5);
  stops.stop_strings = {"park"};
  for (const Bad& bad : {
           Bad{Greedy({}, 5), absl::StatusCode::kInvalidArgument, "prompt is empty"},
           Bad{Greedy({1, 600}, 5), absl::StatusCode::kInvalidArgument, "prompt token 1 has id 600"},
           Bad{Greedy({1}, -2), absl::StatusCode::kInvalidArgument, "max_tokens"},
           Bad{Greedy({1}, 600), absl::StatusCode::kInvalidArgument, "exceeds the maximum sequence length 512"},
           Bad{Greedy({1}, 200), absl::StatusCode::kResourceExhausted, "whole cache has 8"},
           Bad{hot, absl::StatusCode::kInvalidArgument, "temperature"},
           Bad{nucleus, absl::StatusCode::kInvalidArgument, "top_p"},
           Bad{stops, absl::StatusCode::kInvalidArgument, "tokenizer"},
           Bad{Greedy({1}, 5), absl::StatusCode::kAlreadyExists, "request id 1", /*id=*/1},
       }) {
    const absl::Status s = engine->Submit(bad.id, bad.request);
    EXPECT_EQ(s.code(), bad.code) << s;
    EXPECT_NE(s.message().find(bad.message), std::string::npos) << s;
  }
  auto outcomes = RunToCompletion(engine.get());
  ASSERT_EQ(outcomes.size(), 1u);
  EXPECT_EQ(outcomes[1].ids, Prefix(golden.prompts[1].continuation_ids, 20));
}

TEST(GenerationEngineTest, StopsOnEosAndStopTokens) {
  ASYNCSPADE_REQUIRE_STORIES();
  const testing::StoriesGolden golden = testing::LoadStoriesGolden();
  const auto& expected = golden.greedy_from_bos;  // 403 407 261 ...
  auto engine = MakeEngine({});
  GenerationRequest eos = Greedy({1}, 40);
  eos.eos_token_ids = {expected[5]};
  GenerationRequest stop = Greedy({1}, 40);
  stop.stop_token_ids = {expected[9]};
  GenerationRequest ignored = Greedy({1}, 12);
  ignored.eos_token_ids = {expected[5]};
  ignored.ignore_eos = true;
  ASSERT_TRUE(engine->Submit(0, eos).ok());
  ASSERT_TRUE(engine->Submit(1, stop).ok());
  ASSERT_TRUE(engine->Submit(2, ignored).ok());
  auto outcomes = RunToCompletion(engine.get());
  // The first occurrence of each id ends the request; the stop id is reported as the last token.
  const auto first = [&](int32_t id) { return size_t(std::find(expected.begin(), expected.end(), id) - expected.begin()); };
  EXPECT_EQ(outcomes[0].ids, Prefix(expected, first(expected[5]) + 1));
  EXPECT_EQ(outcomes[0].reason, FinishReason::kStop);
  EXPECT_EQ(outcomes[1].ids, Prefix(expected, first(expected[9]) + 1));
  EXPECT_EQ(outcomes[1].reason, FinishReason::kStop);
  EXPECT_EQ(outcomes[2].ids, Prefix(expected, 12));
  EXPECT_EQ(outcomes[2].reason, FinishReason::kLength);
}

TEST(GenerationEngineTest, StopStringsEndTheTextBeforeTheMatch) {
  ASYNCSPADE_REQUIRE_STORIES();
  const testing::StoriesGolden golden = testing::LoadStoriesGolden();
  auto tokenizer = Tokenizer::FromModelDir(testing::StoriesDir());
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  EngineSetup setup;
  setup.tokenizer = tokenizer->get();
  auto engine = MakeEngine(setup);
  GenerationRequest park = Greedy({1}, 64);
  park.stop_strings = {"in the park", "zebra"};
  GenerationRequest plain = Greedy({1}, 64);
  ASSERT_TRUE(engine->Submit(0, park).ok());
  ASSERT_TRUE(engine->Submit(1, plain).ok());
  auto outcomes = RunToCompletion(engine.get());
  EXPECT_EQ(outcomes[1].text, golden.greedy_text);
  EXPECT_EQ(outcomes[1].ids, golden.greedy_from_bos);
  const size_t cut = golden.greedy_text.find("in the park");
  ASSERT_NE(cut, std::string::npos);
  EXPECT_EQ(outcomes[0].text, golden.greedy_text.substr(0, cut));
  EXPECT_EQ(outcomes[0].reason, FinishReason::kStopString);
  // Generation stopped at the token that completed the match, long before max_tokens.
  ASSERT_LT(outcomes[0].ids.size(), 40u);
  EXPECT_EQ(outcomes[0].ids, Prefix(golden.greedy_from_bos, outcomes[0].ids.size()));
}

TEST(GenerationEngineTest, StreamedTextContinuesThePromptText) {
  ASYNCSPADE_REQUIRE_STORIES();
  const testing::StoriesGolden golden = testing::LoadStoriesGolden();
  auto tokenizer = Tokenizer::FromModelDir(testing::StoriesDir());
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  EngineSetup setup;
  setup.tokenizer = tokenizer->get();
  auto engine = MakeEngine(setup);
  for (size_t p = 0; p < golden.prompts.size(); ++p) ASSERT_TRUE(engine->Submit(p, Greedy(golden.prompts[p].ids, 48)).ok());
  auto outcomes = RunToCompletion(engine.get());
  for (size_t p = 0; p < golden.prompts.size(); ++p) {
    // full_text = decode(prompt + continuation): the stream is exactly what follows the prompt.
    const auto& g = golden.prompts[p];
    ASSERT_EQ(g.full_text.compare(0, g.text.size(), g.text), 0);
    EXPECT_EQ(outcomes[p].text, g.full_text.substr(g.text.size())) << "prompt " << p;
    EXPECT_EQ(outcomes[p].ids, g.continuation_ids) << "prompt " << p;
  }
}

TEST(GenerationEngineTest, SeededSamplingIsReproducibleAndTopKOneIsGreedy) {
  ASYNCSPADE_REQUIRE_STORIES();
  const testing::StoriesGolden golden = testing::LoadStoriesGolden();
  auto sampled = [](uint64_t seed) {
    GenerationRequest r = Greedy({1, 291}, 40);
    r.sampling = {1.0f, 0, 0.95f, seed};
    return r;
  };
  const auto alone_a = RunAlone(sampled(7));
  EXPECT_EQ(RunAlone(sampled(7)), alone_a);
  EXPECT_NE(RunAlone(sampled(8)), alone_a);

  GenerationRequest top1 = Greedy(golden.prompts[2].ids, 48);
  top1.sampling = {1.5f, 1, 1.0f, 3};
  // Mixed in one batch with other sampled requests, each still gets its own stream.
  auto engine = MakeEngine({});
  ASSERT_TRUE(engine->Submit(0, sampled(7)).ok());
  ASSERT_TRUE(engine->Submit(1, top1).ok());
  ASSERT_TRUE(engine->Submit(2, sampled(9)).ok());
  auto outcomes = RunToCompletion(engine.get());
  EXPECT_EQ(outcomes[0].ids, alone_a);
  EXPECT_EQ(outcomes[1].ids, golden.prompts[2].continuation_ids);
  EXPECT_EQ(outcomes[2].ids, RunAlone(sampled(9)));
}

TEST(GenerationEngineTest, ScoringOnlyReturnsPromptLogits) {
  ASYNCSPADE_REQUIRE_STORIES();
  const testing::StoriesGolden golden = testing::LoadStoriesGolden();
  EngineSetup setup;
  setup.options.max_batch_tokens = 5;  // the prompt is scored in chunks
  auto engine = MakeEngine(setup);
  GenerationRequest score = Greedy(golden.prompts[0].ids, 0);
  score.return_prompt_logits = true;
  ASSERT_TRUE(engine->Submit(0, score).ok());
  std::vector<GenerationEvent> all;
  while (engine->HasWork()) {
    auto events = engine->Step();
    ASSERT_TRUE(events.ok());
    for (auto& e : *events) all.push_back(std::move(e));
  }
  ASSERT_EQ(all.size(), 1u);
  EXPECT_TRUE(all[0].finished);
  EXPECT_FALSE(all[0].token_id.has_value());
  const auto& ids = golden.prompts[0].ids;
  ASSERT_EQ(all[0].prompt_logits.size(), ids.size() * 512);
  // Row t predicts token t+1 of the prompt's greedy... check the last row against the golden
  // continuation's first token, and row 0 against BOS's argmax (403).
  auto argmax = [&](size_t row) {
    const float* r = all[0].prompt_logits.data() + row * 512;
    return int32_t(std::max_element(r, r + 512) - r);
  };
  EXPECT_EQ(argmax(0), 403);
  EXPECT_EQ(argmax(ids.size() - 1), golden.prompts[0].continuation_ids[0]);
}

}  // namespace
}  // namespace asyncspade
