// Benchmark of the model-forward kernels other than attention, at Qwen3-8B shapes (hidden 4096,
// intermediate 12288, Hq 32, Hkv 8, d 128, vocab 151936):
//   - cuBLASLt linear layers at decode batch sizes (m = 1, 16, 64): weight-streaming bandwidth
//     (bytes = weights + activations in and out) against the 4.28 TB/s floor, and a prefill GEMM in
//     TFLOP/s;
//   - the elementwise / row kernels (embedding, fused add-RMSNorm, q/k norm + RoPE, SiluAndMul,
//     KV append) at a decode batch and a prefill chunk, as bandwidth;
//   - sampling at batch 64 over the full vocabulary (greedy and Qwen3's T 0.6 / top-k 20 /
//     top-p 0.95) as time.
// Prints a table; --json FILE writes it; --quick runs fewer shapes.
#include <cmath>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "kernels/activation.h"
#include "kernels/embedding.h"
#include "kernels/gemm.h"
#include "kernels/paged_kv_append.h"
#include "kernels/rms_norm.h"
#include "kernels/rope.h"
#include "kernels/sampling.h"
#include "tools/bench/model_bench_common.cuh"

namespace asyncspade::bench {
namespace {

constexpr int kHidden = 4096;
constexpr int kInter = 12288;
constexpr int kNumQHeads = 32;
constexpr int kNumKvHeads = 8;
constexpr int kHeadDim = 128;
constexpr int kVocab = 151936;

struct LinearShape {
  const char* name;
  int n;
  int k;
};

constexpr LinearShape kLinears[] = {
    {"qkv_proj", (kNumQHeads + 2 * kNumKvHeads) * kHeadDim, kHidden},
    {"o_proj", kHidden, kNumQHeads * kHeadDim},
    {"gate_up_proj", 2 * kInter, kHidden},
    {"down_proj", kHidden, kInter},
    {"lm_head", kVocab, kHidden},
};

void BenchGemms(Timer& timer, const BenchFlags& flags, std::vector<BenchRow>* rows) {
  auto created = kernels::cuda::CublasLtGemm::Create();
  if (!created.ok()) {
    std::fprintf(stderr, "FAIL: %s\n", created.status().ToString().c_str());
    std::exit(1);
  }
  kernels::cuda::CublasLtGemm& gemm = **created;
  const std::vector<int> batch_sizes =
      flags.quick ? std::vector<int>{1, 64} : std::vector<int>{1, 16, 64};
  for (const LinearShape& shape : kLinears) {
    const size_t w_elems = size_t{1} * shape.n * shape.k;
    __nv_bfloat16* w = DeviceAlloc<__nv_bfloat16>(w_elems);
    FillRandom(w, w_elems, 11, 0.02f);
    for (int m : batch_sizes) {
      __nv_bfloat16* x = DeviceAlloc<__nv_bfloat16>(size_t{1} * m * shape.k);
      __nv_bfloat16* y = DeviceAlloc<__nv_bfloat16>(size_t{1} * m * shape.n);
      FillRandom(x, size_t{1} * m * shape.k, 12);
      const absl::Status planned = gemm.Plan(m, shape.n, shape.k, false);
      if (!planned.ok()) {
        std::fprintf(stderr, "FAIL: %s\n", planned.ToString().c_str());
        std::exit(1);
      }
      const double micros = timer.MedianMicros(
          [&](cudaStream_t s) {
            const absl::Status run = gemm.Run(x, w, nullptr, m, shape.n, shape.k, y, s);
            if (!run.ok()) {
              std::fprintf(stderr, "FAIL: %s\n", run.ToString().c_str());
              std::exit(1);
            }
          },
          flags.warmup, flags.reps);
      BenchRow row;
      row.kernel = std::string("gemm_") + shape.name;
      row.shape = "m=" + std::to_string(m) + " n=" + std::to_string(shape.n) +
                  " k=" + std::to_string(shape.k);
      row.micros = micros;
      row.bytes = 2.0 * (double(w_elems) + double(m) * shape.k + double(m) * shape.n);
      row.flops = 2.0 * m * double(shape.n) * shape.k;
      rows->push_back(row);
      PrintRow(row);
      cudaFree(x);
      cudaFree(y);
    }
    cudaFree(w);
  }
  // A prefill chunk: compute-bound, reported in TFLOP/s.
  {
    const int m = 4096;
    const LinearShape& shape = kLinears[2];
    __nv_bfloat16* w = DeviceAlloc<__nv_bfloat16>(size_t{1} * shape.n * shape.k);
    __nv_bfloat16* x = DeviceAlloc<__nv_bfloat16>(size_t{1} * m * shape.k);
    __nv_bfloat16* y = DeviceAlloc<__nv_bfloat16>(size_t{1} * m * shape.n);
    FillRandom(w, size_t{1} * shape.n * shape.k, 13, 0.02f);
    FillRandom(x, size_t{1} * m * shape.k, 14);
    if (!gemm.Plan(m, shape.n, shape.k, false).ok()) std::exit(1);
    const double micros = timer.MedianMicros(
        [&](cudaStream_t s) {
          if (!gemm.Run(x, w, nullptr, m, shape.n, shape.k, y, s).ok()) std::exit(1);
        },
        flags.warmup, flags.reps);
    BenchRow row;
    row.kernel = "gemm_gate_up_proj_prefill";
    row.shape = "m=4096 n=24576 k=4096";
    row.micros = micros;
    row.flops = 2.0 * m * double(shape.n) * shape.k;
    rows->push_back(row);
    PrintRow(row);
    cudaFree(w);
    cudaFree(x);
    cudaFree(y);
  }
}

// Elementwise and row kernels for `tokens` tokens (a decode batch or a prefill chunk).
void BenchRowKernels(Timer& timer, const BenchFlags& flags, int tokens,
                     std::vector<BenchRow>* rows) {
  const std::string suffix = " tokens=" + std::to_string(tokens);
  auto add = [&](const std::string& kernel, const std::string& shape, double bytes, double us) {
    BenchRow row;
    row.kernel = kernel;
    row.shape = shape + suffix;
    row.micros = us;
    row.bytes = bytes;
    rows->push_back(row);
    PrintRow(row);
  };
  const size_t hidden_elems = size_t{1} * tokens * kHidden;

  // Embedding.
  {
    __nv_bfloat16* table = DeviceAlloc<__nv_bfloat16>(size_t{1} * kVocab * kHidden);
    __nv_bfloat16* out = DeviceAlloc<__nv_bfloat16>(hidden_elems);
    FillRandom(table, size_t{1} * kVocab * kHidden, 21);
    std::vector<int32_t> ids(tokens);
    std::mt19937 rng(5);
    for (int32_t& id : ids) id = static_cast<int32_t>(rng() % kVocab);
    int32_t* d_ids = DeviceAlloc<int32_t>(tokens);
    BENCH_CHECK_CUDA(
        cudaMemcpy(d_ids, ids.data(), tokens * sizeof(int32_t), cudaMemcpyHostToDevice));
    const double us = timer.MedianMicros(
        [&](cudaStream_t s) {
          BENCH_CHECK_CUDA(kernels::cuda::Embedding(d_ids, tokens, table, kHidden, out, s));
        },
        flags.warmup, flags.reps);
    add("embedding", "hidden=4096", 2.0 * 2.0 * hidden_elems, us);
    cudaFree(table);
    cudaFree(out);
    cudaFree(d_ids);
  }
  // Fused residual add + RMSNorm (bf16 residual): reads x, residual, writes both.
  {
    __nv_bfloat16* x = DeviceAlloc<__nv_bfloat16>(hidden_elems);
    __nv_bfloat16* residual = DeviceAlloc<__nv_bfloat16>(hidden_elems);
    __nv_bfloat16* weight = DeviceAlloc<__nv_bfloat16>(kHidden);
    FillRandom(x, hidden_elems, 22);
    FillRandom(residual, hidden_elems, 23);
    FillRandom(weight, kHidden, 24);
    const double us = timer.MedianMicros(
        [&](cudaStream_t s) {
          BENCH_CHECK_CUDA(
              kernels::cuda::FusedAddRmsNorm(x, residual, weight, tokens, kHidden, 1e-6f, s));
        },
        flags.warmup, flags.reps);
    add("fused_add_rms_norm", "hidden=4096 bf16 residual", 4.0 * 2.0 * hidden_elems, us);
    cudaFree(x);
    cudaFree(residual);
    cudaFree(weight);
  }
  // Qwen3 q/k norm + RoPE, in place on q and k.
  {
    const size_t q_elems = size_t{1} * tokens * kNumQHeads * kHeadDim;
    const size_t k_elems = size_t{1} * tokens * kNumKvHeads * kHeadDim;
    __nv_bfloat16* q = DeviceAlloc<__nv_bfloat16>(q_elems);
    __nv_bfloat16* k = DeviceAlloc<__nv_bfloat16>(k_elems);
    __nv_bfloat16* q_w = DeviceAlloc<__nv_bfloat16>(kHeadDim);
    __nv_bfloat16* k_w = DeviceAlloc<__nv_bfloat16>(kHeadDim);
    float* inv_freq = DeviceAlloc<float>(kHeadDim / 2);
    FillRandom(q, q_elems, 25);
    FillRandom(k, k_elems, 26);
    FillRandom(q_w, kHeadDim, 27);
    FillRandom(k_w, kHeadDim, 28);
    FillRandom(inv_freq, kHeadDim / 2, 29, 0.5f);
    std::vector<int32_t> positions(tokens);
    std::iota(positions.begin(), positions.end(), 1000);
    int32_t* d_positions = DeviceAlloc<int32_t>(tokens);
    BENCH_CHECK_CUDA(cudaMemcpy(d_positions, positions.data(), tokens * sizeof(int32_t),
                                cudaMemcpyHostToDevice));
    const double us = timer.MedianMicros(
        [&](cudaStream_t s) {
          BENCH_CHECK_CUDA(kernels::cuda::QkNormRope(q, k, q_w, k_w, 1e-6f, d_positions, tokens,
                                                     kNumQHeads, kNumKvHeads, kHeadDim, inv_freq,
                                                     s));
        },
        flags.warmup, flags.reps);
    add("qk_norm_rope", "Hq=32 Hkv=8 d=128", 2.0 * 2.0 * (q_elems + k_elems), us);
    cudaFree(q);
    cudaFree(k);
    cudaFree(q_w);
    cudaFree(k_w);
    cudaFree(inv_freq);
    cudaFree(d_positions);
  }
  // SiluAndMul on the fused gate|up output.
  {
    const size_t out_elems = size_t{1} * tokens * kInter;
    __nv_bfloat16* gate_up = DeviceAlloc<__nv_bfloat16>(2 * out_elems);
    __nv_bfloat16* out = DeviceAlloc<__nv_bfloat16>(out_elems);
    FillRandom(gate_up, 2 * out_elems, 30);
    const double us = timer.MedianMicros(
        [&](cudaStream_t s) {
          BENCH_CHECK_CUDA(kernels::cuda::SiluAndMul(gate_up, tokens, kInter, out, s));
        },
        flags.warmup, flags.reps);
    add("silu_and_mul", "inter=12288", 3.0 * 2.0 * out_elems, us);
    cudaFree(gate_up);
    cudaFree(out);
  }
  // KV append into a paged cache (slots spread over the cache).
  {
    const kernels::PagedKvLayout layout{std::max(64, 2 * tokens / 16 + 2), kNumKvHeads, 16,
                                        kHeadDim};
    const size_t cache_elems = static_cast<size_t>(layout.block_stride()) * layout.num_blocks;
    const size_t kv_elems = size_t{1} * tokens * kNumKvHeads * kHeadDim;
    __nv_bfloat16* k_cache = DeviceAlloc<__nv_bfloat16>(cache_elems);
    __nv_bfloat16* v_cache = DeviceAlloc<__nv_bfloat16>(cache_elems);
    __nv_bfloat16* k = DeviceAlloc<__nv_bfloat16>(kv_elems);
    __nv_bfloat16* v = DeviceAlloc<__nv_bfloat16>(kv_elems);
    FillRandom(k, kv_elems, 31);
    FillRandom(v, kv_elems, 32);
    std::vector<int64_t> slots(size_t{1} * layout.num_blocks * 16);
    std::iota(slots.begin(), slots.end(), 0);
    std::shuffle(slots.begin(), slots.end(), std::mt19937(6));
    slots.resize(tokens);
    int64_t* d_slots = DeviceAlloc<int64_t>(tokens);
    BENCH_CHECK_CUDA(
        cudaMemcpy(d_slots, slots.data(), tokens * sizeof(int64_t), cudaMemcpyHostToDevice));
    const double us = timer.MedianMicros(
        [&](cudaStream_t s) {
          BENCH_CHECK_CUDA(
              kernels::cuda::PagedKvAppend(k, v, tokens, d_slots, layout, k_cache, v_cache, s));
        },
        flags.warmup, flags.reps);
    add("paged_kv_append", "Hkv=8 d=128 page=16", 2.0 * 2.0 * 2.0 * kv_elems, us);
    cudaFree(k_cache);
    cudaFree(v_cache);
    cudaFree(k);
    cudaFree(v);
    cudaFree(d_slots);
  }
}

void BenchSampling(Timer& timer, const BenchFlags& flags, std::vector<BenchRow>* rows) {
  const int batch = 64;
  const size_t elems = size_t{1} * batch * kVocab;
  float* logits = DeviceAlloc<float>(elems);
  FillRandom(logits, elems, 41, 8.0f);
  uint64_t* steps = DeviceAlloc<uint64_t>(batch);
  BENCH_CHECK_CUDA(cudaMemset(steps, 0, batch * sizeof(uint64_t)));
  int32_t* out = DeviceAlloc<int32_t>(batch);
  kernels::SamplingParams* params = DeviceAlloc<kernels::SamplingParams>(batch);
  const size_t workspace_bytes = kernels::cuda::SamplingWorkspaceBytes(batch, kVocab);
  char* workspace = DeviceAlloc<char>(workspace_bytes);
  const std::pair<const char*, kernels::SamplingParams> configs[] = {
      {"greedy", kernels::SamplingParams{0.0f, 0, 1.0f, 1}},
      {"T0.6_topk20_topp0.95", kernels::SamplingParams{0.6f, 20, 0.95f, 1}},
      {"T1.0_topp0.95", kernels::SamplingParams{1.0f, 0, 0.95f, 1}},
  };
  for (const auto& [name, config] : configs) {
    const std::vector<kernels::SamplingParams> host(batch, config);
    BENCH_CHECK_CUDA(cudaMemcpy(params, host.data(), batch * sizeof(kernels::SamplingParams),
                                cudaMemcpyHostToDevice));
    const double us = timer.MedianMicros(
        [&](cudaStream_t s) {
          BENCH_CHECK_CUDA(kernels::cuda::Sample(logits, batch, kVocab, params, steps, workspace,
                                                 workspace_bytes, out, s));
        },
        flags.warmup, flags.quick ? 10 : flags.reps);
    BenchRow row;
    row.kernel = std::string("sample_") + name;
    row.shape = "batch=64 vocab=151936 fp32 logits";
    row.micros = us;
    row.bytes = 4.0 * elems;
    rows->push_back(row);
    PrintRow(row);
  }
  cudaFree(logits);
  cudaFree(steps);
  cudaFree(out);
  cudaFree(params);
  cudaFree(workspace);
}

}  // namespace
}  // namespace asyncspade::bench

int main(int argc, char** argv) {
  using namespace asyncspade::bench;
  const BenchFlags flags = ParseFlags(
      argc, argv,
      "usage: asyncspade-bench-model-kernels [--json FILE] [--reps N (default 50)] [--quick]\n");
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
  BenchGemms(timer, flags, &rows);
  BenchRowKernels(timer, flags, 64, &rows);
  if (!flags.quick) BenchRowKernels(timer, flags, 8192, &rows);
  BenchSampling(timer, flags, &rows);
  if (!flags.json_path.empty() &&
      !WriteJson(flags.json_path, "model_kernels", copy_bps / 1e12, rows)) {
    return 1;
  }
  std::printf("PASS: model kernel benchmark completed\n");
  return 0;
}
