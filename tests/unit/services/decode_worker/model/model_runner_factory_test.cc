// The model runner factory's device parsing and its CPU branch (stories260K); the GPU branch is
// covered by tests/gpu/model/cuda_model_runner_test.cc.
#include "services/decode_worker/model/model_runner_factory.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "services/decode_worker/model/cpu_model_runner.h"
#include "tests/unit/services/decode_worker/stories_test_util.h"

namespace asyncspade {
namespace {

TEST(ModelRunnerFactoryTest, ParsesDevices) {
  auto cpu = ParseRunnerDevices({"cpu"});
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  EXPECT_TRUE(cpu->empty());
  auto gpus = ParseRunnerDevices({"0", "3"});
  ASSERT_TRUE(gpus.ok()) << gpus.status();
  EXPECT_EQ(*gpus, (std::vector<int>{0, 3}));
  for (const std::vector<std::string>& bad :
       std::vector<std::vector<std::string>>{{}, {"cpu", "0"}, {"gpu0"}, {"-1"}, {"1", "1"}}) {
    auto parsed = ParseRunnerDevices(bad);
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument) << bad.size();
  }
}

DeploymentConfig StoriesDeployment() {
  DeploymentConfig d;
  d.source = "test.yaml";
  d.model.path = testing::StoriesDir();
  d.decode_workers.kv_cache.blocks = 32;
  d.decode_workers.kv_cache.page_size = 16;
  return d;
}

TEST(ModelRunnerFactoryTest, CpuRunnerServesStories) {
  ASYNCSPADE_REQUIRE_STORIES();
  auto runner = CreateModelRunner(StoriesDeployment(), {"cpu"});
  ASSERT_TRUE(runner.ok()) << runner.status();
  ASSERT_NE(dynamic_cast<CpuModelRunner*>(runner->get()), nullptr);
  EXPECT_EQ((*runner)->kv_layout().num_blocks, 32);
  // BOS → the golden first token, and the keys it wrote read back through ReadCachedKeys.
  const std::vector<int32_t> bos = {1};
  const std::vector<int32_t> table = {5};
  ForwardBatch batch;
  ForwardSequence fs;
  fs.tokens = bos;
  fs.block_table = table;
  batch.sequences.push_back(fs);
  ForwardOutput output;
  ASSERT_TRUE((*runner)->Forward(batch, &output).ok());
  const float* row = output.last_row(0);
  int best = 0;
  for (int i = 1; i < output.vocab_size; ++i) {
    if (row[i] > row[best]) best = i;
  }
  EXPECT_EQ(best, testing::LoadStoriesGolden().greedy_from_bos[0]);
  const ModelConfig& c = (*runner)->config();
  std::vector<float> keys(c.num_kv_heads * c.head_dim, 0.0f);
  ASSERT_TRUE(ReadCachedKeys(**runner, table, 1, 0, 1, keys.data()).ok());
  double norm = 0.0;
  for (float k : keys) norm += std::abs(k);
  EXPECT_GT(norm, 0.0);
  EXPECT_EQ(ReadCachedKeys(**runner, table, 1, 0, 17, keys.data()).code(), absl::StatusCode::kInvalidArgument);
}

TEST(ModelRunnerFactoryTest, CpuBranchErrorsNameTheKey) {
  DeploymentConfig random = StoriesDeployment();
  random.model.random_weights = "qwen3-8b";
  auto r = CreateModelRunner(random, {"cpu"});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("model.random_weights"), std::string::npos) << r.status();

  DeploymentConfig fraction = StoriesDeployment();
  fraction.decode_workers.kv_cache.blocks.reset();
  fraction.decode_workers.kv_cache.memory_fraction = 0.5;
  r = CreateModelRunner(fraction, {"cpu"});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("kv_cache.blocks"), std::string::npos) << r.status();
}

TEST(ModelRunnerFactoryTest, GpuDevicesWithoutCudaAreRefused) {
  if (ModelRunnerFactoryHasCuda()) GTEST_SKIP() << "built with CUDA: the GPU branch is tested by engine_gpu_test";
  auto r = CreateModelRunner(StoriesDeployment(), {"0"});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_NE(r.status().message().find("without CUDA"), std::string::npos) << r.status();
}

}  // namespace
}  // namespace asyncspade
