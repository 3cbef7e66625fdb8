// The CUDA paged attention kernels against cpu::PagedAttention on the same bf16-rounded inputs:
// decode (split-KV with planned and forced splits, very long contexts, GQA 1/4/8, head_dim 64/128,
// ragged and page-crossing lengths, CUDA-graph replay) and prefill (tensor-core and per-token
// algorithms, ragged causal batches, empty sequences, odd page sizes, groups that do not divide
// the 64-row tile).
//
// Cache slots that no sequence owns (unused blocks, the tail of each last page) hold NaN, and
// block-table entries past a sequence's pages hold an out-of-range block id: a kernel that reads
// them produces NaN (which never passes) or an illegal-address error.
#include "kernels/paged_attention.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <ostream>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "tests/gpu/model_kernels_gpu_util.h"

namespace asyncspade::kernels {
namespace {

using testing::AsBf16;
using testing::DeviceBuffer;

constexpr uint16_t kBf16NaN = 0x7fc0;
constexpr int32_t kPoisonBlock = 0x3fffffff;

struct PagedBatch {
  PagedKvLayout layout;
  int num_q_heads = 0;
  int max_blocks_per_seq = 0;
  int total_q = 0;
  int max_q_len = 0;
  std::vector<int32_t> q_indptr, kv_lens, block_table;
  std::vector<uint16_t> q, k_cache, v_cache;
  std::vector<float> q_values, k_values, v_values;  // the bf16 values as floats (NaN where unused)
};

PagedBatch MakeBatch(int num_q_heads, int num_kv_heads, int head_dim, int page_size,
                     const std::vector<int32_t>& q_lens, const std::vector<int32_t>& kv_lens,
                     uint32_t seed) {
  PagedBatch batch;
  batch.num_q_heads = num_q_heads;
  batch.kv_lens = kv_lens;
  batch.q_indptr.push_back(0);
  for (int32_t len : q_lens) {
    batch.q_indptr.push_back(batch.q_indptr.back() + len);
    batch.max_q_len = std::max(batch.max_q_len, len);
  }
  batch.total_q = batch.q_indptr.back();
  int total_pages = 0;
  for (int32_t len : kv_lens) {
    const int pages = (len + page_size - 1) / page_size;
    batch.max_blocks_per_seq = std::max(batch.max_blocks_per_seq, pages);
    total_pages += pages;
  }
  batch.max_blocks_per_seq += 2;  // poisoned entries past every sequence's pages
  const int num_blocks = total_pages + 3;
  batch.layout = PagedKvLayout{num_blocks, num_kv_heads, page_size, head_dim};
  std::mt19937 rng(seed);

  std::vector<int32_t> pool(num_blocks);
  std::iota(pool.begin(), pool.end(), 0);
  std::shuffle(pool.begin(), pool.end(), rng);
  batch.block_table.assign(kv_lens.size() * batch.max_blocks_per_seq, kPoisonBlock);
  const size_t cache_elems = static_cast<size_t>(batch.layout.block_stride()) * num_blocks;
  std::vector<float> unused;
  batch.k_cache = testing::RandomBf16(cache_elems, rng, 1.0f, &unused);
  batch.v_cache = testing::RandomBf16(cache_elems, rng, 1.0f, &unused);
  // (block, offset in page) slots that hold a token of some sequence; every other slot is NaN.
  std::vector<char> owned(static_cast<size_t>(num_blocks) * page_size, 0);
  size_t next = 0;
  for (size_t b = 0; b < kv_lens.size(); ++b) {
    for (int page = 0; page * page_size < kv_lens[b]; ++page) {
      const int block = pool[next++];
      batch.block_table[b * batch.max_blocks_per_seq + page] = block;
      for (int j = page * page_size; j < std::min(kv_lens[b], (page + 1) * page_size); ++j) {
        owned[static_cast<size_t>(block) * page_size + j % page_size] = 1;
      }
    }
  }
  for (int block = 0; block < num_blocks; ++block) {
    for (int h = 0; h < num_kv_heads; ++h) {
      for (int offset = 0; offset < page_size; ++offset) {
        if (owned[static_cast<size_t>(block) * page_size + offset]) continue;
        const int64_t at = batch.layout.Offset(block, h, offset);
        std::fill_n(batch.k_cache.begin() + at, head_dim, kBf16NaN);
        std::fill_n(batch.v_cache.begin() + at, head_dim, kBf16NaN);
      }
    }
  }
  batch.k_values = testing::Bf16ToFloats(batch.k_cache);
  batch.v_values = testing::Bf16ToFloats(batch.v_cache);
  batch.q = testing::RandomBf16(size_t{1} * batch.total_q * num_q_heads * head_dim, rng, 1.0f,
                                &batch.q_values);
  return batch;
}

std::vector<float> Reference(const PagedBatch& batch, float scale) {
  std::vector<float> out(batch.q_values.size());
  cpu::PagedAttention(batch.q_values.data(), batch.num_q_heads, batch.q_indptr.data(),
                      batch.kv_lens.data(), static_cast<int>(batch.kv_lens.size()),
                      batch.block_table.data(), batch.max_blocks_per_seq, batch.layout,
                      batch.k_values.data(), batch.v_values.data(), scale, out.data());
  return out;
}

struct DeviceBatch {
  DeviceBuffer<uint16_t> q, k_cache, v_cache, out;
  DeviceBuffer<int32_t> q_indptr, kv_lens, block_table;

