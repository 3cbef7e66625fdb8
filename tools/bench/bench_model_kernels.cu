// Benchmark of the model-forward kernels other than attention, at Qwen3-8B shapes (hidden 4096,
// intermediate 12288, Hq 32, Hkv 8, d 128, vocab 151936):
//   - linear layers at decode batch sizes (m = 1, 4, 8, 16, 32, 64) on cuBLASLt, the skinny
//     tensor-core kernel, the GEMV kernel and the autotuned kAuto plan side by side (`*`: what the
//     previous shape rule picked): weight-streaming bandwidth (bytes = weights + activations in
//     and out) against the 4.28 TB/s floor; the B = 1 decode step's linears summed (autotuned,
//     previous rule, best row); sweeps of GEMV and skinny configurations; a prefill GEMM in
//     TFLOP/s;
//   - the elementwise / row kernels (embedding, fused add-RMSNorm, q/k norm + RoPE, SiluAndMul,
//     KV append) at a decode batch and a prefill chunk, as bandwidth;
//   - sampling at batch 64 over the full vocabulary (greedy, Qwen3's T 0.6 / top-k 20 /
//     top-p 0.95, top-p without top-k, plain temperature, top-k above one chunk) as time.
// Every timed run starts with L2 flushed clean (model_bench_common.cuh, L2Flush).
// Prints a table; --json FILE writes it; --quick runs fewer shapes.
#include <algorithm>
#include <chrono>
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
constexpr size_t kLinearsCount = sizeof(kLinears) / sizeof(kLinears[0]);

// Times `launch` (enqueues one linear layer on the given stream) and returns its row, with the
// bytes a linear layer must move (weights, x in, y out) and its FLOPs.
template <typename Launch>
BenchRow TimeLinear(Timer& timer, const BenchFlags& flags, const std::string& kernel,
                    const std::string& shape_suffix, const LinearShape& shape, int m,
                    Launch&& launch, L2Flush flush = L2Flush::kClean) {
  BenchRow row;
  row.kernel = kernel;
  row.shape = "m=" + std::to_string(m) + " n=" + std::to_string(shape.n) +
              " k=" + std::to_string(shape.k) + shape_suffix;
  row.micros = timer.MedianMicros(launch, flags.warmup, flags.reps, flush);
  row.bytes = 2.0 * (double(shape.n) * shape.k + double(m) * shape.k + double(m) * shape.n);
  row.flops = 2.0 * m * double(shape.n) * shape.k;
  return row;
}

// A CublasLtGemm::Run launch that exits on failure.
auto PlannedRun(kernels::cuda::CublasLtGemm* gemm, const __nv_bfloat16* x,
                const __nv_bfloat16* w, __nv_bfloat16* y, int m, const LinearShape& shape) {
  return [=](cudaStream_t s) {
    const absl::Status run = gemm->Run(x, w, nullptr, m, shape.n, shape.k, y, s);
    if (!run.ok()) {
      std::fprintf(stderr, "FAIL: %s\n", run.ToString().c_str());
      std::exit(1);
    }
  };
}

std::string SkinnyText(const kernels::cuda::SkinnyGemmConfig& c) {
  return " R=" + std::to_string(c.row_groups_per_cta) + " S=" + std::to_string(c.k_splits);
}

std::string GemvText(const kernels::cuda::GemvConfig& c) {
  return " R=" + std::to_string(c.rows_per_warp) + " W=" + std::to_string(c.warps_per_cta) +
         " S=" + std::to_string(c.k_splits);
}

// What an autotuned plan runs, without the timing note: "gemv R=1 W=8 S=1".
std::string PickedText(const std::string& description) {
  return description.substr(0, description.find(" ("));
}

