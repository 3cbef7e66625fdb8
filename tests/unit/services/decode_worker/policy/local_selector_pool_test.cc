#include "services/decode_worker/policy/local_selector_pool.h"

#include <gtest/gtest.h>

#include <vector>

#include "tests/unit/kernels/kernel_test_util.h"

namespace asyncspade {
namespace {

LocalSelectorPoolOptions Options(int delay_steps) {
  LocalSelectorPoolOptions options;
  options.shape.num_layers = 2;
  options.shape.num_q_heads = 4;
  options.shape.num_kv_heads = 2;
  options.shape.head_dim = 8;
  options.params.budget = 4;
  options.params.sinks = 1;
  options.params.recent = 2;
  options.delay_steps = delay_steps;
  return options;
}

SelectRequest RequestFor(int64_t sequence, int layer, int32_t position, uint64_t step, uint32_t seed) {
  SelectRequest request;
  request.layer = layer;
  request.step = step;
  request.sequence_ids = {sequence};
  request.positions = {position};
  request.new_keys = kernels::testing::RandomFloats(2 * 8, seed);
  request.predicted_queries = kernels::testing::RandomFloats(4 * 8, seed + 1);
  return request;
}

TEST(LocalSelectorPoolTest, SelectionSubmittedAtStepSIsVisibleAtStepSPlusOne) {
  auto pool = LocalSelectorPool::Create(Options(0));
  ASSERT_TRUE(pool.ok()) << pool.status();
  const auto prompt = kernels::testing::RandomFloats(20 * 2 * 8, 1);
  (*pool)->BeginStep(0);
  (*pool)->AppendKeys(1, 7, 0, 20, prompt.data());
  (*pool)->Submit(RequestFor(7, 1, 20, /*step=*/0, 2));
  EXPECT_EQ((*pool)->Latest(7, 1), nullptr);  // not within the same step
  (*pool)->BeginStep(1);
  auto selection = (*pool)->Latest(7, 1);
  ASSERT_NE(selection, nullptr);
  EXPECT_EQ(selection->for_position, 21);
  EXPECT_EQ(selection->step, 0u);
  EXPECT_EQ(selection->counts, (std::vector<int32_t>{4, 4}));
  for (int32_t p : selection->indices) {
    EXPECT_GE(p, 1);
    EXPECT_LT(p, 20);  // 20 is in the recent window of 21 (R = 2)
  }
  EXPECT_EQ((*pool)->Latest(7, 0), nullptr);
  EXPECT_EQ((*pool)->index().Length(7, 1), 21);

  // Deterministic: the same inputs in a fresh pool give the same selection.
  auto again = LocalSelectorPool::Create(Options(0));
  (*again)->AppendKeys(1, 7, 0, 20, prompt.data());
  (*again)->Submit(RequestFor(7, 1, 20, 0, 2));
  (*again)->BeginStep(1);
  EXPECT_EQ((*again)->Latest(7, 1)->indices, selection->indices);

  (*pool)->Detach(7);
  EXPECT_EQ((*pool)->Latest(7, 1), nullptr);
  EXPECT_FALSE((*pool)->index().HasSequence(7));
  EXPECT_EQ((*pool)->stats().selections_total, 1);
  EXPECT_EQ((*pool)->stats().errors_total, 0);
}

TEST(LocalSelectorPoolTest, DelayStepsHoldSelectionsBack) {
  auto pool = LocalSelectorPool::Create(Options(2));
  ASSERT_TRUE(pool.ok());
  const auto prompt = kernels::testing::RandomFloats(20 * 2 * 8, 3);
  (*pool)->AppendKeys(0, 1, 0, 20, prompt.data());
  for (uint64_t step = 0; step < 6; ++step) {
    (*pool)->BeginStep(step);
    auto latest = (*pool)->Latest(1, 0);
    if (step < 3) {
      EXPECT_EQ(latest, nullptr) << "step " << step;
    } else {
      ASSERT_NE(latest, nullptr) << "step " << step;
      EXPECT_EQ(latest->step, step - 3);  // submitted at s, visible at s + 1 + 2
      EXPECT_EQ(latest->for_position, 21 + static_cast<int32_t>(step - 3));
    }
    (*pool)->Submit(RequestFor(1, 0, 20 + static_cast<int32_t>(step), step, 10 + step));
  }
}

TEST(LocalSelectorPoolTest, PerSequenceBudgetsGapsAndServedLayers) {
  auto pool = LocalSelectorPool::Create(Options(0));
  ASSERT_TRUE(pool.ok());
  const auto prompt = kernels::testing::RandomFloats(30 * 2 * 8, 4);
  (*pool)->AppendKeys(0, 1, 0, 30, prompt.data());
  SelectRequest request = RequestFor(1, 0, 30, 0, 5);
  request.budgets = {9};
  (*pool)->Submit(request);
  // A SELECT that would leave a gap is refused (logged and counted), not indexed.
  (*pool)->Submit(RequestFor(1, 0, 40, 0, 6));
  (*pool)->BeginStep(1);
  ASSERT_NE((*pool)->Latest(1, 0), nullptr);
  EXPECT_EQ((*pool)->Latest(1, 0)->budget, 9);
  EXPECT_EQ((*pool)->Latest(1, 0)->counts, (std::vector<int32_t>{9, 9}));
  EXPECT_EQ((*pool)->stats().errors_total, 1);
  EXPECT_TRUE((*pool)->ServesLayer(1));
  (*pool)->SetServesLayer(1, false);
  EXPECT_FALSE((*pool)->ServesLayer(1));
  EXPECT_FALSE((*pool)->ServesLayer(2));

  LocalSelectorPoolOptions bad = Options(-1);
  EXPECT_EQ(LocalSelectorPool::Create(bad).status().code(), absl::StatusCode::kInvalidArgument);
  bad = Options(0);
  bad.params.budget = 0;
  EXPECT_EQ(LocalSelectorPool::Create(bad).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace asyncspade