  explicit DeviceBatch(const PagedBatch& batch) {
    q.Upload(batch.q);
    k_cache.Upload(batch.k_cache);
    v_cache.Upload(batch.v_cache);
    out.Allocate(batch.q.size());
    q_indptr.Upload(batch.q_indptr);
    kv_lens.Upload(batch.kv_lens);
    block_table.Upload(batch.block_table);
  }
};

// ---------------------------------------------------------------------------------------------
// Decode
// ---------------------------------------------------------------------------------------------

struct DecodeCase {
  std::string name;
  int num_q_heads;
  int num_kv_heads;
  int head_dim;
  int page_size;
  std::vector<int32_t> kv_lens;
  // 0: PlanDecodeAttention; otherwise this forced split (keys_per_split = forced_keys_per_split).
  int forced_splits = 0;
  int forced_keys_per_split = 64;
};

void PrintTo(const DecodeCase& c, std::ostream* os) { *os << c.name; }

// Each case runs on both variants (CUDA-core and tensor-core per-step math), whatever the plan picks.
using DecodeParam = std::tuple<DecodeCase, bool>;

class DecodeAttentionGpuTest : public ::testing::TestWithParam<DecodeParam> {};

TEST_P(DecodeAttentionGpuTest, MatchesTheCpuReference) {
  SKIP_WITHOUT_CUDA_DEVICE();
  const auto& [c, tensor_cores] = GetParam();
  const int num_seqs = static_cast<int>(c.kv_lens.size());
  const PagedBatch batch = MakeBatch(c.num_q_heads, c.num_kv_heads, c.head_dim, c.page_size,
                                     std::vector<int32_t>(num_seqs, 1), c.kv_lens, 41);
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  const std::vector<float> expected = Reference(batch, scale);

  cuda::DecodeAttentionPlan plan;
  if (c.forced_splits > 0) {
    plan.num_splits = c.forced_splits;
    plan.keys_per_split = c.forced_keys_per_split;
  } else {
    const int max_kv_len = *std::max_element(c.kv_lens.begin(), c.kv_lens.end());
    ASSERT_CUDA_OK(cuda::PlanDecodeAttention(num_seqs, c.num_q_heads, c.num_kv_heads,
                                             c.head_dim, max_kv_len, &plan));
    EXPECT_GE(plan.num_splits, 1);
    EXPECT_EQ(plan.keys_per_split % 64, 0);
    EXPECT_GE(int64_t{plan.num_splits} * plan.keys_per_split, max_kv_len);
    EXPECT_EQ(plan.use_tensor_cores, c.num_q_heads / c.num_kv_heads >= 4);
  }
  plan.use_tensor_cores = tensor_cores;
  const size_t workspace_bytes =
      cuda::DecodeAttentionWorkspaceBytes(plan, num_seqs, c.num_q_heads, c.head_dim);
  DeviceBuffer<char> workspace(workspace_bytes);
  DeviceBatch d(batch);
  ASSERT_CUDA_OK(cudaMemset(d.out.get(), 0xff, batch.q.size() * 2));  // NaN until written
  ASSERT_CUDA_OK(cuda::PagedDecodeAttention(
      AsBf16(d.q.get()), c.num_q_heads, d.kv_lens.get(), num_seqs, d.block_table.get(),
      batch.max_blocks_per_seq, batch.layout, AsBf16(d.k_cache.get()), AsBf16(d.v_cache.get()),
      scale, plan, workspace.get(), workspace_bytes, AsBf16(d.out.get()), nullptr));
  ASSERT_CUDA_OK(cudaDeviceSynchronize());
  EXPECT_CLOSE_BF16(testing::Bf16ToFloats(d.out.Download()), expected, 1e-2,
                    c.name << (tensor_cores ? " tensor cores" : " CUDA cores") << " (splits "
                           << plan.num_splits << " × " << plan.keys_per_split << " keys)");
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, DecodeAttentionGpuTest,
    ::testing::Combine(::testing::Values(
        // Qwen3-8B heads; lengths around page and 64-key step boundaries.
        DecodeCase{"qwen3_8b_ragged", 32, 8, 128, 16, {1, 15, 16, 17, 63, 64, 65, 1000}},
        DecodeCase{"mha_d64_page32", 4, 4, 64, 32, {33, 64, 65, 300}},
        DecodeCase{"gqa8_d128", 16, 2, 128, 16, {7, 129, 2000}},
        DecodeCase{"gqa8_d64", 16, 2, 64, 16, {5, 777}},
        DecodeCase{"gqa4_d64", 8, 2, 64, 16, {1, 250}},
        DecodeCase{"gqa3_d128", 6, 2, 128, 16, {100, 31}},
        // Split-KV over long contexts (the plan splits: few sequences, many keys).
        DecodeCase{"long_split_kv", 8, 2, 128, 16, {40000, 23457}},
        DecodeCase{"long_single_sequence", 32, 8, 128, 16, {65537}},
        // Forced splits: the last split absorbs keys beyond splits × keys_per_split; short
        // sequences leave empty splits that the combine must ignore.
        DecodeCase{"forced_undersized_plan", 32, 8, 128, 16, {1000, 3, 64}, 5, 64},
        DecodeCase{"forced_many_empty_splits", 8, 2, 64, 16, {70, 1, 2500}, 40, 64},
        DecodeCase{"forced_single_split", 8, 2, 128, 16, {3000, 17}, 1, 0}),
                       ::testing::Bool()),
    [](const ::testing::TestParamInfo<DecodeParam>& info) {
      return std::get<0>(info.param).name +
             (std::get<1>(info.param) ? "_tensor_core" : "_cuda_core");
    });

TEST(DecodeAttentionGpuEdgeTest, EmptySequenceGivesZeros) {
  SKIP_WITHOUT_CUDA_DEVICE();
  // Sequence 0 has no key at all (its block-table row is all poison): the kernel must neither
  // read the table nor the cache for it. The CPU reference gives zeros for it too.
  const PagedBatch batch = MakeBatch(8, 2, 128, 16, {1, 1}, {0, 20}, 43);
  const std::vector<float> expected = Reference(batch, 0.1f);
  for (const bool tensor_cores : {false, true}) {
    SCOPED_TRACE(tensor_cores ? "tensor cores" : "CUDA cores");
    DeviceBatch d(batch);
    ASSERT_CUDA_OK(cudaMemset(d.out.get(), 0xff, batch.q.size() * 2));  // NaN until written
    const cuda::DecodeAttentionPlan plan{3, 64, tensor_cores};
    const size_t workspace_bytes = cuda::DecodeAttentionWorkspaceBytes(plan, 2, 8, 128);
    DeviceBuffer<char> workspace(workspace_bytes);
    ASSERT_CUDA_OK(cuda::PagedDecodeAttention(
        AsBf16(d.q.get()), 8, d.kv_lens.get(), 2, d.block_table.get(), batch.max_blocks_per_seq,
        batch.layout, AsBf16(d.k_cache.get()), AsBf16(d.v_cache.get()), 0.1f, plan,
        workspace.get(), workspace_bytes, AsBf16(d.out.get()), nullptr));
    ASSERT_CUDA_OK(cudaDeviceSynchronize());
    const std::vector<float> out = testing::Bf16ToFloats(d.out.Download());
    for (int i = 0; i < 8 * 128; ++i) ASSERT_EQ(out[i], 0.0f) << "element " << i;
    // The second sequence is still right.
    EXPECT_CLOSE_BF16(std::vector<float>(out.begin() + 8 * 128, out.end()),
                      std::vector<float>(expected.begin() + 8 * 128, expected.end()), 1e-2,
                      "second sequence");
  }
}

TEST(DecodeAttentionGpuEdgeTest, RejectsUnsupportedShapesAndSmallWorkspaces) {
  SKIP_WITHOUT_CUDA_DEVICE();
  const PagedBatch batch = MakeBatch(8, 2, 128, 16, {1}, {100}, 44);
  DeviceBatch d(batch);
  const cuda::DecodeAttentionPlan plan{2, 64};
  auto run = [&](const PagedKvLayout& layout, int num_q_heads, size_t workspace_bytes) {
    DeviceBuffer<char> workspace(std::max<size_t>(workspace_bytes, 1));
    return cuda::PagedDecodeAttention(
        AsBf16(d.q.get()), num_q_heads, d.kv_lens.get(), 1, d.block_table.get(),
        batch.max_blocks_per_seq, layout, AsBf16(d.k_cache.get()), AsBf16(d.v_cache.get()),
        0.1f, plan, workspace.get(), workspace_bytes, AsBf16(d.out.get()), nullptr);
  };
  const size_t needed = cuda::DecodeAttentionWorkspaceBytes(plan, 1, 8, 128);
  PagedKvLayout odd_page = batch.layout;
  odd_page.page_size = 8;
  EXPECT_EQ(run(odd_page, 8, needed), cudaErrorInvalidValue);
  PagedKvLayout odd_dim = batch.layout;
  odd_dim.head_dim = 96;
  EXPECT_EQ(run(odd_dim, 8, needed), cudaErrorInvalidValue);
  EXPECT_EQ(run(batch.layout, 7, needed), cudaErrorInvalidValue);   // 7 % 2 != 0
  EXPECT_EQ(run(batch.layout, 32, needed), cudaErrorInvalidValue);  // group 16 > 8
  EXPECT_EQ(run(batch.layout, 8, needed - 4), cudaErrorInvalidValue);
  EXPECT_EQ(run(batch.layout, 8, needed), cudaSuccess);
  ASSERT_CUDA_OK(cudaDeviceSynchronize());
}

TEST(DecodeAttentionGpuEdgeTest, ReplaysFromACapturedCudaGraph) {
  SKIP_WITHOUT_CUDA_DEVICE();
  const PagedBatch batch = MakeBatch(32, 8, 128, 16, {1, 1, 1}, {5000, 77, 3001}, 45);
  const float scale = 0.088f;
  const std::vector<float> expected = Reference(batch, scale);
  cuda::DecodeAttentionPlan plan;
  ASSERT_CUDA_OK(cuda::PlanDecodeAttention(3, 32, 8, 128, 5000, &plan));
  const size_t workspace_bytes = cuda::DecodeAttentionWorkspaceBytes(plan, 3, 32, 128);
  DeviceBuffer<char> workspace(workspace_bytes);
  DeviceBatch d(batch);
  ASSERT_CUDA_OK(cudaMemset(d.out.get(), 0xff, batch.q.size() * 2));  // NaN until written
  cudaStream_t stream = nullptr;
  ASSERT_CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  cudaGraph_t graph = nullptr;
  ASSERT_CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  const cudaError_t launch = cuda::PagedDecodeAttention(
      AsBf16(d.q.get()), 32, d.kv_lens.get(), 3, d.block_table.get(), batch.max_blocks_per_seq,
      batch.layout, AsBf16(d.k_cache.get()), AsBf16(d.v_cache.get()), scale, plan,
      workspace.get(), workspace_bytes, AsBf16(d.out.get()), stream);
  ASSERT_CUDA_OK(cudaStreamEndCapture(stream, &graph));
  ASSERT_CUDA_OK(launch);
  cudaGraphExec_t exec = nullptr;
  ASSERT_CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
  for (int replay = 0; replay < 2; ++replay) ASSERT_CUDA_OK(cudaGraphLaunch(exec, stream));
  ASSERT_CUDA_OK(cudaStreamSynchronize(stream));
  EXPECT_CLOSE_BF16(testing::Bf16ToFloats(d.out.Download()), expected, 1e-2, "graph replay");
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
}

// ---------------------------------------------------------------------------------------------
// Prefill
// ---------------------------------------------------------------------------------------------

struct PrefillCase {
  std::string name;
  int num_q_heads;
  int num_kv_heads;
  int head_dim;
  int page_size;
  std::vector<int32_t> q_lens;
  std::vector<int32_t> prefix_lens;  // keys already cached before the new tokens
};

void PrintTo(const PrefillCase& c, std::ostream* os) { *os << c.name; }

using PrefillParam = std::tuple<PrefillCase, cuda::PrefillAttentionAlgo>;

class PrefillAttentionGpuTest : public ::testing::TestWithParam<PrefillParam> {};

TEST_P(PrefillAttentionGpuTest, MatchesTheCpuReference) {
  SKIP_WITHOUT_CUDA_DEVICE();
  const auto& [c, algo] = GetParam();
  if (algo == cuda::PrefillAttentionAlgo::kPerToken && c.page_size % 16 != 0) {
    GTEST_SKIP() << "the per-token algorithm needs page_size % 16 == 0";
  }
  std::vector<int32_t> kv_lens;
  for (size_t b = 0; b < c.q_lens.size(); ++b) kv_lens.push_back(c.q_lens[b] + c.prefix_lens[b]);
  const PagedBatch batch =
      MakeBatch(c.num_q_heads, c.num_kv_heads, c.head_dim, c.page_size, c.q_lens, kv_lens, 51);
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  const std::vector<float> expected = Reference(batch, scale);
  DeviceBatch d(batch);
  ASSERT_CUDA_OK(cudaMemset(d.out.get(), 0xff, batch.q.size() * 2));  // NaN until written
  ASSERT_CUDA_OK(cuda::PagedPrefillAttention(
      AsBf16(d.q.get()), c.num_q_heads, d.q_indptr.get(), d.kv_lens.get(),
      static_cast<int>(kv_lens.size()), batch.total_q, batch.max_q_len, d.block_table.get(),
      batch.max_blocks_per_seq, batch.layout, AsBf16(d.k_cache.get()), AsBf16(d.v_cache.get()),
      scale, AsBf16(d.out.get()), nullptr, algo));
  ASSERT_CUDA_OK(cudaDeviceSynchronize());
  EXPECT_CLOSE_BF16(testing::Bf16ToFloats(d.out.Download()), expected, 1e-2, c.name);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, PrefillAttentionGpuTest,
    ::testing::Combine(
        ::testing::Values(
            PrefillCase{"gqa4_ragged", 8, 2, 128, 16, {1, 17, 64, 130}, {0, 5, 100, 33}},
            PrefillCase{"mha_d64_page7", 4, 4, 64, 7, {50, 3}, {10, 0}},
            PrefillCase{"gqa8_with_empty_sequence", 16, 2, 128, 16, {200, 1, 0}, {300, 77, 5}},
            PrefillCase{"gqa3_d64_rows_straddle_tiles", 6, 2, 64, 16, {40, 23}, {9, 64}},
            PrefillCase{"qwen3_8b_heads", 32, 8, 128, 16, {96}, {31}},
            PrefillCase{"long_chunk", 8, 2, 128, 32, {600}, {700}},
            PrefillCase{"decode_rows_mixed_in", 8, 2, 64, 16, {1, 1, 45, 1}, {99, 0, 0, 1500}}),
        ::testing::Values(cuda::PrefillAttentionAlgo::kTensorCore,
                          cuda::PrefillAttentionAlgo::kPerToken)),
    [](const ::testing::TestParamInfo<PrefillParam>& info) {
      return std::get<0>(info.param).name +
             (std::get<1>(info.param) == cuda::PrefillAttentionAlgo::kTensorCore ? "_tensor_core"
                                                                               : "_per_token");
    });

}  // namespace
}  // namespace asyncspade::kernels
