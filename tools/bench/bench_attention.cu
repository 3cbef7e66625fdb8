// Benchmark of the dense paged attention kernels on Qwen3-8B heads (Hq 32, Hkv 8, d 128, pages of
// 16 tokens scattered over the cache by a shuffled block table, random bf16 data):
//   decode  — both per-step variants (tensor cores, CUDA cores): bytes moved (K + V of every
//             sequence, plus q and out), TB/s, floor = bytes / 4.28 TB/s
//   prefill — one causal prompt, tensor-core kernel, TFLOP/s (4 · Hq · d · causal pairs)
// Default shapes are the targets (B·N ≥ 256K); --quick runs small ones. Prints a table; --json FILE
// writes the same numbers. Every CUDA call is checked; a failure prints FAIL and exits 1.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "kernels/paged_attention.h"
#include "tools/bench/model_bench_common.cuh"

namespace asyncspade::bench {
namespace {

constexpr int kNumQHeads = 32;
constexpr int kNumKvHeads = 8;
constexpr int kHeadDim = 128;
constexpr int kPageSize = 16;

struct PagedCache {
  kernels::PagedKvLayout layout;
  int max_blocks_per_seq = 0;
  __nv_bfloat16* k = nullptr;
  __nv_bfloat16* v = nullptr;
  int32_t* block_table = nullptr;
  int32_t* kv_lens = nullptr;

  PagedCache(int num_seqs, int kv_len, uint64_t seed) {
    max_blocks_per_seq = (kv_len + kPageSize - 1) / kPageSize;
    const int num_blocks = num_seqs * max_blocks_per_seq;
    layout = kernels::PagedKvLayout{num_blocks, kNumKvHeads, kPageSize, kHeadDim};
    const size_t elems = static_cast<size_t>(layout.block_stride()) * num_blocks;
    k = DeviceAlloc<__nv_bfloat16>(elems);
    v = DeviceAlloc<__nv_bfloat16>(elems);
    FillRandom(k, elems, seed);
    FillRandom(v, elems, seed + 1);
    std::vector<int32_t> blocks(num_blocks);
    std::iota(blocks.begin(), blocks.end(), 0);
    std::shuffle(blocks.begin(), blocks.end(), std::mt19937(static_cast<uint32_t>(seed)));
    block_table = DeviceAlloc<int32_t>(blocks.size());
    BENCH_CHECK_CUDA(cudaMemcpy(block_table, blocks.data(), blocks.size() * sizeof(int32_t),
                                cudaMemcpyHostToDevice));
    const std::vector<int32_t> lens(num_seqs, kv_len);
    kv_lens = DeviceAlloc<int32_t>(num_seqs);
    BENCH_CHECK_CUDA(
        cudaMemcpy(kv_lens, lens.data(), lens.size() * sizeof(int32_t), cudaMemcpyHostToDevice));
  }
  ~PagedCache() {
    cudaFree(k);
    cudaFree(v);
    cudaFree(block_table);
    cudaFree(kv_lens);
  }
};

// `tensor_cores`: the per-step math variant (the split is what PlanDecodeAttention chose; both
// variants use the same shared memory, hence the same occupancy and split).
BenchRow BenchDecode(Timer& timer, const BenchFlags& flags, int num_seqs, int kv_len,
                     bool tensor_cores) {
  PagedCache cache(num_seqs, kv_len, 1000 + num_seqs);
  const size_t q_elems = size_t{1} * num_seqs * kNumQHeads * kHeadDim;
  __nv_bfloat16* q = DeviceAlloc<__nv_bfloat16>(q_elems);
  __nv_bfloat16* out = DeviceAlloc<__nv_bfloat16>(q_elems);
  FillRandom(q, q_elems, 7);
  kernels::cuda::DecodeAttentionPlan plan;
  BENCH_CHECK_CUDA(kernels::cuda::PlanDecodeAttention(num_seqs, kNumQHeads, kNumKvHeads,
                                                      kHeadDim, kv_len, &plan));
  const bool planned_tensor_cores = plan.use_tensor_cores;
  plan.use_tensor_cores = tensor_cores;
  const size_t workspace_bytes =
      kernels::cuda::DecodeAttentionWorkspaceBytes(plan, num_seqs, kNumQHeads, kHeadDim);
  char* workspace = DeviceAlloc<char>(workspace_bytes);
  const float scale = 1.0f / std::sqrt(static_cast<float>(kHeadDim));
  const double micros = timer.MedianMicros(
      [&](cudaStream_t s) {
        BENCH_CHECK_CUDA(kernels::cuda::PagedDecodeAttention(
            q, kNumQHeads, cache.kv_lens, num_seqs, cache.block_table, cache.max_blocks_per_seq,
            cache.layout, cache.k, cache.v, scale, plan, workspace, workspace_bytes, out, s));
      },
      flags.warmup, flags.reps);
  BenchRow row;
  row.kernel = tensor_cores ? "decode_attention_tensor_core" : "decode_attention_cuda_core";
  const bool planned = tensor_cores == planned_tensor_cores;
  row.shape = "B=" + std::to_string(num_seqs) + " N=" + std::to_string(kv_len) +
              " Hq=32 Hkv=8 d=128 splits=" + std::to_string(plan.num_splits) + (planned ? " *" : "");
  row.micros = micros;
  row.bytes = 2.0 * num_seqs * static_cast<double>(kv_len) * kNumKvHeads * kHeadDim * 2.0 +  // K and V
              2.0 * q_elems * 2.0;                                               // q and out
  row.extra = "\"num_seqs\": " + std::to_string(num_seqs) + ", \"kv_len\": " +
              std::to_string(kv_len) + ", \"num_splits\": " + std::to_string(plan.num_splits) +
              ", \"keys_per_split\": " + std::to_string(plan.keys_per_split) +
              ", \"tensor_cores\": " + (tensor_cores ? "true" : "false") +
              ", \"planned_variant\": " + (planned ? "true" : "false");
  cudaFree(q);
  cudaFree(out);
  cudaFree(workspace);
  return row;
}

BenchRow BenchPrefill(Timer& timer, const BenchFlags& flags, int prompt_len,
                      kernels::cuda::PrefillAttentionAlgo algo, int reps) {
  PagedCache cache(1, prompt_len, 2000 + prompt_len);
  const size_t q_elems = size_t{1} * prompt_len * kNumQHeads * kHeadDim;
  __nv_bfloat16* q = DeviceAlloc<__nv_bfloat16>(q_elems);
  __nv_bfloat16* out = DeviceAlloc<__nv_bfloat16>(q_elems);
  FillRandom(q, q_elems, 9);
  const std::vector<int32_t> indptr = {0, prompt_len};
  int32_t* q_indptr = DeviceAlloc<int32_t>(2);
  BENCH_CHECK_CUDA(
      cudaMemcpy(q_indptr, indptr.data(), 2 * sizeof(int32_t), cudaMemcpyHostToDevice));
  const float scale = 1.0f / std::sqrt(static_cast<float>(kHeadDim));
  const double micros = timer.MedianMicros(
      [&](cudaStream_t s) {
        BENCH_CHECK_CUDA(kernels::cuda::PagedPrefillAttention(
            q, kNumQHeads, q_indptr, cache.kv_lens, 1, prompt_len, prompt_len, cache.block_table,
            cache.max_blocks_per_seq, cache.layout, cache.k, cache.v, scale, out, s, algo));
      },
      std::min(flags.warmup, 2), reps);
  BenchRow row;
  const bool tensor_core = algo == kernels::cuda::PrefillAttentionAlgo::kTensorCore;
  row.kernel = tensor_core ? "prefill_attention_tensor_core" : "prefill_attention_per_token";
  row.shape = "T=" + std::to_string(prompt_len) + " Hq=32 Hkv=8 d=128 causal";
  row.micros = micros;
  const double causal_pairs = static_cast<double>(prompt_len) * (prompt_len + 1) / 2.0;
  row.flops = 4.0 * kNumQHeads * kHeadDim * causal_pairs;  // QKᵀ and PV, 2 flops per MAC
  row.extra = "\"prompt_len\": " + std::to_string(prompt_len);
  cudaFree(q);
  cudaFree(out);
  cudaFree(q_indptr);
  return row;
}

}  // namespace
}  // namespace asyncspade::bench

