// Quest and oracle on the CUDA runner: with a budget that covers the context they must reproduce
// dense attention; in a batch that mixes policies each sequence must get what it gets in a batch of
// its own policy (the per-group masks and row scatter); graphs and eager agree.
//
// The GPU top-k returns a row's positions in an unspecified order (warps append them atomically), so
// a sparse sequence's attention sums the same terms in an order that can change from run to run:
// its results agree to rounding (checked at 5e-3 relative), not bit for bit. Dense sequences do not
// go through top-k and are compared exactly.
#include <gtest/gtest.h>

#include <cstdio>
#include <memory>
#include <vector>

#include "services/decode_worker/model/cuda/cuda_model_runner.h"
#include "tests/gpu/model/engine_gpu_test_util.h"

namespace asyncspade {
namespace {

using namespace engine_gpu_testing;  // NOLINT

SparsePolicyConfig Policy(SparsePolicy policy, int budget, int sinks, int recent) {
  SparsePolicyConfig c;
  c.policy = policy;
  c.budget = budget;
  c.sinks = sinks;
  c.recent = recent;
  c.quest_page_size = 16;
  return c;
}

// Sequences with their own block tables, driven step by step. Sequence s reads token stream
// s % num_streams, so several sequences can hold the same text.
class Driver {
 public:
  Driver(CudaModelRunner& runner, int num_seqs, int blocks_per_seq, int num_streams) : runner_(runner) {
    const int vocab = runner.config().vocab_size;
    for (int s = 0; s < num_seqs; ++s) {
      std::vector<int32_t> table;
      for (int j = 0; j < blocks_per_seq; ++j) table.push_back(s * blocks_per_seq + j);
      tables_.push_back(table);
      tokens_.push_back(TokenIds(blocks_per_seq * 16, vocab, 31 + s % num_streams));
      cached_.push_back(0);
    }
  }

  // Prefills sequence s to `length` tokens (chunks of up to 512).
  void Prefill(int s, int length) {
    while (cached_[s] < length) {
      const int n = std::min(512, length - cached_[s]);
      ForwardBatch batch;
      batch.sequences.push_back(Entry(s, n, nullptr));
      ASSERT_TRUE(runner_.Forward(batch, &output_).ok());
      cached_[s] += n;
    }
  }

  // One decode step of `seqs` with their policies. With `rewind`, the sequences' positions do not
  // advance (the same token is written to the same slot again by the next call).
  std::vector<std::vector<float>> Decode(const std::vector<int>& seqs,
                                         const std::vector<const SparsePolicyConfig*>& policies, bool rewind = false) {
    ForwardBatch batch;
    for (size_t i = 0; i < seqs.size(); ++i) batch.sequences.push_back(Entry(seqs[i], 1, policies[i]));
    const absl::Status status = runner_.Forward(batch, &output_);
    EXPECT_TRUE(status.ok()) << status;
    std::vector<std::vector<float>> rows;
    const int vocab = runner_.config().vocab_size;
    for (size_t i = 0; i < seqs.size() && status.ok(); ++i) {
      rows.emplace_back(output_.row(static_cast<int>(i), 0), output_.row(static_cast<int>(i), 0) + vocab);
      if (!rewind) ++cached_[seqs[i]];
    }
    return rows;
  }

 private:
  ForwardSequence Entry(int s, int n, const SparsePolicyConfig* policy) {
    ForwardSequence fs;
    fs.sequence_id = s;
    fs.tokens = absl::MakeConstSpan(tokens_[s]).subspan(cached_[s], n);
    fs.start_position = cached_[s];
    fs.block_table = tables_[s];
    fs.sparse = policy;
    return fs;
  }

