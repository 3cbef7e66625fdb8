// The engine with a runner that samples itself (ModelRunner::samples_tokens(), what the CUDA runner
// does on the device): the tokens equal those of host sampling on the same logits, the engine stops
// fetching the next-token logits rows but still gets prompt logits, and a runner that returns no
// or a bad token fails the step rather than inventing one.
#include <gtest/gtest.h>

#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "kernels/sampling.h"
#include "services/decode_worker/engine/generation_engine.h"

namespace asyncspade {
namespace {

constexpr int kVocab = 97;

// Logits that depend on (sequence's previous token, position, vocabulary id) through a hash, so
// different histories give different distributions and seeded sampling has real choices to make.
float LogitAt(int32_t token, int position, int v) {
  uint64_t x = kernels::SplitMix64((uint64_t(uint32_t(token)) << 32) ^ (uint64_t(uint32_t(position)) << 8) ^
                                   uint64_t(v));
  // Spread over ±4 so that top-k / top-p cut real tails.
  return static_cast<float>(static_cast<double>(x >> 11) * 0x1.0p-53 * 8.0 - 4.0);
}

// A stateless model: the logits row of a token depends only on it and its position. With
// `can_sample`, it draws the tokens the engine asks for with kernels::cpu::Sample (what a device
// sampler reproduces) and returns logits rows only where `logits` asks for them.
class SelfSamplingRunner : public ModelRunner {
 public:
  explicit SelfSamplingRunner(bool can_sample) : can_sample_(can_sample) {
    config_.vocab_size = kVocab;
    config_.max_position_embeddings = 512;
    config_.num_layers = 1;
    config_.num_heads = 1;
    config_.num_kv_heads = 1;
    config_.head_dim = 4;
    config_.eos_token_ids = {};  // never stops early: every request runs to max_tokens
    layout_ = {64, 1, 16, 4};
  }
  const ModelConfig& config() const override { return config_; }
  const kernels::PagedKvLayout& kv_layout() const override { return layout_; }
  bool samples_tokens() const override { return can_sample_; }

  absl::Status Forward(const ForwardBatch& batch, ForwardOutput* output) override {
    output->vocab_size = kVocab;
    output->logits.clear();
    output->row_offsets = {0};
    output->sampled_tokens.assign(can_sample_ ? batch.sequences.size() : 0, -1);
    for (size_t b = 0; b < batch.sequences.size(); ++b) {
      const ForwardSequence& s = batch.sequences[b];
      const int n = static_cast<int>(s.tokens.size());
      const int rows = s.logits == LogitsWanted::kNone ? 0 : s.logits == LogitsWanted::kLast ? 1 : n;
      for (int i = n - rows; i < n; ++i) {
        for (int v = 0; v < kVocab; ++v) output->logits.push_back(LogitAt(s.tokens[i], s.start_position + i, v));
      }
      output->row_offsets.push_back(output->row_offsets.back() + rows);
      if (s.sampling != nullptr) {
        ++sampling_requests;
        if (s.logits == LogitsWanted::kNone) ++sampled_without_logits;
        if (!can_sample_) continue;
        std::vector<float> last(kVocab);
        for (int v = 0; v < kVocab; ++v) last[v] = LogitAt(s.tokens[n - 1], s.start_position + n - 1, v);
        int32_t token = -1;
        kernels::cpu::Sample(last.data(), 1, kVocab, s.sampling, &s.rng_step, &token);
        output->sampled_tokens[b] = corrupt_tokens ? kVocab + 3 : token;
      }
    }
    if (drop_tokens) output->sampled_tokens.clear();
    return absl::OkStatus();
  }

  int sampling_requests = 0;
  int sampled_without_logits = 0;
  bool corrupt_tokens = false;
  bool drop_tokens = false;