int main(int argc, char** argv) {
  using namespace asyncspade::bench;
  const BenchFlags flags = ParseFlags(
      argc, argv,
      "usage: asyncspade-bench-attention [--json FILE] [--reps N (default 50)] [--quick]\n");
  int device_count = 0;
  if (cudaGetDeviceCount(&device_count) != cudaSuccess || device_count == 0) {
    std::fprintf(stderr, "FAIL: no CUDA device visible\n");
    return 1;
  }
  Timer timer;
  const double copy_bps = MeasureCopyBytesPerSecond(timer, size_t{1} << 30, 20);
  std::printf("device-to-device copy: %.3f TB/s (reference %.2f TB/s)\n", copy_bps / 1e12,
              kReferenceBandwidthBytesPerSecond / 1e12);
  PrintHeader();
  std::vector<BenchRow> rows;
  const std::vector<std::pair<int, int>> decode_shapes =
      flags.quick ? std::vector<std::pair<int, int>>{{4, 4096}, {1, 16384}}
                  : std::vector<std::pair<int, int>>{
                        {16, 32768}, {1, 262144}, {64, 4096}, {32, 8192}, {128, 2048}};
  for (const auto& [num_seqs, kv_len] : decode_shapes) {
    for (const bool tensor_cores : {true, false}) {
      rows.push_back(BenchDecode(timer, flags, num_seqs, kv_len, tensor_cores));
      PrintRow(rows.back());
    }
  }
  std::printf("(* = the variant PlanDecodeAttention picks for this shape)\n");
  const std::vector<int> prompts =
      flags.quick ? std::vector<int>{2048} : std::vector<int>{4096, 32768};
  for (int prompt_len : prompts) {
    rows.push_back(BenchPrefill(timer, flags, prompt_len,
                                asyncspade::kernels::cuda::PrefillAttentionAlgo::kTensorCore,
                                flags.reps));
    PrintRow(rows.back());
  }
  // The per-token path streams the whole prefix once per query token: one modest length only.
  rows.push_back(BenchPrefill(timer, flags, flags.quick ? 512 : 2048,
                              asyncspade::kernels::cuda::PrefillAttentionAlgo::kPerToken,
                              flags.reps));
  PrintRow(rows.back());
  if (!flags.json_path.empty() &&
      !WriteJson(flags.json_path, "attention", copy_bps / 1e12, rows)) {
    return 1;
  }
  std::printf("PASS: attention benchmark completed\n");
  return 0;
}