  CudaModelRunner& runner_;
  std::vector<std::vector<int32_t>> tables_, tokens_;
  std::vector<int> cached_;
  ForwardOutput output_;
};

std::unique_ptr<CudaModelRunner> MakeRunner(bool dense_below_threshold, bool graphs, int tp = 1) {
  CudaModelRunnerOptions options = SmallRunnerOptions(/*num_kv_blocks=*/16 * 40, /*max_seq_len=*/1024);
  options.max_batch_size = 16;
  options.dense_below_threshold = dense_below_threshold;
  options.cuda_graphs = graphs;
  options.devices.clear();
  for (int r = 0; r < tp; ++r) options.devices.push_back(r);
  // G = 4 query heads per KV head, head_dim 128: the shapes of Qwen3-8B's heads.
  auto runner = CudaModelRunner::CreateWithRandomWeights(SmallQwen3Config(128, 8, 2, 2), 21, options);
  EXPECT_TRUE(runner.ok()) << runner.status();
  return runner.ok() ? std::move(runner).value() : nullptr;
}

// Budget ≥ context, sparse path forced: the index lists hold every position, so quest and oracle
// compute dense attention with other kernels (bf16 rounding only).
TEST(SparsePoliciesGpuTest, FullBudgetQuestAndOracleEqualDense) {
  SKIP_WITHOUT_GPUS(1);
  for (bool graphs : {true, false}) {
    std::unique_ptr<CudaModelRunner> runner = MakeRunner(/*dense_below_threshold=*/false, graphs);
    ASSERT_NE(runner, nullptr);
    const SparsePolicyConfig dense = Policy(SparsePolicy::kDense, 2048, 4, 16);
    const SparsePolicyConfig oracle = Policy(SparsePolicy::kOracle, 4096, 4, 16);
    const SparsePolicyConfig quest = Policy(SparsePolicy::kQuest, 4096, 4, 16);
    // Sequences 0-2 dense, 3-5 oracle, 6-8 quest; the same three contexts per policy.
    Driver driver(*runner, 9, 40, /*num_streams=*/3);
    const int lengths[3] = {300, 417, 170};
    for (int s = 0; s < 9; ++s) driver.Prefill(s, lengths[s % 3]);
    double worst[2] = {0.0, 0.0};
    for (int step = 0; step < 6; ++step) {
      const auto d = driver.Decode({0, 1, 2}, {&dense, &dense, &dense});
      const auto o = driver.Decode({3, 4, 5}, {&oracle, &oracle, &oracle});
      const auto q = driver.Decode({6, 7, 8}, {&quest, &quest, &quest});
      for (int i = 0; i < 3; ++i) {
        ASSERT_TRUE(AllFinite(o[i].data(), o[i].size()));
        ASSERT_TRUE(AllFinite(q[i].data(), q[i].size()));
        const double eo = RelativeL2(o[i].data(), d[i].data(), d[i].size());
        const double eq = RelativeL2(q[i].data(), d[i].data(), d[i].size());
        worst[0] = std::max(worst[0], eo);
        worst[1] = std::max(worst[1], eq);
        EXPECT_LE(eo, 1e-2) << "oracle, step " << step << ", sequence " << i;
        EXPECT_LE(eq, 1e-2) << "quest, step " << step << ", sequence " << i;
      }
    }
    const int layers = runner->config().num_layers;
    for (int s = 3; s < 9; ++s) {
      EXPECT_EQ(runner->SequenceSparseCounters(s).sparse_layer_steps, 6 * layers) << "sequence " << s;
    }
    EXPECT_EQ(runner->SequenceSparseCounters(0).sparse_layer_steps, 0);
    std::printf("[ gpu ] full-budget sparse vs dense (graphs %s): oracle max rel L2 %.3g, quest %.3g\n",
                graphs ? "on" : "off", worst[0], worst[1]);
  }
}

// A batch of [dense, oracle, quest] gives each sequence the logits it gets in a batch of three
// sequences of its own policy (same batch bucket and KV class, so the same launch shapes): exactly
// for the dense one, to summation-order rounding for the others. A row sent to the wrong place
// would differ by O(1). The GPU top-k returns its (exact) set in an unspecified order, so sparse
// attention sums the same terms in another order; in bf16 a 1-ulp flip of an attention output then
// propagates through the layers of a random-weights model: measured up to 1.3% (row-relative L2)
// between graph replay and eager execution on the H200.
constexpr double kOrderTolerance = 2e-2;
TEST(SparsePoliciesGpuTest, MixedPolicyBatchEqualsSinglePolicyBatches) {
  SKIP_WITHOUT_GPUS(1);
  for (bool graphs : {true, false}) {
    std::unique_ptr<CudaModelRunner> runner = MakeRunner(/*dense_below_threshold=*/true, graphs);
    ASSERT_NE(runner, nullptr);
    const SparsePolicyConfig dense = Policy(SparsePolicy::kDense, 64, 4, 16);
    const SparsePolicyConfig oracle = Policy(SparsePolicy::kOracle, 64, 4, 16);
    const SparsePolicyConfig quest = Policy(SparsePolicy::kQuest, 64, 4, 16);
    // Contexts between 257 and 512 (one KV class), all above sinks + recent + budget = 84.
    Driver driver(*runner, 9, 40, /*num_streams=*/9);
    const int lengths[9] = {300, 310, 320, 400, 410, 420, 350, 360, 370};
    for (int s = 0; s < 9; ++s) driver.Prefill(s, lengths[s]);
    double worst = 0.0;
    for (int step = 0; step < 4; ++step) {
      // Rewound: the same tokens at the same positions, first mixed, then per policy.
      const auto mixed = driver.Decode({0, 3, 6}, {&dense, &oracle, &quest}, /*rewind=*/true);
      const auto d = driver.Decode({0, 1, 2}, {&dense, &dense, &dense}, true);
      const auto o = driver.Decode({3, 4, 5}, {&oracle, &oracle, &oracle}, true);
      const auto q = driver.Decode({6, 7, 8}, {&quest, &quest, &quest}, false);
      driver.Decode({0, 1, 2}, {&dense, &dense, &dense});
      driver.Decode({3, 4, 5}, {&oracle, &oracle, &oracle});
      ASSERT_EQ(mixed.size(), 3u);
      ASSERT_TRUE(AllFinite(mixed[1].data(), mixed[1].size()));
      ASSERT_TRUE(AllFinite(mixed[2].data(), mixed[2].size()));
      EXPECT_EQ(mixed[0], d[0]) << "dense sequence differs between the mixed and the dense batch, step " << step;
      const double eo = RelativeL2(mixed[1].data(), o[0].data(), o[0].size());
      const double eq = RelativeL2(mixed[2].data(), q[0].data(), q[0].size());
      worst = std::max({worst, eo, eq});
      EXPECT_LE(eo, kOrderTolerance) << "oracle sequence: mixed vs oracle batch, step " << step;
      EXPECT_LE(eq, kOrderTolerance) << "quest sequence: mixed vs quest batch, step " << step;
      // A small budget really restricts attention: the result is not dense attention's.
      EXPECT_GT(RelativeL2(mixed[1].data(), d[0].data(), d[0].size()), 0.0);
    }
    EXPECT_GT(runner->SequenceSparseCounters(3).sparse_layer_steps, 0);
    EXPECT_EQ(runner->SequenceSparseCounters(0).sparse_layer_steps, 0);
    std::printf(
        "[ gpu ] mixed-policy batch vs single-policy batches (graphs %s): dense identical, sparse max rel "
        "L2 %.3g\n",
        graphs ? "on" : "off", worst);
  }
}

// Below sinks + recent + budget a quest/oracle sequence attends densely (not counted as sparse).
TEST(SparsePoliciesGpuTest, ShortContextsAttendDensely) {
  SKIP_WITHOUT_GPUS(1);
  std::unique_ptr<CudaModelRunner> runner = MakeRunner(/*dense_below_threshold=*/true, /*graphs=*/true);
  ASSERT_NE(runner, nullptr);
  const SparsePolicyConfig dense = Policy(SparsePolicy::kDense, 2048, 4, 64);
  const SparsePolicyConfig oracle = Policy(SparsePolicy::kOracle, 2048, 4, 64);
  Driver driver(*runner, 2, 40, /*num_streams=*/1);
  driver.Prefill(0, 200);
  driver.Prefill(1, 200);
  for (int step = 0; step < 3; ++step) {
    const auto d = driver.Decode({0}, {&dense});
    const auto o = driver.Decode({1}, {&oracle});
    EXPECT_EQ(d[0], o[0]) << "a short oracle sequence must attend exactly like a dense one";
  }
  EXPECT_EQ(runner->SequenceSparseCounters(1).sparse_layer_steps, 0);
  EXPECT_EQ(runner->TotalSparseCounters().dense_fallbacks, 0);
}

// Graph replay and eager execution agree (to summation order) with quest and oracle groups in the
// batch.
TEST(SparsePoliciesGpuTest, SparseGraphsMatchEager) {
  SKIP_WITHOUT_GPUS(1);
  std::vector<std::vector<float>> results[2];
  for (int graphs = 0; graphs < 2; ++graphs) {
    std::unique_ptr<CudaModelRunner> runner = MakeRunner(/*dense_below_threshold=*/true, graphs == 1);
    ASSERT_NE(runner, nullptr);
    const SparsePolicyConfig oracle = Policy(SparsePolicy::kOracle, 128, 4, 32);
    const SparsePolicyConfig quest = Policy(SparsePolicy::kQuest, 128, 4, 32);
    Driver driver(*runner, 3, 40, /*num_streams=*/3);
    driver.Prefill(0, 500);
    driver.Prefill(1, 520);
    driver.Prefill(2, 260);
    for (int step = 0; step < 8; ++step) {
      for (auto& row : driver.Decode({0, 1, 2}, {&oracle, &quest, &oracle})) results[graphs].push_back(row);
      for (auto& row : driver.Decode({1}, {&quest})) results[graphs].push_back(row);
    }
    if (graphs == 1) {
      EXPECT_TRUE(runner->last_step_used_graph());
    }
  }
  ASSERT_EQ(results[0].size(), results[1].size());
  double worst = 0.0;
  for (size_t i = 0; i < results[0].size(); ++i) {
    ASSERT_TRUE(AllFinite(results[1][i].data(), results[1][i].size()));
    const double e = RelativeL2(results[1][i].data(), results[0][i].data(), results[0][i].size());
    worst = std::max(worst, e);
    EXPECT_LE(e, kOrderTolerance) << "row " << i;
  }
  std::printf("[ gpu ] sparse decode, graphs vs eager: max rel L2 %.3g over %zu rows\n", worst, results[0].size());
}

}  // namespace
}  // namespace asyncspade
