// Tensor parallelism: the same random model on two GPUs (heads, gate/up rows and down/o_proj
// columns split, NCCL all-reduce of the partial sums) gives TP=1's logits within the bf16 budget,
// for prefill and graph-replayed decode steps, dense and sparse.
#include <gtest/gtest.h>

#include <cstdio>
#include <memory>
#include <vector>

#include "services/decode_worker/model/cuda/cuda_model_runner.h"
#include "tests/gpu/model/engine_gpu_test_util.h"

namespace asyncspade {
namespace {

using namespace engine_gpu_testing;  // NOLINT

std::unique_ptr<CudaModelRunner> MakeRunner(int tp, bool dense_below_threshold) {
  CudaModelRunnerOptions options = SmallRunnerOptions(/*num_kv_blocks=*/256, /*max_seq_len=*/1024);
  options.devices.clear();
  for (int r = 0; r < tp; ++r) options.devices.push_back(r);
  options.dense_below_threshold = dense_below_threshold;
  // 8 query heads over 4 KV heads (2 per rank at TP=2), 3 layers, a vocabulary that needs padding.
  auto runner = CudaModelRunner::CreateWithRandomWeights(SmallQwen3Config(128, 8, 4, 3, 1003), 99, options);
  EXPECT_TRUE(runner.ok()) << runner.status();
  return runner.ok() ? std::move(runner).value() : nullptr;
}

// Prefill of three prompts (kAll logits) then 10 decode steps with fixed tokens; every logits row.
std::vector<std::vector<float>> Script(CudaModelRunner& runner, const SparsePolicyConfig* policy) {
  const int vocab = runner.config().vocab_size;
  const int lengths[3] = {90, 211, 33};
  std::vector<std::vector<int32_t>> tables(3), tokens(3);
  for (int s = 0; s < 3; ++s) {
    for (int j = 0; j < 20; ++j) tables[s].push_back(s * 20 + j);
    tokens[s] = TokenIds(lengths[s] + 10, vocab, 7 + s);
  }
  std::vector<std::vector<float>> rows;
  ForwardOutput output;
  auto collect = [&] {
    for (int r = 0; r < output.row_offsets.back(); ++r) {
      rows.emplace_back(output.logits.begin() + size_t(r) * vocab, output.logits.begin() + size_t(r + 1) * vocab);
    }
  };
  ForwardBatch prefill;
  for (int s = 0; s < 3; ++s) {
    ForwardSequence fs;
    fs.sequence_id = s;
    fs.tokens = absl::MakeConstSpan(tokens[s]).subspan(0, lengths[s]);
    fs.block_table = tables[s];
    fs.logits = LogitsWanted::kAll;
    fs.sparse = policy;
    prefill.sequences.push_back(fs);
  }
  EXPECT_TRUE(runner.Forward(prefill, &output).ok());
  collect();
  for (int step = 0; step < 10; ++step) {
    ForwardBatch decode;
    for (int s = 0; s < 3; ++s) {
      ForwardSequence fs;
      fs.sequence_id = s;
      fs.tokens = absl::MakeConstSpan(tokens[s]).subspan(lengths[s] + step, 1);
      fs.start_position = lengths[s] + step;
      fs.block_table = tables[s];
      fs.sparse = policy;
      decode.sequences.push_back(fs);
    }
    EXPECT_TRUE(runner.Forward(decode, &output).ok());
    collect();
  }
  return rows;
}

void Compare(const std::vector<std::vector<float>>& tp2, const std::vector<std::vector<float>>& tp1, const char* what) {
  ASSERT_EQ(tp2.size(), tp1.size()) << what;
  double worst = 0.0;
  int argmax_checked = 0;
  for (size_t i = 0; i < tp1.size(); ++i) {
    ASSERT_TRUE(AllFinite(tp2[i].data(), tp2[i].size())) << what << " row " << i;
    const double e = RelativeL2(tp2[i].data(), tp1[i].data(), tp1[i].size());
    worst = std::max(worst, e);
    EXPECT_LE(e, 2e-2) << what << " row " << i;
    const Top2 ref = TopTwo(tp1[i].data(), static_cast<int>(tp1[i].size()));
    if (ref.margin > 2e-2 * MaxAbs(tp1[i].data(), tp1[i].size())) {
      ++argmax_checked;
      EXPECT_EQ(TopTwo(tp2[i].data(), static_cast<int>(tp2[i].size())).top1, ref.top1) << what << " row " << i;
    }
  }
  std::printf("[ gpu ] TP=2 vs TP=1, %s: %zu rows, max rel L2 %.3g, argmax equal on %d rows above the margin\n", what,
              tp1.size(), worst, argmax_checked);
}

TEST(TensorParallelTest, TwoGpusMatchOne) {
  SKIP_WITHOUT_GPUS(2);
  std::unique_ptr<CudaModelRunner> tp1 = MakeRunner(1, true);
  std::unique_ptr<CudaModelRunner> tp2 = MakeRunner(2, true);
  ASSERT_NE(tp1, nullptr);
  ASSERT_NE(tp2, nullptr);
  EXPECT_EQ(tp2->tensor_parallel_size(), 2);
  SparsePolicyConfig dense;
  dense.policy = SparsePolicy::kDense;
  Compare(Script(*tp2, &dense), Script(*tp1, &dense), "dense");
  EXPECT_TRUE(tp2->last_step_used_graph()) << "decode steps should replay graphs with NCCL inside";
}

TEST(TensorParallelTest, SparsePoliciesOnTwoGpusMatchDenseOnOne) {
  SKIP_WITHOUT_GPUS(2);
  std::unique_ptr<CudaModelRunner> tp1 = MakeRunner(1, false);
  ASSERT_NE(tp1, nullptr);
  SparsePolicyConfig dense;
  dense.policy = SparsePolicy::kDense;
  const std::vector<std::vector<float>> reference = Script(*tp1, &dense);
  for (SparsePolicy policy : {SparsePolicy::kOracle, SparsePolicy::kQuest}) {
    SparsePolicyConfig sparse;
    sparse.policy = policy;
    sparse.budget = 4096;  // ≥ every context: the sparse path reads every position
    sparse.sinks = 4;
    sparse.recent = 16;
    std::unique_ptr<CudaModelRunner> runner = MakeRunner(2, false);
    ASSERT_NE(runner, nullptr);
    Compare(Script(*runner, &sparse), reference,
            policy == SparsePolicy::kOracle ? "oracle, full budget" : "quest, full budget");
    EXPECT_GT(runner->TotalSparseCounters().sparse_layer_steps, 0);
  }
}

}  // namespace
}  // namespace asyncspade