 private:
  bool can_sample_;
  ModelConfig config_;
  kernels::PagedKvLayout layout_;
};

std::vector<GenerationRequest> MixedRequests() {
  std::vector<GenerationRequest> requests;
  const std::vector<std::vector<int32_t>> prompts = {{3}, {5, 6, 7, 8, 9, 10, 11, 12, 13, 14}, {20, 21, 22}, {40}};
  for (size_t i = 0; i < prompts.size(); ++i) {
    GenerationRequest r;
    r.prompt_ids = prompts[i];
    r.max_tokens = 12 + static_cast<int>(i);
    if (i == 1) {
      r.sampling.temperature = 0.8f;
      r.sampling.top_p = 0.9f;
      r.sampling.seed = 1234;
    } else if (i == 2) {
      r.sampling.temperature = 1.3f;
      r.sampling.top_k = 7;
      r.sampling.seed = 99;
    } else if (i == 3) {
      r.sampling.temperature = 1.0f;
      r.sampling.seed = 7;
      r.return_prompt_logits = true;
    }
    requests.push_back(r);
  }
  return requests;
}

struct EngineRun {
  std::map<int64_t, std::vector<int32_t>> tokens;
  std::map<int64_t, std::vector<float>> prompt_logits;
};

EngineRun RunAll(GenerationEngine& engine, const std::vector<GenerationRequest>& requests) {
  EngineRun run;
  for (size_t i = 0; i < requests.size(); ++i) EXPECT_TRUE(engine.Submit(static_cast<int64_t>(i), requests[i]).ok());
  for (int guard = 0; engine.HasWork() && guard < 1000; ++guard) {
    auto events = engine.Step();
    EXPECT_TRUE(events.ok()) << events.status();
    if (!events.ok()) break;
    for (GenerationEvent& e : *events) {
      if (e.token_id) run.tokens[e.request_id].push_back(*e.token_id);
      if (!e.prompt_logits.empty()) run.prompt_logits[e.request_id] = std::move(e.prompt_logits);
    }
  }
  return run;
}

std::unique_ptr<GenerationEngine> MakeEngine(std::unique_ptr<SelfSamplingRunner> runner, bool sample_on_runner,
                                             int max_batch_tokens) {
  GenerationEngineOptions options;
  options.max_batch_size = 4;
  options.max_batch_tokens = max_batch_tokens;
  options.sample_on_runner = sample_on_runner;
  auto engine = GenerationEngine::Create(std::move(runner), options);
  EXPECT_TRUE(engine.ok()) << engine.status();
  return std::move(engine).value();
}

TEST(RunnerSamplingTest, RunnerDrawsTheTokensHostSamplingDraws) {
  for (int max_batch_tokens : {64, 4}) {  // 4: the 10-token prompt is prefilled in chunks, mixed with decodes
    SCOPED_TRACE(::testing::Message() << "max_batch_tokens " << max_batch_tokens);
    auto host_runner = std::make_unique<SelfSamplingRunner>(/*can_sample=*/false);
    SelfSamplingRunner* host = host_runner.get();
    auto host_engine = MakeEngine(std::move(host_runner), true, max_batch_tokens);
    const EngineRun expected = RunAll(*host_engine, MixedRequests());
    EXPECT_EQ(host->sampling_requests, 0) << "a runner that cannot sample is never asked to";

    auto device_runner = std::make_unique<SelfSamplingRunner>(/*can_sample=*/true);
    SelfSamplingRunner* device = device_runner.get();
    auto device_engine = MakeEngine(std::move(device_runner), true, max_batch_tokens);
    const EngineRun got = RunAll(*device_engine, MixedRequests());

    const std::vector<GenerationRequest> requests = MixedRequests();
    for (size_t i = 0; i < requests.size(); ++i) {
      ASSERT_EQ(expected.tokens.at(i).size(), static_cast<size_t>(requests[i].max_tokens));
      EXPECT_EQ(got.tokens.at(i), expected.tokens.at(i)) << "request " << i;
    }
    // Seeded sampling made real choices (not everything the argmax).
    int non_greedy = 0;
    for (size_t i = 1; i < requests.size(); ++i) {
      const std::vector<int32_t>& tokens = expected.tokens.at(i);
      int32_t previous = requests[i].prompt_ids.back();
      for (size_t t = 0; t < tokens.size(); ++t) {
        const int position = static_cast<int>(requests[i].prompt_ids.size() + t) - 1;
        int best = 0;
        for (int v = 1; v < kVocab; ++v) {
          if (LogitAt(previous, position, v) > LogitAt(previous, position, best)) best = v;
        }
        if (tokens[t] != best) ++non_greedy;
        previous = tokens[t];
      }
    }
    EXPECT_GT(non_greedy, 5);
    // One draw per generated token, and none of them fetched a logits row.
    int generated = 0;
    for (const GenerationRequest& r : requests) generated += r.max_tokens;
    EXPECT_EQ(device->sampling_requests, generated);
    EXPECT_EQ(device->sampled_without_logits, generated - 1) << "only the prompt-logits request keeps its row";
    ASSERT_EQ(got.prompt_logits.count(3), 1u);
    EXPECT_EQ(got.prompt_logits.at(3), expected.prompt_logits.at(3));
    EXPECT_EQ(got.prompt_logits.at(3).size(), static_cast<size_t>(kVocab));
  }
}

TEST(RunnerSamplingTest, HostSamplingCanBeForced) {
  auto runner = std::make_unique<SelfSamplingRunner>(/*can_sample=*/true);
  SelfSamplingRunner* raw = runner.get();
  auto engine = MakeEngine(std::move(runner), /*sample_on_runner=*/false, 64);
  const EngineRun run = RunAll(*engine, MixedRequests());
  EXPECT_EQ(raw->sampling_requests, 0);
  EXPECT_EQ(run.tokens.at(0).size(), 12u);
}

TEST(RunnerSamplingTest, MissingOrInvalidTokensFailTheStep) {
  for (bool corrupt : {true, false}) {
    auto runner = std::make_unique<SelfSamplingRunner>(/*can_sample=*/true);
    runner->corrupt_tokens = corrupt;
    runner->drop_tokens = !corrupt;
    auto engine = MakeEngine(std::move(runner), true, 64);
    GenerationRequest r;
    r.prompt_ids = {3, 4};
    r.max_tokens = 2;
    ASSERT_TRUE(engine->Submit(0, r).ok());
    auto events = engine->Step();
    ASSERT_FALSE(events.ok());
    EXPECT_EQ(events.status().code(), absl::StatusCode::kInternal);
    EXPECT_NE(events.status().message().find("asked to sample sequence 0"), std::string::npos) << events.status();
  }
}

TEST(RunnerSamplingTest, ScoringOnlyRequestsAreNotSampled) {
  auto runner = std::make_unique<SelfSamplingRunner>(/*can_sample=*/true);
  SelfSamplingRunner* raw = runner.get();
  auto engine = MakeEngine(std::move(runner), true, 64);
  GenerationRequest r;
  r.prompt_ids = {3, 4, 5};
  r.max_tokens = 0;
  r.return_prompt_logits = true;
  const EngineRun run = RunAll(*engine, {r});
  EXPECT_EQ(raw->sampling_requests, 0);
  EXPECT_EQ(run.tokens.count(0), 0u);
  ASSERT_EQ(run.prompt_logits.at(0).size(), static_cast<size_t>(3 * kVocab));
  EXPECT_EQ(run.prompt_logits.at(0)[kVocab + 5], LogitAt(4, 1, 5));
}

}  // namespace
}  // namespace asyncspade
