// Shared by the policy tests: greedy generation through the engine with a SparseAttentionStage
// (and a LocalSelectorPool for asyncspade).
#pragma once

#include <gtest/gtest.h>

#include <functional>
#include <memory>
#include <vector>

#include "services/decode_worker/engine/generation_engine.h"
#include "services/decode_worker/model/cpu_model_runner.h"
#include "services/decode_worker/policy/local_selector_pool.h"
#include "services/decode_worker/policy/sparse_attention_stage.h"

namespace asyncspade::testing {

struct PolicyRun {
  std::vector<int32_t> tokens;
  SparseAttentionCounters stats;  // from the finished event
};

struct PolicyRunOptions {
  bool dense_below_threshold = true;
  int delay_steps = 0;
  SparseAttentionObserver* observer = nullptr;
  // Called after every engine step with the step count so far (e.g. to take a selector away).
  std::function<void(uint64_t steps, LocalSelectorPool& pool)> after_step;
};

// Greedy generation of `max_tokens` tokens after `prompt`, the deployment default being `config`.
inline PolicyRun GenerateWithPolicy(const std::shared_ptr<const CpuModelWeights>& weights,
                                    const SparsePolicyConfig& config, const std::vector<int32_t>& prompt,
                                    int max_tokens, const PolicyRunOptions& run = {}) {
  PolicyRun result;
  const ModelConfig& model = weights->config();
  LocalSelectorPoolOptions pool_options;
  pool_options.shape = {model.num_layers, model.num_heads, model.num_kv_heads, model.head_dim, 16};
  pool_options.params.budget = config.budget;
  pool_options.params.sinks = config.sinks;
  pool_options.params.recent = config.recent;
  pool_options.params.aggregation = KernelAggregation(config.aggregation);
  pool_options.delay_steps = run.delay_steps;
  auto pool = LocalSelectorPool::Create(pool_options);
  EXPECT_TRUE(pool.ok()) << pool.status();
  if (!pool.ok()) return result;

  SparseAttentionStageOptions stage_options;
  stage_options.default_config = config;
  stage_options.dense_below_threshold = run.dense_below_threshold;
  stage_options.selector_pool = pool->get();
  stage_options.observer = run.observer;
  auto stage = SparseAttentionStage::Create(model, stage_options);
  EXPECT_TRUE(stage.ok()) << stage.status();
  if (!stage.ok()) return result;
  const int blocks = static_cast<int>((prompt.size() + max_tokens) / 16 + 2);
  auto runner = CpuModelRunner::Create(weights, {blocks, 16}, std::move(stage).value());
  EXPECT_TRUE(runner.ok()) << runner.status();
  if (!runner.ok()) return result;
  GenerationEngineOptions engine_options;
  engine_options.sparse_default = config;
  auto engine = GenerationEngine::Create(std::move(runner).value(), engine_options);
  EXPECT_TRUE(engine.ok()) << engine.status();
  if (!engine.ok()) return result;

  GenerationRequest request;
  request.prompt_ids = prompt;
  request.max_tokens = max_tokens;
  request.ignore_eos = true;
  const absl::Status submitted = (*engine)->Submit(1, request);
  EXPECT_TRUE(submitted.ok()) << submitted;
  while ((*engine)->HasWork()) {
    auto events = (*engine)->Step();
    EXPECT_TRUE(events.ok()) << events.status();
    if (!events.ok()) break;
    for (const GenerationEvent& e : *events) {
      if (e.token_id) result.tokens.push_back(*e.token_id);
      if (e.finished) result.stats = e.sparse_stats;
    }
    if (run.after_step) run.after_step((*engine)->steps(), **pool);
  }
  return result;
}

inline SparsePolicyConfig PolicyConfig(SparsePolicy policy, int budget, int sinks, int recent,
                                       ScoreAggregation aggregation = ScoreAggregation::kSum) {
  SparsePolicyConfig config;
  config.aggregation = aggregation;
  config.policy = policy;
  config.budget = budget;
  config.sinks = sinks;
  config.recent = recent;
  return config;
}

}  // namespace asyncspade::testing
