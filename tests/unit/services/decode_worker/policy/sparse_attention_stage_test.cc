#include "services/decode_worker/policy/sparse_attention_stage.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <set>
#include <vector>

#include "nlohmann/json.hpp"
#include "tests/unit/kernels/kernel_test_util.h"
#include "tests/unit/services/decode_worker/policy/policy_test_util.h"
#include "tests/unit/services/decode_worker/stories_test_util.h"

namespace asyncspade {
namespace {

using testing::GenerateWithPolicy;
using testing::PolicyConfig;
using testing::PolicyRunOptions;

// ---------------------------------------------------------------------------------------------
// One synthetic layer: a paged cache with scattered blocks, a prefill of positions 0..L-2 and a
// decode of position L-1, checked against brute force.
// ---------------------------------------------------------------------------------------------

constexpr int kHq = 4, kHkv = 2, kD = 8, kPage = 4, kBlocks = 40, kGroup = kHq / kHkv;

class RecordingObserver : public SparseAttentionObserver {
 public:
  void OnSparseAttend(const SparseAttendRecord& r) override {
    records.push_back(r);
    selected.emplace_back(r.selected, r.selected + size_t(r.num_kv_heads) * r.num_selected);
  }
  std::vector<SparseAttendRecord> records;
  std::vector<std::vector<int32_t>> selected;
};

struct SyntheticLayer {
  explicit SyntheticLayer(int kv_len) : kv_len(kv_len) {
    layout = kernels::PagedKvLayout{kBlocks, kHkv, kPage, kD};
    k.assign(size_t(kBlocks) * layout.block_stride(), 0.0f);
    v = k;
    keys = kernels::testing::RandomFloats(size_t(kv_len) * kHkv * kD, 31);
    values = kernels::testing::RandomFloats(size_t(kv_len) * kHkv * kD, 32);
    const int pages = (kv_len + kPage - 1) / kPage;
    for (int p = 0; p < pages; ++p) block_table.push_back(kBlocks - 1 - 2 * p);  // scattered
    for (int j = 0; j < kv_len; ++j) {
      for (int h = 0; h < kHkv; ++h) {
        const int64_t at = layout.Offset(block_table[j / kPage], h, j % kPage);
        std::copy_n(&keys[(size_t(j) * kHkv + h) * kD], kD, &k[at]);
        std::copy_n(&values[(size_t(j) * kHkv + h) * kD], kD, &v[at]);
      }
    }
    model.num_layers = 1;
    model.num_heads = kHq;
    model.num_kv_heads = kHkv;
    model.head_dim = kD;
  }

  // Rows for positions first .. first + n - 1 of sequence 7.
  AttentionBatchLayout Batch(int first, int n, const SparsePolicyConfig* config, uint64_t step) const {
    AttentionBatchLayout b;
    b.num_seqs = 1;
    b.num_tokens = n;
    b.sequence_ids = {7};
    b.q_indptr = {0, n};
    b.kv_lens = {first + n};
    for (int i = 0; i < n; ++i) {
      const int position = first + i;
      b.positions.push_back(position);
      b.slots.push_back(int64_t{block_table[position / kPage]} * kPage + position % kPage);
    }
    b.max_blocks_per_seq = static_cast<int>(block_table.size());
    b.block_tables = block_table;
    b.step = step;
    b.sparse = {config};
    return b;
  }

  // Runs the prefill of 0..kv_len-2 and the decode of kv_len-1 through `stage`; returns the
  // decode query and writes its output.
  std::vector<float> Run(SparseAttentionStage& stage, const SparsePolicyConfig& config, std::vector<float>* out) {
    const LayerKvCache cache{layout, k.data(), v.data()};
    const float scale = 1.0f / std::sqrt(float(kD));
    const int prompt = kv_len - 1;
    const auto prefill_q = kernels::testing::RandomFloats(size_t(prompt) * kHq * kD, 33);
    const auto prefill_k = kernels::testing::RandomFloats(size_t(prompt) * kHkv * kD, 34);
    std::vector<float> prefill_out(prefill_q.size());
    const AttentionBatchLayout prefill = Batch(0, prompt, &config, 0);
    const QkvView prefill_qkv{prefill_q.data(), prefill_k.data(), prefill_k.data(), kHq, kHkv, kD};
    stage.OnQkv(0, prefill, prefill_qkv);
    EXPECT_TRUE(stage.Attend(0, prefill, prefill_qkv, cache, scale, prefill_out.data()).ok());

    std::vector<float> q = kernels::testing::RandomFloats(size_t(kHq) * kD, 35);
    const std::vector<float> key(&keys[size_t(prompt) * kHkv * kD], &keys[size_t(kv_len) * kHkv * kD]);
    const AttentionBatchLayout decode = Batch(prompt, 1, &config, 1);
    const QkvView qkv{q.data(), key.data(), key.data(), kHq, kHkv, kD};
    out->assign(size_t(kHq) * kD, 0.0f);
    stage.OnQkv(0, decode, qkv);
    EXPECT_TRUE(stage.Attend(0, decode, qkv, cache, scale, out->data()).ok());
    return q;
  }