// Decode-sized linear layers, old and new side by side: cuBLASLt (its heuristic's first algorithm),
// the skinny tensor-core kernel (PlanSkinnyGemm's configuration), the GEMV kernel (PlanGemv's
// configuration, m ≤ 8), and `auto` = what CublasLtGemm's autotuned kAuto plan runs (timed through
// CublasLtGemm::Run, so exactly the picked backend, configuration and cuBLASLt algorithm). `*`
// marks the backend the previous shape rule picked (skinny for m ≤ 16 and n < 65536). Then one
// cuBLASLt row timed after a dirty L2 flush (the first run's method, to show what it cost), the
// B = 1 decode step's linears summed three ways (autotuned, previous rule, best measured row)
// against their weight-read floor, sweeps of GEMV and skinny configurations, and a prefill GEMM in
// TFLOP/s.
void BenchGemms(Timer& timer, const BenchFlags& flags, std::vector<BenchRow>* rows) {
  auto created_lt = kernels::cuda::CublasLtGemm::Create();
  auto created_auto = kernels::cuda::CublasLtGemm::Create();
  if (!created_lt.ok() || !created_auto.ok()) {
    std::fprintf(stderr, "FAIL: %s\n",
                 (created_lt.ok() ? created_auto.status() : created_lt.status()).ToString().c_str());
    std::exit(1);
  }
  kernels::cuda::CublasLtGemm& lt = **created_lt;
  kernels::cuda::CublasLtGemm& automatic = **created_auto;
  const size_t split_workspace_bytes = size_t{64} << 20;
  void* split_workspace = DeviceAlloc<char>(split_workspace_bytes);
  BENCH_CHECK_CUDA(cudaMemset(split_workspace, 0, split_workspace_bytes));
  const std::vector<int> batch_sizes =
      flags.quick ? std::vector<int>{1, 8, 16, 64} : std::vector<int>{1, 4, 8, 16, 32, 64};
  std::vector<BenchRow> sweep;
  // Per-layer linears at m = 1: the autotuned plan, the previous rule, the best row, the floor.
  double step_auto_us = 0.0;
  double step_old_rule_us = 0.0;
  double step_best_us = 0.0;
  double step_floor_us = 0.0;
  double plan_seconds = 0.0;
  constexpr int kLayers = 36;  // Qwen3-8B
  for (const LinearShape& shape : kLinears) {
    const size_t w_elems = size_t{1} * shape.n * shape.k;
    __nv_bfloat16* w = DeviceAlloc<__nv_bfloat16>(w_elems);
    FillRandom(w, w_elems, 11, 0.02f);
    const std::string name = shape.name;
    for (int m : batch_sizes) {
      __nv_bfloat16* x = DeviceAlloc<__nv_bfloat16>(size_t{1} * m * shape.k);
      __nv_bfloat16* y = DeviceAlloc<__nv_bfloat16>(size_t{1} * m * shape.n);
      FillRandom(x, size_t{1} * m * shape.k, 12);
      BENCH_CHECK_CUDA(cudaDeviceSynchronize());
      const auto plan_start = std::chrono::steady_clock::now();
      const absl::Status auto_planned = automatic.Plan(m, shape.n, shape.k, false);
      plan_seconds +=
          std::chrono::duration<double>(std::chrono::steady_clock::now() - plan_start).count();
      for (const absl::Status& planned :
           {lt.Plan(m, shape.n, shape.k, false, kernels::cuda::GemmBackend::kCublasLt),
            auto_planned}) {
        if (!planned.ok()) {
          std::fprintf(stderr, "FAIL: %s\n", planned.ToString().c_str());
          std::exit(1);
        }
      }
      std::vector<BenchRow> shape_rows;
      BenchRow lt_row = TimeLinear(timer, flags, "gemm_" + name + "_cublaslt", "", shape, m,
                                   PlannedRun(&lt, x, w, y, m, shape));
      lt_row.extra = "\"backend\": \"cublaslt\"";
      shape_rows.push_back(lt_row);
      const bool skinny_ok = kernels::cuda::SkinnyGemmSupports(m, shape.n, shape.k);
      const bool old_rule_skinny = skinny_ok && m <= 16 && shape.n < 65536;
      if (skinny_ok) {
        kernels::cuda::SkinnyGemmConfig config;
        BENCH_CHECK_CUDA(kernels::cuda::PlanSkinnyGemm(
            m, shape.n, shape.k, kernels::cuda::CublasLtGemm::kSkinnyWorkspaceBytes, &config));
        BenchRow row = TimeLinear(timer, flags, "gemm_" + name + "_skinny", SkinnyText(config),
                                  shape, m, [&](cudaStream_t s) {
                                    BENCH_CHECK_CUDA(kernels::cuda::SkinnyGemm(
                                        x, w, nullptr, m, shape.n, shape.k, config,
                                        split_workspace, split_workspace_bytes, y, s));
                                  });
        row.extra = "\"backend\": \"skinny\", \"row_groups_per_cta\": " +
                    std::to_string(config.row_groups_per_cta) +
                    ", \"k_splits\": " + std::to_string(config.k_splits);
        shape_rows.push_back(row);
      }
      if (old_rule_skinny) {
        shape_rows.back().shape += " *";
      } else {
        shape_rows.front().shape += " *";
      }
      const BenchRow old_rule_row = old_rule_skinny ? shape_rows.back() : shape_rows.front();
      kernels::cuda::GemvConfig gemv_config;
      const bool gemv_ok =
          kernels::cuda::GemvSupports(m, shape.n, shape.k) &&
          kernels::cuda::PlanGemv(m, shape.n, shape.k,
                                  kernels::cuda::CublasLtGemm::kSkinnyWorkspaceBytes,
                                  &gemv_config) == cudaSuccess;
      if (gemv_ok) {
        BenchRow row = TimeLinear(timer, flags, "gemm_" + name + "_gemv", GemvText(gemv_config),
                                  shape, m, [&](cudaStream_t s) {
                                    BENCH_CHECK_CUDA(kernels::cuda::Gemv(
                                        x, w, nullptr, m, shape.n, shape.k, gemv_config,
                                        split_workspace, split_workspace_bytes, y, s));
                                  });
        row.extra = "\"backend\": \"gemv\", \"rows_per_warp\": " +
                    std::to_string(gemv_config.rows_per_warp) + ", \"warps_per_cta\": " +
                    std::to_string(gemv_config.warps_per_cta) +
                    ", \"k_splits\": " + std::to_string(gemv_config.k_splits);
        shape_rows.push_back(row);
      }
      const std::string picked = automatic.PlanDescription(m, shape.n, shape.k, false);
      BenchRow auto_row = TimeLinear(timer, flags, "gemm_" + name + "_auto",
                                     " = " + PickedText(picked), shape, m,
                                     PlannedRun(&automatic, x, w, y, m, shape));
      auto_row.extra = "\"backend\": \"auto\", \"plan\": \"" + picked + "\"";
      double best_us = auto_row.micros;
      for (BenchRow& row : shape_rows) {
        best_us = std::min(best_us, row.micros);
        PrintRow(row);
        rows->push_back(row);
      }
      PrintRow(auto_row);
      rows->push_back(auto_row);
      if (m == 1) {
        const double floor_us = lt_row.bytes / kReferenceBandwidthBytesPerSecond * 1e6;
        const int repeat = name == "lm_head" ? 1 : kLayers;
        step_auto_us += repeat * auto_row.micros;
        step_old_rule_us += repeat * old_rule_row.micros;
        step_best_us += repeat * best_us;
        step_floor_us += repeat * floor_us;
        if (name == "o_proj") {
          BenchRow dirty = TimeLinear(timer, flags, "gemm_o_proj_cublaslt_dirtyL2", "", shape, m,
                                      PlannedRun(&lt, x, w, y, m, shape), L2Flush::kDirty);
          dirty.extra = "\"backend\": \"cublaslt\", \"l2_flush\": \"dirty\"";
          rows->push_back(dirty);
          PrintRow(dirty);
        }
      }
      // Tuning data for the per-layer shapes: every GEMV configuration the autotuner tries at
      // m = 1 and 8, every skinny CTA shape and a few k splits at m = 1.
      if (!flags.quick && name != "lm_head") {
        if (m == 1 || m == 8) {
          for (const kernels::cuda::GemvConfig& config : kernels::cuda::GemvCandidateConfigs(
                   m, shape.n, shape.k, kernels::cuda::CublasLtGemm::kSkinnyWorkspaceBytes)) {
            BenchRow row = TimeLinear(timer, flags, "gemm_" + name + "_gemv_sweep",
                                      GemvText(config), shape, m, [&](cudaStream_t s) {
                                        BENCH_CHECK_CUDA(kernels::cuda::Gemv(
                                            x, w, nullptr, m, shape.n, shape.k, config,
                                            split_workspace, split_workspace_bytes, y, s));
                                      });
            row.extra = "\"backend\": \"gemv\"";
            sweep.push_back(row);
          }
        }
        if (m == 1 && skinny_ok) {
          for (const int r : {1, 2, 4}) {
            for (const int splits : {1, 2, 4}) {
              const kernels::cuda::SkinnyGemmConfig config{r, splits};
              if (kernels::cuda::SkinnyGemmWorkspaceBytes(config, m, shape.n) >
                  split_workspace_bytes) {
                continue;
              }
              BenchRow row = TimeLinear(timer, flags, "gemm_" + name + "_skinny_sweep",
                                        SkinnyText(config), shape, m, [&](cudaStream_t s) {
                                          BENCH_CHECK_CUDA(kernels::cuda::SkinnyGemm(
                                              x, w, nullptr, m, shape.n, shape.k, config,
                                              split_workspace, split_workspace_bytes, y, s));
                                        });
              row.extra = "\"backend\": \"skinny\"";
              sweep.push_back(row);
            }
          }
        }
      }
      cudaFree(x);
      cudaFree(y);
    }
    cudaFree(w);
  }
  BenchRow step;
  step.kernel = "decode_step_linears_auto";
  step.shape = "Qwen3-8B B=1: 36 layers + lm_head";
  step.micros = step_auto_us;
  step.bytes = step_floor_us * 1e-6 * kReferenceBandwidthBytesPerSecond;
  step.extra = "\"best_row_per_shape_us\": " + std::to_string(step_best_us) +
               ", \"previous_rule_us\": " + std::to_string(step_old_rule_us) +
               ", \"floor_us\": " + std::to_string(step_floor_us);
  rows->push_back(step);
  PrintRow(step);
  BenchRow old_step = step;
  old_step.kernel = "decode_step_linears_old_rule";
  old_step.micros = step_old_rule_us;
  old_step.extra = "\"previous_rule\": \"skinny for m <= 16 and n < 65536, else cublaslt\"";
  rows->push_back(old_step);
  PrintRow(old_step);
  std::printf("%-30s %-44s %11.2f   (best measured row per shape; floor %.2f us; autotuned step "
              "= %.3fx the floor)\n",
              "decode_step_linears_best", "Qwen3-8B B=1: 36 layers + lm_head", step_best_us,
              step_floor_us, step_auto_us / step_floor_us);
  std::printf("autotuned planning of %zu GEMM shapes took %.2f s in total\n",
              kLinearsCount * batch_sizes.size(), plan_seconds);
  if (!sweep.empty()) {
    std::printf("GEMV sweep (R = rows per warp, W = warps per CTA, S = k splits) and skinny "
                "sweep (R = 32-row groups per CTA, S = k splits):\n");
    for (BenchRow& row : sweep) {
      PrintRow(row);
      rows->push_back(std::move(row));
    }
  }
  cudaFree(split_workspace);

  // A prefill chunk: compute-bound, reported in TFLOP/s.
  {
    const int m = 4096;
    const LinearShape& shape = kLinears[2];
    __nv_bfloat16* w = DeviceAlloc<__nv_bfloat16>(size_t{1} * shape.n * shape.k);
    __nv_bfloat16* x = DeviceAlloc<__nv_bfloat16>(size_t{1} * m * shape.k);
    __nv_bfloat16* y = DeviceAlloc<__nv_bfloat16>(size_t{1} * m * shape.n);
    FillRandom(w, size_t{1} * shape.n * shape.k, 13, 0.02f);
    FillRandom(x, size_t{1} * m * shape.k, 14);
    if (!lt.Plan(m, shape.n, shape.k, false).ok()) std::exit(1);
    const double micros = timer.MedianMicros(
        [&](cudaStream_t s) {
          if (!lt.Run(x, w, nullptr, m, shape.n, shape.k, y, s).ok()) std::exit(1);
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
      {"T0.6_topp0.95", kernels::SamplingParams{0.6f, 0, 0.95f, 1}},
      {"T1.0", kernels::SamplingParams{1.0f, 0, 1.0f, 1}},
      {"T1.0_topk5000_topp0.9", kernels::SamplingParams{1.0f, 5000, 0.9f, 1}},
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
