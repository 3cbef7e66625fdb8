#include "services/decode_worker/model/cpu_model_runner.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "services/decode_worker/model/dense_attention_stage.h"
#include "tests/unit/services/decode_worker/stories_test_util.h"

namespace asyncspade {
namespace {

int32_t Argmax(const float* row, int vocab) { return static_cast<int32_t>(std::max_element(row, row + vocab) - row); }

// Hands out consecutive blocks from a runner's pool to sequences, in a deliberately scattered
// order, so tests do not depend on the engine's KvCacheManager.
class BlockPool {
 public:
  BlockPool(int num_blocks, int page_size) : page_size_(page_size) {
    for (int i = 0; i < num_blocks; ++i) free_.push_back((i * 7) % num_blocks);  // 7 ⟂ num_blocks
  }
  void Grow(std::vector<int32_t>* table, int tokens) {
    while (static_cast<int>(table->size()) * page_size_ < tokens) {
      table->push_back(free_.back());
      free_.pop_back();
    }
  }

 private:
  int page_size_;
  std::vector<int32_t> free_;
};

std::unique_ptr<CpuModelRunner> MakeRunner(int num_blocks, int page_size,
                                           std::unique_ptr<AttentionStage> attention = nullptr) {
  auto runner = CpuModelRunner::Create(testing::StoriesWeights(), {num_blocks, page_size}, std::move(attention));
  EXPECT_TRUE(runner.ok()) << runner.status();
  return std::move(runner).value();
}

// Greedy generation of several prompts as ONE ragged batch per step: all prompts are prefilled in
// the same forward, then decoded together.
std::vector<std::vector<int32_t>> GreedyBatch(CpuModelRunner* runner, const std::vector<std::vector<int32_t>>& prompts,
                                              int new_tokens, int page_size) {
  const int n = static_cast<int>(prompts.size());
  BlockPool pool(runner->kv_layout().num_blocks, page_size);
  std::vector<std::vector<int32_t>> tables(n), tokens = prompts, generated(n);
  std::vector<int> cached(n, 0);
  for (int step = 0; step < new_tokens; ++step) {
    ForwardBatch batch;
    for (int b = 0; b < n; ++b) {
      pool.Grow(&tables[b], static_cast<int>(tokens[b].size()));
      batch.sequences.push_back({b, absl::MakeConstSpan(tokens[b]).subspan(cached[b]), cached[b], tables[b],
                                 LogitsWanted::kLast});
    }
    ForwardOutput out;
    const absl::Status s = runner->Forward(batch, &out);
    EXPECT_TRUE(s.ok()) << s;
    if (!s.ok()) return {};
    for (int b = 0; b < n; ++b) {
      cached[b] = static_cast<int>(tokens[b].size());
      const int32_t next = Argmax(out.last_row(b), out.vocab_size);
      tokens[b].push_back(next);
      generated[b].push_back(next);
    }
  }
  return generated;
}

TEST(CpuModelRunnerTest, GreedyFromBosReproducesGolden) {
  ASYNCSPADE_REQUIRE_STORIES();
  const testing::StoriesGolden golden = testing::LoadStoriesGolden();
  for (int page_size : {16, 1, 5}) {
    SCOPED_TRACE(::testing::Message() << "page_size " << page_size);
    auto runner = MakeRunner(/*num_blocks=*/80, page_size);
    const auto out = GreedyBatch(runner.get(), {{1}}, 64, page_size);
    ASSERT_EQ(out.size(), 1u);
    EXPECT_EQ(out[0], golden.greedy_from_bos);
  }
}

TEST(CpuModelRunnerTest, TopFiveLogitsAtPositionZeroMatchGolden) {
  ASYNCSPADE_REQUIRE_STORIES();
  const testing::StoriesGolden golden = testing::LoadStoriesGolden();
  auto runner = MakeRunner(4, 16);
  const std::vector<int32_t> bos = {1}, table = {2};
  ForwardBatch batch;
  batch.sequences.push_back({0, bos, 0, table, LogitsWanted::kLast});
  ForwardOutput out;
  ASSERT_TRUE(runner->Forward(batch, &out).ok());
  ASSERT_EQ(out.vocab_size, 512);
  std::vector<int32_t> order(512);
  std::iota(order.begin(), order.end(), 0);
  const float* row = out.last_row(0);
  std::partial_sort(order.begin(), order.begin() + 5, order.end(), [&](int a, int b) { return row[a] > row[b]; });
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(order[i], golden.top5_logits_pos0[i].first) << "rank " << i;
    EXPECT_NEAR(row[golden.top5_logits_pos0[i].first], golden.top5_logits_pos0[i].second, 1e-4) << "rank " << i;
  }
}

TEST(CpuModelRunnerTest, PromptContinuationsMatchGoldenAsOneBatch) {
  ASYNCSPADE_REQUIRE_STORIES();
  const testing::StoriesGolden golden = testing::LoadStoriesGolden();
  std::vector<std::vector<int32_t>> prompts;
  for (const auto& p : golden.prompts) prompts.push_back(p.ids);
  prompts.push_back({1});  // a decode-length prompt mixed with prefills
  auto runner = MakeRunner(64, 16);
  const auto out = GreedyBatch(runner.get(), prompts, 48, 16);
  ASSERT_EQ(out.size(), prompts.size());
  for (size_t p = 0; p < golden.prompts.size(); ++p) EXPECT_EQ(out[p], golden.prompts[p].continuation_ids) << "prompt " << p;
  EXPECT_EQ(out.back(), std::vector<int32_t>(golden.greedy_from_bos.begin(), golden.greedy_from_bos.begin() + 48));
}

TEST(CpuModelRunnerTest, AllPositionLogitsEqualChunkedAndTokenByTokenLogits) {
  ASYNCSPADE_REQUIRE_STORIES();
  const testing::StoriesGolden golden = testing::LoadStoriesGolden();
  std::vector<int32_t> ids = golden.prompts[0].ids;
  ids.insert(ids.end(), golden.prompts[0].continuation_ids.begin(), golden.prompts[0].continuation_ids.end());
  const int n = static_cast<int>(ids.size());  // 61 tokens: several pages
  std::vector<int32_t> table;
  for (int b = 0; b < 4; ++b) table.push_back(3 - b);

  auto full_runner = MakeRunner(4, 16);
  ForwardBatch full;
  full.sequences.push_back({0, ids, 0, table, LogitsWanted::kAll});
  ForwardOutput all;
  ASSERT_TRUE(full_runner->Forward(full, &all).ok());
  ASSERT_EQ(all.num_rows(0), n);

  for (int chunk : {1, 7, 16, 40}) {
    SCOPED_TRACE(::testing::Message() << "chunk " << chunk);
    auto runner = MakeRunner(4, 16);
    float max_diff = 0;
    for (int start = 0; start < n; start += chunk) {
      const int len = std::min(chunk, n - start);
      ForwardBatch batch;
      batch.sequences.push_back({0, absl::MakeConstSpan(ids).subspan(start, len), start, table, LogitsWanted::kAll});
      ForwardOutput out;
      ASSERT_TRUE(runner->Forward(batch, &out).ok());
      ASSERT_EQ(out.num_rows(0), len);
      for (int i = 0; i < len; ++i) {
        for (int v = 0; v < 512; ++v) max_diff = std::max(max_diff, std::abs(out.row(0, i)[v] - all.row(0, start + i)[v]));
      }
    }
    EXPECT_LT(max_diff, 1e-4);
  }
}

TEST(CpuModelRunnerTest, LogitRowsFollowEachSequencesRequest) {
  ASYNCSPADE_REQUIRE_STORIES();
  auto runner = MakeRunner(8, 16);
  const std::vector<int32_t> a = {1, 403, 407}, b = {1, 291}, c = {1, 301, 425, 411};
  const std::vector<int32_t> ta = {0}, tb = {1}, tc = {2};
  ForwardBatch batch;
  batch.sequences.push_back({10, a, 0, ta, LogitsWanted::kAll});
  batch.sequences.push_back({11, b, 0, tb, LogitsWanted::kNone});
  batch.sequences.push_back({12, c, 0, tc, LogitsWanted::kLast});
  ForwardOutput out;
  ASSERT_TRUE(runner->Forward(batch, &out).ok());
  EXPECT_EQ(out.row_offsets, (std::vector<int32_t>{0, 3, 3, 4}));
  EXPECT_EQ(out.logits.size(), 4u * 512);
  // kAll row 0 of `a` is the BOS distribution: 403 ("Once") is its argmax.
  EXPECT_EQ(Argmax(out.row(0, 0), 512), 403);
}

TEST(CpuModelRunnerTest, RejectsInvalidBatchesWithClearErrors) {
  ASYNCSPADE_REQUIRE_STORIES();
  auto runner = MakeRunner(4, 16);
  const std::vector<int32_t> ok_tokens = {1, 2}, bad_tokens = {1, 512}, table = {0}, bad_table = {4}, none = {};
  const std::vector<int32_t> long_tokens(17, 5);
  struct Case {
    ForwardSequence seq;
    std::string message;
  };
  for (const Case& c : {Case{{0, bad_tokens, 0, table}, "token id 512 outside the vocabulary"},
                        Case{{0, long_tokens, 0, table}, "needs 17 cache slots"},
                        Case{{0, ok_tokens, 0, bad_table}, "KV block 4 outside [0, 4)"},
                        Case{{0, none, 0, table}, "no new tokens"}}) {
    ForwardBatch batch;
    batch.sequences.push_back(c.seq);
    ForwardOutput out;
    const absl::Status s = runner->Forward(batch, &out);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.message;
    EXPECT_NE(s.message().find(c.message), std::string::npos) << s;
  }
}

// Records what the runner shows a policy at the per-layer hook.
class RecordingAttention : public DenseAttentionStage {
 public:
  void OnQkv(int layer, const AttentionBatchLayout& layout, const QkvView& qkv) override {
    layers.push_back(layer);
    positions = layout.positions;
    kv_lens = layout.kv_lens;
    num_q_heads = qkv.num_q_heads;
    first_q = qkv.q[0];
  }
  std::vector<int> layers;
  std::vector<int32_t> positions, kv_lens;
  int num_q_heads = 0;
  float first_q = 0;
};

TEST(CpuModelRunnerTest, HookSeesEveryLayerWithTheBatchLayout) {
  ASYNCSPADE_REQUIRE_STORIES();
  auto recorder = std::make_unique<RecordingAttention>();
  RecordingAttention* rec = recorder.get();
  auto runner = MakeRunner(4, 16, std::move(recorder));
  const std::vector<int32_t> prompt = {1, 403, 407}, decode = {261}, ta = {0}, tb = {1};
  ForwardBatch batch;
  batch.sequences.push_back({0, prompt, 0, ta, LogitsWanted::kLast});
  ForwardOutput out;
  ASSERT_TRUE(runner->Forward(batch, &out).ok());
  batch.sequences.clear();
  batch.sequences.push_back({0, decode, 3, ta, LogitsWanted::kLast});
  batch.sequences.push_back({1, prompt, 0, tb, LogitsWanted::kLast});
  ASSERT_TRUE(runner->Forward(batch, &out).ok());
  EXPECT_EQ(rec->layers, (std::vector<int>{0, 1, 2, 3, 4, 0, 1, 2, 3, 4}));
  EXPECT_EQ(rec->positions, (std::vector<int32_t>{3, 0, 1, 2}));
  EXPECT_EQ(rec->kv_lens, (std::vector<int32_t>{4, 3}));
  EXPECT_EQ(rec->num_q_heads, 8);
  EXPECT_NE(rec->first_q, 0.0f);
}

}  // namespace
}  // namespace asyncspade