  double Dot(const float* q, int position, int h) const {
    double dot = 0;
    for (int c = 0; c < kD; ++c) dot += double(q[c]) * keys[(size_t(position) * kHkv + h) * kD + c];
    return dot;
  }

  // softmax(q·k / sqrt(d)) · v over `positions` of KV head h, in double.
  std::vector<double> Attention(const float* q, int h, const std::set<int32_t>& positions) const {
    double m = -1e300;
    for (int32_t p : positions) m = std::max(m, Dot(q, p, h) / std::sqrt(double(kD)));
    std::vector<double> out(kD, 0.0);
    double z = 0;
    for (int32_t p : positions) {
      const double w = std::exp(Dot(q, p, h) / std::sqrt(double(kD)) - m);
      z += w;
      for (int c = 0; c < kD; ++c) out[c] += w * values[(size_t(p) * kHkv + h) * kD + c];
    }
    for (double& x : out) x /= z;
    return out;
  }

  int kv_len;
  kernels::PagedKvLayout layout;
  std::vector<float> k, v, keys, values;
  std::vector<int32_t> block_table;
  ModelConfig model;
};

std::set<int32_t> Row(const std::vector<int32_t>& selected, int num_selected, int h) {
  std::set<int32_t> row;
  for (int i = 0; i < num_selected; ++i) {
    if (selected[size_t(h) * num_selected + i] >= 0) row.insert(selected[size_t(h) * num_selected + i]);
  }
  return row;
}

class OracleTest : public ::testing::TestWithParam<ScoreAggregation> {};

TEST_P(OracleTest, SelectsTheBruteForceTopKAndAttendsExactlyThoseTokens) {
  SyntheticLayer layer(61);
  const ScoreAggregation aggregation = GetParam();
  const SparsePolicyConfig config =
      PolicyConfig(SparsePolicy::kOracle, /*budget=*/10, /*sinks=*/3, /*recent=*/6, aggregation);
  RecordingObserver observer;
  SparseAttentionStageOptions options;
  options.default_config = config;
  options.observer = &observer;
  auto stage = SparseAttentionStage::Create(layer.model, options);
  ASSERT_TRUE(stage.ok()) << stage.status();
  std::vector<float> out;
  const std::vector<float> q = layer.Run(**stage, config, &out);

  ASSERT_EQ(observer.records.size(), 1u);  // the prefill attended densely
  const SparseAttendRecord& record = observer.records[0];
  EXPECT_EQ(record.position, 60);
  EXPECT_EQ(record.policy, SparsePolicy::kOracle);
  ASSERT_EQ(record.num_selected, 10);
  for (int h = 0; h < kHkv; ++h) {
    // softmax_sum normalises each head over every key, sinks and recent window included.
    std::vector<double> normaliser(kGroup, 0.0);
    for (int g = 0; g < kGroup; ++g) {
      for (int j = 0; j < layer.kv_len; ++j) {
        normaliser[g] += std::exp(layer.Dot(&q[size_t(h * kGroup + g) * kD], j, h) / std::sqrt(double(kD)));
      }
    }
    std::vector<std::pair<double, int32_t>> scored;
    for (int j = config.sinks; j < layer.kv_len - config.recent; ++j) {
      double s = aggregation == ScoreAggregation::kMax ? -1e300 : 0.0;
      for (int g = 0; g < kGroup; ++g) {
        const double dot = layer.Dot(&q[size_t(h * kGroup + g) * kD], j, h);
        if (aggregation == ScoreAggregation::kSum) s += dot;
        if (aggregation == ScoreAggregation::kMax) s = std::max(s, dot);
        if (aggregation == ScoreAggregation::kSoftmaxSum) s += std::exp(dot / std::sqrt(double(kD))) / normaliser[g];
      }
      scored.push_back({-s, j});
    }
    std::sort(scored.begin(), scored.end());
    std::set<int32_t> expected;
    for (int i = 0; i < config.budget; ++i) expected.insert(scored[i].second);
    const std::set<int32_t> got = Row(observer.selected[0], record.num_selected, h);
    EXPECT_EQ(got, expected) << "kv head " << h;

    std::set<int32_t> attended = expected;
    for (int j = 0; j < config.sinks; ++j) attended.insert(j);
    for (int j = layer.kv_len - config.recent; j < layer.kv_len; ++j) attended.insert(j);
    for (int g = 0; g < kGroup; ++g) {
      const int head = h * kGroup + g;
      const std::vector<double> want = layer.Attention(&q[size_t(head) * kD], h, attended);
      for (int c = 0; c < kD; ++c) EXPECT_NEAR(out[size_t(head) * kD + c], want[c], 1e-5) << "head " << head;
    }
  }
  const SparseAttentionCounters counters = (*stage)->SequenceCounters(7);
  EXPECT_EQ(counters.sparse_layer_steps, 1);
  EXPECT_EQ(counters.dense_fallbacks, 0);
  EXPECT_EQ((*stage)->TotalCounters().sparse_layer_steps, 1);
  (*stage)->OnSequenceReleased(7);
  EXPECT_EQ((*stage)->SequenceConfig(7), nullptr);
  EXPECT_EQ((*stage)->TotalCounters().sparse_layer_steps, 1);
}

INSTANTIATE_TEST_SUITE_P(Aggregations, OracleTest,
                         ::testing::Values(ScoreAggregation::kSum, ScoreAggregation::kMax, ScoreAggregation::kSoftmaxSum));

TEST(SparseAttentionStageTest, QuestSelectsTheBruteForcePagesFromKeyBounds) {
  // softmax_sum has no meaning for page bounds: quest ranks by the sum then.
  for (ScoreAggregation aggregation : {ScoreAggregation::kSum, ScoreAggregation::kMax, ScoreAggregation::kSoftmaxSum}) {
    SCOPED_TRACE(std::string(ScoreAggregationName(aggregation)));
    SyntheticLayer layer(61);  // 16 pages of 4, the last holding position 60 alone
    SparsePolicyConfig config =
        PolicyConfig(SparsePolicy::kQuest, /*budget=*/14, /*sinks=*/5, /*recent=*/9, aggregation);
    config.quest_page_size = kPage;
    RecordingObserver observer;
    SparseAttentionStageOptions options;
    options.default_config = config;
    options.observer = &observer;
    auto stage = SparseAttentionStage::Create(layer.model, options);
    ASSERT_TRUE(stage.ok()) << stage.status();
    std::vector<float> out;
    const std::vector<float> q = layer.Run(**stage, config, &out);
    ASSERT_EQ(observer.records.size(), 1u);
    const SparseAttendRecord& record = observer.records[0];
    const int pages_k = 14 / kPage;  // rounded down: 3 pages
    ASSERT_EQ(record.num_selected, pages_k * kPage);
    for (int h = 0; h < kHkv; ++h) {
      std::vector<std::pair<double, int>> scored;
      for (int p = 0; p * kPage < layer.kv_len; ++p) {
        const int first = p * kPage, end = std::min(first + kPage, layer.kv_len);
        if (end <= config.sinks || first >= layer.kv_len - config.recent) continue;
        const bool is_max = aggregation == ScoreAggregation::kMax;
        double score = is_max ? -1e300 : 0.0;
        for (int g = 0; g < kGroup; ++g) {
          const float* qh = &q[size_t(h * kGroup + g) * kD];
          double bound = 0;
          for (int c = 0; c < kD; ++c) {
            double lo = 1e300, hi = -1e300;
            for (int j = first; j < end; ++j) {
              lo = std::min<double>(lo, layer.keys[(size_t(j) * kHkv + h) * kD + c]);
              hi = std::max<double>(hi, layer.keys[(size_t(j) * kHkv + h) * kD + c]);
            }
            bound += std::max(qh[c] * lo, qh[c] * hi);
          }
          score = is_max ? std::max(score, bound) : score + bound;
        }
        scored.push_back({-score, p});
      }
      std::sort(scored.begin(), scored.end());
      std::set<int32_t> expected;
      for (int i = 0; i < pages_k; ++i) {
        for (int j = scored[i].second * kPage; j < std::min((scored[i].second + 1) * kPage, layer.kv_len); ++j) {
          expected.insert(j);
        }
      }
      EXPECT_EQ(Row(observer.selected[0], record.num_selected, h), expected) << "kv head " << h;

      std::set<int32_t> attended = expected;
      for (int j = 0; j < config.sinks; ++j) attended.insert(j);
      for (int j = layer.kv_len - config.recent; j < layer.kv_len; ++j) attended.insert(j);
      for (int g = 0; g < kGroup; ++g) {
        const int head = h * kGroup + g;
        const std::vector<double> want = layer.Attention(&q[size_t(head) * kD], h, attended);
        for (int c = 0; c < kD; ++c) EXPECT_NEAR(out[size_t(head) * kD + c], want[c], 1e-5);
      }
    }
  }
}

TEST(SparseAttentionStageTest, ShortContextsAndPrefillAttendDenselyWithoutCounting) {
  SyntheticLayer layer(30);
  // 4 + 8 + 20 = 32 > 30: below the threshold every step is dense and nothing is counted.
  const SparsePolicyConfig config = PolicyConfig(SparsePolicy::kOracle, 20, 4, 8);
  SparseAttentionStageOptions options;
  options.default_config = config;
  auto stage = SparseAttentionStage::Create(layer.model, options);
  ASSERT_TRUE(stage.ok());
  std::vector<float> out;
  const std::vector<float> q = layer.Run(**stage, config, &out);
  std::set<int32_t> all;
  for (int j = 0; j < 30; ++j) all.insert(j);
  for (int head = 0; head < kHq; ++head) {
    const std::vector<double> want = layer.Attention(&q[size_t(head) * kD], head / kGroup, all);
    for (int c = 0; c < kD; ++c) EXPECT_NEAR(out[size_t(head) * kD + c], want[c], 1e-5);
  }
  EXPECT_EQ((*stage)->SequenceCounters(7).sparse_layer_steps, 0);
  EXPECT_EQ((*stage)->SequenceCounters(7).dense_fallbacks, 0);
}

TEST(SparseAttentionStageTest, RejectsInvalidDefaults) {
  SyntheticLayer layer(8);
  SparseAttentionStageOptions options;
  options.default_config.budget = 0;
  EXPECT_EQ(SparseAttentionStage::Create(layer.model, options).status().code(), absl::StatusCode::kInvalidArgument);
  options.default_config.budget = 8;
  options.predictor = QueryPredictorOptions{};
  options.predictor->lags = 9;
  EXPECT_EQ(SparseAttentionStage::Create(layer.model, options).status().code(), absl::StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------------------------------------
// stories260K through the engine.
// ---------------------------------------------------------------------------------------------

constexpr int kStoriesLayers = 5;

std::vector<int32_t> LongPrompt() { return testing::LoadStoriesGolden().greedy_from_bos; }  // 64 tokens

TEST(SparsePoliciesStoriesTest, BudgetCoveringTheContextReproducesDenseTokens) {
  ASYNCSPADE_REQUIRE_STORIES();
  const auto weights = testing::StoriesWeights();
  ASSERT_NE(weights, nullptr);
  const std::vector<int32_t> prompt = testing::LoadStoriesGolden().prompts[0].ids;
  constexpr int kTokens = 90;
  const auto dense = GenerateWithPolicy(weights, PolicyConfig(SparsePolicy::kDense, 512, 4, 8), prompt, kTokens);
  ASSERT_EQ(dense.tokens.size(), size_t(kTokens));
  EXPECT_EQ(dense.stats.sparse_layer_steps, 0);
  PolicyRunOptions forced;
  forced.dense_below_threshold = false;  // sparse path on every decode step, budget ≥ context
  for (SparsePolicy policy : {SparsePolicy::kOracle, SparsePolicy::kQuest, SparsePolicy::kAsyncSpade}) {
    SCOPED_TRACE(std::string(SparsePolicyName(policy)));
    const auto run = GenerateWithPolicy(weights, PolicyConfig(policy, 512, 4, 8), prompt, kTokens, forced);
    EXPECT_EQ(run.tokens, dense.tokens);
    EXPECT_EQ(run.stats.sparse_layer_steps, int64_t{kStoriesLayers} * (kTokens - 1));
    EXPECT_EQ(run.stats.dense_fallbacks, 0);
    EXPECT_EQ(run.stats.stale_selections, 0);
  }
}

TEST(SparsePoliciesStoriesTest, AsyncSpadeIsSparseFromTheFirstDecodeStepWhenTheSelectorKeepsUp) {
  ASYNCSPADE_REQUIRE_STORIES();
  const auto weights = testing::StoriesWeights();
  // Threshold 4 + 16 + 16 = 36 < 65: every decode step is sparse; the prefill submitted the
  // selection for the first one.
  const auto run = GenerateWithPolicy(weights, PolicyConfig(SparsePolicy::kAsyncSpade, 16, 4, 16), LongPrompt(), 20);
  ASSERT_EQ(run.tokens.size(), 20u);
  EXPECT_EQ(run.stats.sparse_layer_steps, kStoriesLayers * 19);
  EXPECT_EQ(run.stats.dense_fallbacks, 0);
  EXPECT_EQ(run.stats.stale_selections, 0);
  EXPECT_DOUBLE_EQ(run.stats.mean_selector_lag_steps(), 1.0);
}

TEST(SparsePoliciesStoriesTest, AsyncSpadeFallsBackOnTheFirstStepsThenAttendsSparsely) {
  ASYNCSPADE_REQUIRE_STORIES();
  const auto weights = testing::StoriesWeights();
  const SparsePolicyConfig config = PolicyConfig(SparsePolicy::kAsyncSpade, 16, 4, 16);
  // A short prompt: dense (uncounted) while kv_len ≤ 36, then sparse at once, because the step
  // before the threshold already submitted a selection.
  const std::vector<int32_t> short_prompt = testing::LoadStoriesGolden().prompts[0].ids;  // 13 tokens
  const auto growing = GenerateWithPolicy(weights, config, short_prompt, 40);
  EXPECT_EQ(growing.stats.sparse_layer_steps, kStoriesLayers * 16);  // decode steps with kv_len 37..52
  EXPECT_EQ(growing.stats.dense_fallbacks, 0);

  // A selector one step late: the first decode step finds nothing (dense fallback in every
  // layer), every later one uses the selection made two steps before (stale, lag 2).
  PolicyRunOptions late;
  late.delay_steps = 1;
  const auto run = GenerateWithPolicy(weights, config, LongPrompt(), 20, late);
  EXPECT_EQ(run.stats.dense_fallbacks, kStoriesLayers * 1);
  EXPECT_EQ(run.stats.sparse_layer_steps, kStoriesLayers * 18);
  EXPECT_EQ(run.stats.stale_selections, kStoriesLayers * 18);
  EXPECT_DOUBLE_EQ(run.stats.mean_selector_lag_steps(), 2.0);
}

TEST(SparsePoliciesStoriesTest, StaleSelectionsAreUsedAndCountedWithTwoStepsOfDelay) {
  ASYNCSPADE_REQUIRE_STORIES();
  const auto weights = testing::StoriesWeights();
  PolicyRunOptions late;
  late.delay_steps = 2;
  const auto run = GenerateWithPolicy(weights, PolicyConfig(SparsePolicy::kAsyncSpade, 16, 4, 16), LongPrompt(), 20, late);
  ASSERT_EQ(run.tokens.size(), 20u);
  EXPECT_EQ(run.stats.dense_fallbacks, kStoriesLayers * 2);
  EXPECT_EQ(run.stats.sparse_layer_steps, kStoriesLayers * 17);
  EXPECT_EQ(run.stats.stale_selections, kStoriesLayers * 17);
  EXPECT_DOUBLE_EQ(run.stats.mean_selector_lag_steps(), 3.0);
}

// A late selector must not lose tokens: a selection made for position p excluded the positions the
// worker attended as "recent" at p; when it is used at t > p the worker widens its recent window by
// t - p. With a budget covering the context the output is then exactly dense, stale or not.
TEST(SparsePoliciesStoriesTest, StaleSelectionsWithABudgetCoveringTheContextStillGiveTheDenseTokens) {
  ASYNCSPADE_REQUIRE_STORIES();
  const auto weights = testing::StoriesWeights();
  const std::vector<int32_t> prompt = testing::LoadStoriesGolden().prompts[0].ids;
  constexpr int kTokens = 60;
  const auto dense = GenerateWithPolicy(weights, PolicyConfig(SparsePolicy::kDense, 512, 4, 8), prompt, kTokens);
  for (int delay : {1, 2, 5}) {
    SCOPED_TRACE(delay);
    PolicyRunOptions late;
    late.dense_below_threshold = false;
    late.delay_steps = delay;
    const auto run =
        GenerateWithPolicy(weights, PolicyConfig(SparsePolicy::kAsyncSpade, 512, 4, 8), prompt, kTokens, late);
    EXPECT_EQ(run.tokens, dense.tokens);
    EXPECT_GT(run.stats.stale_selections, 0);
  }
}

TEST(SparsePoliciesStoriesTest, ALayerWithoutASelectorFallsBackUntilOneServesItAgain) {
  ASYNCSPADE_REQUIRE_STORIES();
  const auto weights = testing::StoriesWeights();
  PolicyRunOptions run_options;
  run_options.after_step = [](uint64_t steps, LocalSelectorPool& pool) {
    if (steps == 5) pool.SetServesLayer(2, false);
    if (steps == 10) pool.SetServesLayer(2, true);
  };
  const auto run = GenerateWithPolicy(weights, PolicyConfig(SparsePolicy::kAsyncSpade, 16, 4, 16), LongPrompt(), 20,
                                      run_options);
  EXPECT_EQ(run.stats.dense_fallbacks, 5);  // layer 2 of steps 5..9
  EXPECT_EQ(run.stats.sparse_layer_steps, kStoriesLayers * 19 - 5);
  EXPECT_EQ(run.stats.stale_selections, 0);
}

TEST(SparsePoliciesStoriesTest, PerRequestPolicyOverridesTheDeploymentDefault) {
  ASYNCSPADE_REQUIRE_STORIES();
  const auto weights = testing::StoriesWeights();
  const ModelConfig& model = weights->config();
  const SparsePolicyConfig deployment = PolicyConfig(SparsePolicy::kDense, 16, 4, 16);
  const std::vector<int32_t> prompt = LongPrompt();
  const auto dense = GenerateWithPolicy(weights, deployment, prompt, 20);

  SparseAttentionStageOptions stage_options;
  stage_options.default_config = deployment;
  auto stage = SparseAttentionStage::Create(model, stage_options);
  ASSERT_TRUE(stage.ok());
  SparseAttentionStage* stage_view = stage->get();
  auto runner = CpuModelRunner::Create(weights, {32, 16}, std::move(stage).value());
  ASSERT_TRUE(runner.ok());
  GenerationEngineOptions engine_options;
  engine_options.sparse_default = deployment;
  auto engine = GenerationEngine::Create(std::move(runner).value(), engine_options);
  ASSERT_TRUE(engine.ok());

  GenerationRequest request;
  request.prompt_ids = prompt;
  request.max_tokens = 20;
  request.ignore_eos = true;
  GenerationRequest oracle = request;
  oracle.sparse_override.policy = SparsePolicy::kOracle;
  oracle.sparse_override.budget = 24;
  ASSERT_TRUE((*engine)->Submit(1, oracle).ok());
  ASSERT_TRUE((*engine)->Submit(2, request).ok());  // the deployment's dense

  GenerationRequest bad = request;
  bad.sparse_override.budget = 0;
  const absl::Status bad_budget = (*engine)->Submit(3, bad);
  EXPECT_EQ(bad_budget.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad_budget.message().find("budget"), std::string::npos) << bad_budget;
  GenerationRequest bad_pages = request;
  bad_pages.sparse = PolicyConfig(SparsePolicy::kQuest, 64, 4, 16);
  bad_pages.sparse->quest_page_size = 32;
  const absl::Status bad_quest = (*engine)->Submit(4, bad_pages);
  EXPECT_EQ(bad_quest.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad_quest.message().find("quest_page_size"), std::string::npos) << bad_quest;

  std::map<int64_t, std::vector<int32_t>> tokens;
  std::map<int64_t, SparseAttentionCounters> stats;
  bool checked_config = false;
  while ((*engine)->HasWork()) {
    auto events = (*engine)->Step();
    ASSERT_TRUE(events.ok()) << events.status();
    if (!checked_config && stage_view->SequenceConfig(1) != nullptr) {
      EXPECT_EQ(stage_view->SequenceConfig(1)->policy, SparsePolicy::kOracle);
      EXPECT_EQ(stage_view->SequenceConfig(1)->budget, 24);
      EXPECT_EQ(stage_view->SequenceConfig(2)->policy, SparsePolicy::kDense);
      checked_config = true;
    }
    for (const GenerationEvent& e : *events) {
      if (e.token_id) tokens[e.request_id].push_back(*e.token_id);
      if (e.finished) stats[e.request_id] = e.sparse_stats;
    }
  }
  EXPECT_TRUE(checked_config);
  EXPECT_EQ(stats[1].sparse_layer_steps, kStoriesLayers * 19);
  EXPECT_EQ(stats[2].sparse_layer_steps, 0);
  EXPECT_EQ(tokens[2], dense.tokens);  // batched with a sparse neighbour, still dense
  EXPECT_EQ((*engine)->sparse_totals().sparse_layer_steps, kStoriesLayers * 19);
}

// ---------------------------------------------------------------------------------------------
// The transformers fixtures (tests/fixtures/transformers): other architectures and geometries.
// ---------------------------------------------------------------------------------------------

TEST(SparsePoliciesFixturesTest, BudgetCoveringTheContextReproducesDenseTokens) {
  namespace fs = std::filesystem;
  const fs::path root = fs::path(testing::SourceDir()) / "tests/fixtures/transformers";
  if (!fs::exists(root)) GTEST_SKIP() << root << " does not exist";
  int checked = 0;
  for (const auto& entry : fs::directory_iterator(root)) {
    if (!entry.is_directory() || !fs::exists(entry.path() / "fixture.json")) continue;
    SCOPED_TRACE(entry.path().filename().string());
    std::ifstream in(entry.path() / "fixture.json");
    const nlohmann::json fixture = nlohmann::json::parse(in);
    auto loaded = CpuModelWeights::Load((entry.path() / fixture.at("model_dir").get<std::string>()).string());
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    const std::shared_ptr<const CpuModelWeights> weights = std::move(loaded).value();
    for (const nlohmann::json& prompt : fixture.at("prompts")) {
      const std::vector<int32_t> ids = prompt.at("ids").get<std::vector<int32_t>>();
      const std::vector<int32_t> greedy = prompt.at("greedy").at("ids").get<std::vector<int32_t>>();
      SCOPED_TRACE(::testing::Message() << ids.size() << "-token prompt");
      const int n = static_cast<int>(greedy.size());
      const auto dense = GenerateWithPolicy(weights, PolicyConfig(SparsePolicy::kDense, 256, 2, 4), ids, n);
      // transformers' greedy tokens, up to a stop token (the helper ignores EOS).
      ASSERT_GE(dense.tokens.size(), greedy.size());
      EXPECT_TRUE(std::equal(greedy.begin(), greedy.end(), dense.tokens.begin()));
      PolicyRunOptions forced;
      forced.dense_below_threshold = false;
      for (SparsePolicy policy : {SparsePolicy::kOracle, SparsePolicy::kQuest, SparsePolicy::kAsyncSpade}) {
        SCOPED_TRACE(std::string(SparsePolicyName(policy)));
        const auto run = GenerateWithPolicy(weights, PolicyConfig(policy, 256, 2, 4), ids, n, forced);
        EXPECT_EQ(run.tokens, dense.tokens);
        EXPECT_EQ(run.stats.sparse_layer_steps, int64_t{weights->config().num_layers} * (n - 1));
      }
      ++checked;
    }
  }
  EXPECT_GT(checked, 0);
}

}  // namespace
}  // namespace asyncspade
