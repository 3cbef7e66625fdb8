// The CUDA runner's host-side step planning (no GPU needed): padding buckets, KV classes, the
// arrays the kernels read, sparse groups and their membership, launch-parameter clamping, and the
// validation errors.
#include "services/decode_worker/model/cuda/step_plan.h"

#include <gtest/gtest.h>

#include <vector>

namespace asyncspade::cuda_engine {
namespace {

StepLimits Limits() {
  StepLimits l;
  l.max_tokens = 256;
  l.max_seqs = 8;
  l.max_kv_len = 40960;
  l.page_size = 16;
  l.num_kv_blocks = 4096;
  l.vocab_size = 1000;
  l.num_layers = 4;
  l.logits_chunk_rows = 64;
  return l;
}

SparsePolicyConfig Config(SparsePolicy policy, int budget = 64, int sinks = 4, int recent = 16) {
  SparsePolicyConfig c;
  c.policy = policy;
  c.budget = budget;
  c.sinks = sinks;
  c.recent = recent;
  return c;
}

struct TestSequence {
  std::vector<int32_t> tokens;
  std::vector<int32_t> table;
  int start = 0;
  LogitsWanted logits = LogitsWanted::kLast;
  const SparsePolicyConfig* sparse = nullptr;
};

ForwardBatch Batch(const std::vector<TestSequence>& seqs) {
  ForwardBatch batch;
  for (size_t i = 0; i < seqs.size(); ++i) {
    ForwardSequence fs;
    fs.sequence_id = static_cast<int64_t>(100 + i);
    fs.tokens = seqs[i].tokens;
    fs.start_position = seqs[i].start;
    fs.block_table = seqs[i].table;
    fs.logits = seqs[i].logits;
    fs.sparse = seqs[i].sparse;
    batch.sequences.push_back(fs);
  }
  return batch;
}

std::vector<int32_t> Table(int first, int n) {
  std::vector<int32_t> t;
  for (int i = 0; i < n; ++i) t.push_back(first + 3 * i);
  return t;
}

TEST(StepPlanTest, Buckets) {
  EXPECT_EQ(BatchBucket(1), 1);
  EXPECT_EQ(BatchBucket(3), 4);
  EXPECT_EQ(BatchBucket(16), 16);
  EXPECT_EQ(BatchBucket(17), 32);
  EXPECT_EQ(TokenBucket(1), 1);
  EXPECT_EQ(TokenBucket(33), 64);
  EXPECT_EQ(TokenBucket(65), 128);
  EXPECT_EQ(TokenBucket(129), 192);
  EXPECT_EQ(KvClass(1, 40960), 256);
  EXPECT_EQ(KvClass(257, 40960), 512);
  EXPECT_EQ(KvClass(8192, 40960), 8192);
  EXPECT_EQ(KvClass(8193, 40960), 16384);
  EXPECT_EQ(KvClass(32768, 40960), 32768);
  EXPECT_EQ(KvClass(32769, 40960), 40960);
  EXPECT_EQ(KvClass(100, 128), 128);
  EXPECT_EQ(KvClass(5000, 5008), 5008);
}

TEST(StepPlanTest, DecodeStepIsPaddedToItsBucket) {
  StepPlanner planner(Limits(), StepAttentionOptions{});
  StepPlan plan;
  planner.Reserve(&plan);
  // Three decode sequences at contexts 5, 40 and 300.
  const std::vector<TestSequence> seqs = {
      {{7}, Table(10, 1), 4}, {{8}, Table(20, 3), 39}, {{9}, Table(40, 19), 299, LogitsWanted::kNone}};
  ASSERT_TRUE(planner.Build(Batch(seqs), &plan).ok());
  EXPECT_TRUE(plan.decode_only);
  EXPECT_EQ(plan.num_seqs, 3);
  EXPECT_EQ(plan.seqs_padded, 4);
  EXPECT_EQ(plan.tokens_padded, 4);
  EXPECT_EQ(plan.kv_class, 512);
  EXPECT_EQ(plan.block_stride, 32);
  EXPECT_EQ(plan.token_ids, (std::vector<int32_t>{7, 8, 9, 0}));
  EXPECT_EQ(plan.positions, (std::vector<int32_t>{4, 39, 299, 0}));
  // Slot = block * 16 + offset; padding −1.
  EXPECT_EQ(plan.slots, (std::vector<int64_t>{10 * 16 + 4, (20 + 3 * 2) * 16 + 7, (40 + 3 * 18) * 16 + 11, -1}));
  EXPECT_EQ(plan.q_indptr, (std::vector<int32_t>{0, 1, 2, 3, 4}));
  EXPECT_EQ(plan.kv_lens, (std::vector<int32_t>{5, 40, 300, 0}));
  EXPECT_EQ(plan.kv_lens_dense, plan.kv_lens);
  EXPECT_EQ(plan.last_rows, (std::vector<int32_t>{0, 1, 2, -1}));
  ASSERT_EQ(plan.block_tables.size(), 4u * 32);
  EXPECT_EQ(plan.block_tables[0], 10);
  EXPECT_EQ(plan.block_tables[1], 0);  // beyond the sequence's blocks
  EXPECT_EQ(plan.block_tables[32 + 2], 26);
  EXPECT_EQ(plan.block_tables[64 + 18], 94);
  EXPECT_EQ(plan.block_tables[96], 0);  // padded sequence
  // Sequence 2 wants no logits.
  EXPECT_EQ(plan.row_offsets, (std::vector<int32_t>{0, 1, 2, 2}));
  EXPECT_EQ(plan.num_logit_rows, 2);
  EXPECT_EQ(plan.decode_logit_source, (std::vector<int32_t>{0, 1}));
  EXPECT_EQ(plan.num_groups, 0);
}

TEST(StepPlanTest, MixedStepKeepsSequencesAndPadsTokens) {
  StepPlanner planner(Limits(), StepAttentionOptions{});
  StepPlan plan;
  planner.Reserve(&plan);
  std::vector<int32_t> prompt(70);
  for (int i = 0; i < 70; ++i) prompt[i] = 10 + i;
  const std::vector<TestSequence> seqs = {{prompt, Table(0, 5), 0, LogitsWanted::kAll}, {{3}, Table(1, 2), 20}};
  ASSERT_TRUE(planner.Build(Batch(seqs), &plan).ok());
  EXPECT_FALSE(plan.decode_only);
  EXPECT_EQ(plan.seqs_padded, 2);
  EXPECT_EQ(plan.num_tokens, 71);
  EXPECT_EQ(plan.tokens_padded, 128);
  EXPECT_EQ(plan.max_q_len, 70);
  EXPECT_EQ(plan.q_indptr, (std::vector<int32_t>{0, 70, 71}));
  EXPECT_EQ(plan.kv_lens, (std::vector<int32_t>{70, 21}));
  EXPECT_EQ(plan.last_rows, (std::vector<int32_t>{69, 70}));
  EXPECT_EQ(plan.slots[70], int64_t{1 + 3} * 16 + 4);
  EXPECT_EQ(plan.slots[71], -1);
  EXPECT_EQ(plan.num_logit_rows, 71);
  EXPECT_EQ(plan.row_offsets, (std::vector<int32_t>{0, 70, 71}));
  ASSERT_EQ(plan.logit_rows.size(), 128u);  // padded to whole LM-head chunks of 64
  EXPECT_EQ(plan.logit_rows[0], 0);
  EXPECT_EQ(plan.logit_rows[70], 70);
  EXPECT_EQ(plan.logit_rows[71], -1);
}

// On-device sampling: a sampled sequence's row is computed whether or not its logits come back;
// sample-only rows follow the returned ones; every other row is greedy (and ignored).
TEST(StepPlanTest, SampledRowsAreComputedAndOnlyWantedLogitsReturned) {
  StepLimits limits = Limits();
  limits.sample_tokens = true;
  StepPlanner planner(limits, StepAttentionOptions{});
  StepPlan plan;
  planner.Reserve(&plan);
  kernels::SamplingParams hot;
  hot.temperature = 0.9f;
  hot.top_p = 0.8f;
  hot.seed = 77;
  std::vector<int32_t> prompt(20);
  for (int i = 0; i < 20; ++i) prompt[i] = 10 + i;
  // Mixed: 0 a sampled prefill without logits, 1 a decode with logits and no draw, 2 a prompt
  // with all its logits and a draw, 3 a decode drawn without logits.
  const std::vector<TestSequence> seqs = {{prompt, Table(0, 2), 0, LogitsWanted::kNone},
                                          {{3}, Table(1, 2), 20},
                                          {{4, 5, 6}, Table(2, 1), 0, LogitsWanted::kAll},
                                          {{7}, Table(3, 1), 5, LogitsWanted::kNone}};
  ForwardBatch batch = Batch(seqs);
  batch.sequences[0].sampling = &hot;
  batch.sequences[0].rng_step = 3;
  batch.sequences[2].sampling = &hot;
  batch.sequences[2].rng_step = 0;
  batch.sequences[3].sampling = &hot;
  batch.sequences[3].rng_step = 9;
  ASSERT_TRUE(planner.Build(batch, &plan).ok());
  EXPECT_FALSE(plan.decode_only);
  // Token rows: 0..19 sequence 0, 20 sequence 1, 21..23 sequence 2, 24 sequence 3.
  EXPECT_EQ(plan.row_offsets, (std::vector<int32_t>{0, 0, 1, 4, 4}));
  EXPECT_EQ(plan.num_output_rows, 4);
  EXPECT_EQ(plan.num_logit_rows, 6);
  EXPECT_EQ(std::vector<int32_t>(plan.logit_rows.begin(), plan.logit_rows.begin() + 7),
            (std::vector<int32_t>{20, 21, 22, 23, 19, 24, -1}));
  EXPECT_EQ(plan.logit_row_output, (std::vector<int32_t>{0, 1, 2, 3, -1, -1}));
  EXPECT_EQ(plan.sample_row, (std::vector<int32_t>{4, -1, 3, 5}));
  EXPECT_EQ(plan.num_sampled, 3);
  ASSERT_EQ(plan.sample_params.size(), 6u);
  EXPECT_EQ(plan.sample_params[4].seed, 77u);
  EXPECT_EQ(plan.sample_params[0].temperature, 0.0f);
  EXPECT_EQ(plan.sample_steps, (std::vector<uint64_t>{0, 0, 0, 0, 3, 9}));

  // Decode: row b is sequence b; logits only for the one that asks.
  const std::vector<TestSequence> decode = {{{7}, Table(10, 1), 4, LogitsWanted::kNone},
                                            {{8}, Table(20, 3), 39},
                                            {{9}, Table(40, 19), 299, LogitsWanted::kNone}};
  batch = Batch(decode);
  batch.sequences[0].sampling = &hot;
  batch.sequences[0].rng_step = 5;
  batch.sequences[1].sampling = &hot;
  ASSERT_TRUE(planner.Build(batch, &plan).ok());
  EXPECT_TRUE(plan.decode_only);
  EXPECT_EQ(plan.num_output_rows, 1);
  EXPECT_EQ(plan.decode_logit_source, (std::vector<int32_t>{1}));
  EXPECT_EQ(plan.row_offsets, (std::vector<int32_t>{0, 0, 1, 1}));
  EXPECT_EQ(plan.sample_row, (std::vector<int32_t>{0, 1, -1}));
  EXPECT_EQ(plan.num_sampled, 2);
  ASSERT_EQ(plan.sample_params.size(), 3u);
  EXPECT_EQ(plan.sample_steps, (std::vector<uint64_t>{5, 0, 0}));
  EXPECT_EQ(plan.sample_params[2].temperature, 0.0f);

  // A runner that does not sample ignores the requests.
  StepPlanner host(Limits(), StepAttentionOptions{});
  host.Reserve(&plan);
  ASSERT_TRUE(host.Build(batch, &plan).ok());
  EXPECT_EQ(plan.num_sampled, 0);
  EXPECT_EQ(plan.num_output_rows, 1);
  EXPECT_TRUE(plan.sample_params.empty());
}

TEST(StepPlanTest, SparseGroupsAndMembership) {
  StepAttentionOptions options;
  options.default_config = Config(SparsePolicy::kDense);
  StepPlanner planner(Limits(), options);
  StepPlan plan;
  planner.Reserve(&plan);
  const SparsePolicyConfig oracle = Config(SparsePolicy::kOracle);     // sparse above 84 keys
  const SparsePolicyConfig quest = Config(SparsePolicy::kQuest, 128);  // sparse above 148
  const SparsePolicyConfig spade = Config(SparsePolicy::kAsyncSpade);  // no selector here
  std::vector<TestSequence> seqs = {{{5}, Table(0, 20), 299, LogitsWanted::kLast, &quest},
                                    {{5}, Table(1, 20), 299, LogitsWanted::kLast, &oracle},
                                    {{5}, Table(2, 20), 50, LogitsWanted::kLast, &oracle},   // short: dense
                                    {{5}, Table(3, 20), 299, LogitsWanted::kLast, nullptr},  // default dense
                                    {{5}, Table(4, 20), 299, LogitsWanted::kLast, &spade}};
  ASSERT_TRUE(planner.Build(Batch(seqs), &plan).ok());
  ASSERT_EQ(plan.num_groups, 2);
  // Canonical order: quest before oracle (enum order).
  EXPECT_EQ(plan.groups[0].key.policy, SparsePolicy::kQuest);
  EXPECT_EQ(plan.groups[1].key.policy, SparsePolicy::kOracle);
  EXPECT_TRUE(plan.quest_update);
  EXPECT_FALSE(plan.pure_sparse);
  EXPECT_EQ(plan.seqs_padded, 8);
  EXPECT_EQ(plan.groups[0].kv_lens, (std::vector<int32_t>{300, 0, 0, 0, 0, 0, 0, 0}));
  EXPECT_EQ(plan.groups[0].scatter_rows, (std::vector<int32_t>{0, -1, -1, -1, -1, -1, -1, -1}));
  EXPECT_EQ(plan.groups[1].kv_lens, (std::vector<int32_t>{0, 300, 0, 0, 0, 0, 0, 0}));
  EXPECT_EQ(plan.groups[1].scatter_rows, (std::vector<int32_t>{-1, 1, -1, -1, -1, -1, -1, -1}));
  EXPECT_EQ(plan.groups[1].num_members, 1);
  EXPECT_EQ(plan.kv_lens_dense, (std::vector<int32_t>{0, 0, 51, 300, 300, 0, 0, 0}));
  EXPECT_EQ(plan.attention, (std::vector<SequenceAttention>{SequenceAttention::kSparse, SequenceAttention::kSparse,
                                                            SequenceAttention::kDense, SequenceAttention::kDense,
                                                            SequenceAttention::kDenseFallback}));
  // Launch parameters at class 512: unclamped.
  EXPECT_EQ(plan.kv_class, 512);
  EXPECT_EQ(plan.groups[0].quest_pages, 8);
  EXPECT_EQ(plan.groups[0].num_selected, 128);
  EXPECT_EQ(plan.groups[0].max_indices, 4 + 128 + 16);
  EXPECT_EQ(plan.groups[1].num_selected, 64);
  EXPECT_EQ(plan.groups[1].max_indices, 4 + 64 + 16);
}

TEST(StepPlanTest, OneGroupHoldingEverySequenceIsPure) {
  StepPlanner planner(Limits(), StepAttentionOptions{});
  StepPlan plan;
  planner.Reserve(&plan);
  const SparsePolicyConfig oracle = Config(SparsePolicy::kOracle);
  std::vector<TestSequence> seqs = {{{5}, Table(0, 20), 299, LogitsWanted::kLast, &oracle},
                                    {{6}, Table(1, 20), 199, LogitsWanted::kLast, &oracle},
                                    {{7}, Table(2, 20), 99, LogitsWanted::kLast, &oracle}};
  ASSERT_TRUE(planner.Build(Batch(seqs), &plan).ok());
  EXPECT_EQ(plan.num_groups, 1);
  EXPECT_TRUE(plan.pure_sparse);
  EXPECT_FALSE(plan.quest_update);
  // One member below the threshold: no longer pure.
  seqs[2].start = 10;
  ASSERT_TRUE(planner.Build(Batch(seqs), &plan).ok());
  EXPECT_EQ(plan.num_groups, 1);
  EXPECT_FALSE(plan.pure_sparse);
  EXPECT_EQ(plan.groups[0].num_members, 2);
}

TEST(StepPlanTest, ThresholdCanBeDisabledAndLaunchParametersAreClamped) {
  StepAttentionOptions options;
  options.dense_below_threshold = false;
  StepPlanner planner(Limits(), options);
  StepPlan plan;
  planner.Reserve(&plan);
  const SparsePolicyConfig oracle = Config(SparsePolicy::kOracle, 4096, 4, 16);
  const SparsePolicyConfig quest = Config(SparsePolicy::kQuest, 4096, 4, 16);
  std::vector<TestSequence> seqs = {{{5}, Table(0, 20), 9, LogitsWanted::kLast, &oracle},
                                    {{5}, Table(1, 20), 99, LogitsWanted::kLast, &quest}};
  ASSERT_TRUE(planner.Build(Batch(seqs), &plan).ok());
  ASSERT_EQ(plan.num_groups, 2);
  EXPECT_EQ(plan.kv_class, 256);
  const SparseGroupPlan& q = plan.groups[0];
  const SparseGroupPlan& o = plan.groups[1];
  EXPECT_EQ(o.num_members, 1);
  EXPECT_EQ(o.num_selected, 256 - 4 - 16);  // at most the positions outside sinks and window
  EXPECT_EQ(o.max_indices, 256);
  EXPECT_EQ(q.quest_pages, (256 - 20 + 15) / 16 + 2);
  EXPECT_EQ(q.num_selected, q.quest_pages * 16);
  EXPECT_LE(q.max_indices, 256 + 4 * 16);
  // Sinks and recent beyond the class are clamped so their sum stays within it.
  SparseGroupPlan g;
  ResolveGroupLaunch({SparsePolicy::kOracle, 100, 200, 300}, 256, 16, &g);
  EXPECT_EQ(g.sinks, 200);
  EXPECT_EQ(g.recent, 56);
  EXPECT_EQ(g.num_selected, 0);
  EXPECT_EQ(g.max_indices, 256);
}

TEST(StepPlanTest, DenseOnlyRunnerIgnoresPolicies) {
  StepAttentionOptions options;
  options.per_sequence_policies = false;
  StepPlanner planner(Limits(), options);
  StepPlan plan;
  planner.Reserve(&plan);
  const SparsePolicyConfig quest = Config(SparsePolicy::kQuest);
  ASSERT_TRUE(planner.Build(Batch({{{5}, Table(0, 20), 299, LogitsWanted::kLast, &quest}}), &plan).ok());
  EXPECT_EQ(plan.num_groups, 0);
  EXPECT_FALSE(plan.quest_update);
  EXPECT_EQ(plan.attention, std::vector<SequenceAttention>{SequenceAttention::kDense});
}

TEST(StepPlanTest, UnsupportedShapesFallBackToDense) {
  StepAttentionOptions options;
  options.quest_supported = false;
  options.oracle_supported = false;
  StepPlanner planner(Limits(), options);
  StepPlan plan;
  planner.Reserve(&plan);
  const SparsePolicyConfig oracle = Config(SparsePolicy::kOracle);
  ASSERT_TRUE(planner
                  .Build(Batch({{{5}, Table(0, 20), 299, LogitsWanted::kLast, &oracle},
                                {{5}, Table(1, 20), 20, LogitsWanted::kLast, &oracle}}),
                         &plan)
                  .ok());
  EXPECT_EQ(plan.num_groups, 0);
  EXPECT_EQ(plan.attention,
            (std::vector<SequenceAttention>{SequenceAttention::kDenseFallback, SequenceAttention::kDense}));
}

TEST(StepPlanTest, InvalidBatchesAreRejectedWithTheSequence) {
  StepPlanner planner(Limits(), StepAttentionOptions{});
  StepPlan plan;
  planner.Reserve(&plan);
  auto error = [&](const std::vector<TestSequence>& seqs) {
    absl::Status s = planner.Build(Batch(seqs), &plan);
    EXPECT_FALSE(s.ok());
    return std::string(s.message());
  };
  EXPECT_NE(error({{{}, Table(0, 1)}}).find("sequence 100 has no new tokens"), std::string::npos);
  EXPECT_NE(error({{{1000}, Table(0, 1)}}).find("token id 1000 outside the vocabulary"), std::string::npos);
  EXPECT_NE(error({{{1, 2}, Table(0, 1), 15}}).find("block table holds 16"), std::string::npos);
  EXPECT_NE(error({{{1}, {4096}}}).find("KV block 4096"), std::string::npos);
  EXPECT_NE(error({{{1}, Table(0, 2561), 40960}}).find("max_seq_len"), std::string::npos);
  EXPECT_NE(error(std::vector<TestSequence>(9, {{1}, Table(0, 1)})).find("max_batch_size"), std::string::npos);
  EXPECT_NE(error({{std::vector<int32_t>(257, 1), Table(0, 17)}}).find("max batch tokens"), std::string::npos);
  SparsePolicyConfig quest = Config(SparsePolicy::kQuest);
  quest.quest_page_size = 32;
  const absl::Status s = planner.Build(Batch({{{1}, Table(0, 1), 0, LogitsWanted::kLast, &quest}}), &plan);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace asyncspade::cuda_engine
