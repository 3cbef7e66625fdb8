// The CUDA runner's faster paths against the ones they replace:
//  - on-device sampling: tokens equal kernels::cpu::Sample on the very logits the runner returns
//    (greedy and seeded top-k / top-p, prefill and decode steps, graph replays, a padded
//    vocabulary), and through the engine equal to host sampling on the same runner;
//  - Warmup(): every decode step afterwards replays a graph from its first step, and the results
//    equal those of a runner that never warmed up (the warm-up leaves nothing in the cache);
//  - the fused decode kernels: QkvPrepareAndAppend equals SplitQkv + QkNormRope + PagedKvAppend
//    (+ QuestUpdateMetadata) and QuestBuildSparseIndices equals QuestExpandPages +
//    BuildSparseIndices; whole steps with and without them agree.
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <vector>

#include "kernels/paged_kv_append.h"
#include "kernels/quest.h"
#include "kernels/rope.h"
#include "kernels/sampling.h"
#include "kernels/sparse_attention.h"
#include "services/decode_worker/model/cuda/cuda_model_runner.h"
#include "services/decode_worker/model/cuda/runner_kernels.h"
#include "tests/gpu/model/engine_gpu_test_util.h"

namespace asyncspade {
namespace {

using namespace engine_gpu_testing;  // NOLINT
namespace kc = kernels::cuda;

kernels::SamplingParams Params(float temperature, int top_k, float top_p, uint64_t seed) {
  kernels::SamplingParams p;
  p.temperature = temperature;
  p.top_k = top_k;
  p.top_p = top_p;
  p.seed = seed;
  return p;
}

// Greedy, top-p, top-k, full-vocabulary sampling: one per sequence.
std::vector<kernels::SamplingParams> MixedParams() {
  return {Params(0.0f, 0, 1.0f, 0), Params(0.8f, 0, 0.9f, 11), Params(1.2f, 20, 1.0f, 12), Params(1.0f, 0, 1.0f, 13)};
}

int CpuDraw(const float* row, int vocab, const kernels::SamplingParams& p, uint64_t step) {
  int32_t token = -1;
  kernels::cpu::Sample(row, 1, vocab, &p, &step, &token);
  return token;
}

// Four sequences: a prefill (one chunk, every sequence asking for a token; sequence 1 without its
// logits), then decode steps whose logits come back too, so the drawn tokens can be checked
// against the CPU's draw from the same rows. Returns the number of tokens checked.
int CheckDeviceDrawsAgainstCpu(CudaModelRunner& runner) {
  const int vocab = runner.config().vocab_size;
  const std::vector<kernels::SamplingParams> params = MixedParams();
  const int num_seqs = static_cast<int>(params.size());
  std::vector<std::vector<int32_t>> tables(num_seqs), tokens(num_seqs);
  const std::vector<int> prompt_lengths = {9, 33, 3, 17};
  for (int s = 0; s < num_seqs; ++s) {
    for (int j = 0; j < 8; ++j) tables[s].push_back(s * 8 + j);
    tokens[s] = TokenIds(prompt_lengths[s], vocab, 500 + s);
  }
  std::vector<int> cached(num_seqs, 0);
  ForwardOutput output;
  int checked = 0;
  for (int step = 0; step < 12; ++step) {
    ForwardBatch batch;
    std::vector<uint64_t> rng(num_seqs);
    for (int s = 0; s < num_seqs; ++s) {
      ForwardSequence fs;
      fs.sequence_id = s;
      const int n = static_cast<int>(tokens[s].size()) - cached[s];
      fs.tokens = absl::MakeConstSpan(tokens[s]).subspan(cached[s], n);
      fs.start_position = cached[s];
      fs.block_table = tables[s];
      fs.logits = step == 0 && s == 1 ? LogitsWanted::kNone : LogitsWanted::kLast;
      fs.sampling = &params[s];
      fs.rng_step = static_cast<uint64_t>(step * 7 + s);
      batch.sequences.push_back(fs);
    }
    const absl::Status status = runner.Forward(batch, &output);
    EXPECT_TRUE(status.ok()) << status;
    if (!status.ok()) return checked;
    EXPECT_EQ(output.sampled_tokens.size(), static_cast<size_t>(num_seqs));
    for (int s = 0; s < num_seqs; ++s) {
      const int32_t drawn = output.sampled_tokens[s];
      EXPECT_GE(drawn, 0) << "step " << step << " sequence " << s;
      EXPECT_LT(drawn, vocab);
      if (output.num_rows(s) == 1) {
        EXPECT_EQ(drawn, CpuDraw(output.row(s, 0), vocab, params[s], batch.sequences[s].rng_step))
            << "step " << step << " sequence " << s << (runner.last_step_used_graph() ? " (graph replay)" : "");
        ++checked;
      } else {
        EXPECT_EQ(output.num_rows(s), 0);
      }
      cached[s] = static_cast<int>(tokens[s].size());
      tokens[s].push_back(drawn >= 0 && drawn < vocab ? drawn : 3);
    }
  }
  EXPECT_TRUE(runner.last_step_used_graph() || !runner.cuda_graphs());
  return checked;
}

TEST(DeviceSamplingGpuTest, DrawsEqualCpuSampleOnTheReturnedLogits) {
  SKIP_WITHOUT_GPUS(1);
  for (int vocab : {1003, 1024}) {  // 1003: padded to 1008 on the device (rows compacted for the sampler)
    SCOPED_TRACE(::testing::Message() << "vocab " << vocab);
    const ModelConfig config = SmallQwen3Config(128, 8, 2, 2, vocab);
    auto runner = CudaModelRunner::CreateWithRandomWeights(config, 21, SmallRunnerOptions(64, 512));
    ASSERT_TRUE(runner.ok()) << runner.status();
    ASSERT_TRUE((*runner)->samples_tokens());
    const int checked = CheckDeviceDrawsAgainstCpu(**runner);
    std::printf("[ gpu ] device sampling (vocab %d): %d draws equal the CPU's on the same logits\n", vocab, checked);
  }
}

// The one sequence asked for a token without its logits (step 0, sequence 1) is checked against a
// second runner that returns them: same weights, same batch, same computed rows.
TEST(DeviceSamplingGpuTest, SampleOnlyRowsDrawFromTheRightRow) {
  SKIP_WITHOUT_GPUS(1);
  const ModelConfig config = SmallQwen3Config();
  const int vocab = config.vocab_size;
  auto runner = CudaModelRunner::CreateWithRandomWeights(config, 23, SmallRunnerOptions(64, 512));
  ASSERT_TRUE(runner.ok()) << runner.status();
  const std::vector<int32_t> prompt_a = TokenIds(12, vocab, 1), prompt_b = TokenIds(30, vocab, 2);
  const std::vector<int32_t> table_a = {0, 1, 2}, table_b = {3, 4, 5};
  const kernels::SamplingParams greedy = Params(0.0f, 0, 1.0f, 0);
  const kernels::SamplingParams hot = Params(0.9f, 0, 0.95f, 5);
  auto run = [&](LogitsWanted b_logits, ForwardOutput* output) {
    ForwardBatch batch;
    ForwardSequence a;
    a.sequence_id = 1;
    a.tokens = prompt_a;
    a.block_table = table_a;
    a.logits = LogitsWanted::kAll;
    a.sampling = &hot;
    a.rng_step = 4;
    ForwardSequence b = a;
    b.sequence_id = 2;
    b.tokens = prompt_b;
    b.block_table = table_b;
    b.logits = b_logits;
    b.sampling = &greedy;
    batch.sequences = {a, b};
    const absl::Status status = (*runner)->Forward(batch, output);
    EXPECT_TRUE(status.ok()) << status;
  };
  ForwardOutput without, with;
  run(LogitsWanted::kNone, &without);
  run(LogitsWanted::kLast, &with);
  ASSERT_EQ(without.num_rows(1), 0);
  ASSERT_EQ(without.num_rows(0), 12);
  ASSERT_EQ(with.num_rows(1), 1);
  EXPECT_EQ(without.sampled_tokens[0], CpuDraw(without.last_row(0), vocab, hot, 4));
  EXPECT_EQ(with.sampled_tokens[1], CpuDraw(with.last_row(1), vocab, greedy, 0));
  const Top2 top = TopTwo(with.last_row(1), vocab);
  if (top.margin > 1e-3) {
    EXPECT_EQ(without.sampled_tokens[1], top.top1) << "the draw of a row computed only to be sampled";
  }
  std::printf("[ gpu ] sample-only row: token %d, with its logits %d (top-1/top-2 margin %.4f)\n",
              without.sampled_tokens[1], with.sampled_tokens[1], top.margin);
}

TEST(DeviceSamplingGpuTest, EngineTokensEqualHostSamplingOnTheSameRunner) {
  SKIP_WITHOUT_GPUS(1);
  const ModelConfig config = SmallQwen3Config();
  std::vector<GenerationRequest> requests;
  const std::vector<kernels::SamplingParams> params = MixedParams();
  for (size_t i = 0; i < params.size(); ++i) {
    GenerationRequest r = GreedyRequest(TokenIds(5 + 13 * static_cast<int>(i), config.vocab_size, 40 + i), 24);
    r.sampling = params[i];
    requests.push_back(r);
  }
  std::vector<std::vector<EngineResult>> results;
  for (bool on_device : {false, true}) {
    auto runner = CudaModelRunner::CreateWithRandomWeights(config, 29, SmallRunnerOptions(128, 512));
    ASSERT_TRUE(runner.ok()) << runner.status();
    GenerationEngineOptions options;
    options.max_batch_size = 8;
    options.max_batch_tokens = 16;  // prompts in chunks, mixed with decode steps
    options.sparse_default.policy = SparsePolicy::kDense;
    options.sample_on_runner = on_device;
    auto engine = GenerationEngine::Create(std::move(runner).value(), options);
    ASSERT_TRUE(engine.ok()) << engine.status();
    results.push_back(RunEngine(**engine, requests));
  }
  int non_greedy_tokens = 0;
  for (size_t i = 0; i < requests.size(); ++i) {
    ASSERT_EQ(results[0][i].tokens.size(), 24u);
    EXPECT_EQ(results[1][i].tokens, results[0][i].tokens) << "request " << i;
    if (i > 0) non_greedy_tokens += static_cast<int>(results[0][i].tokens.size());
  }
  std::printf("[ gpu ] engine: device-sampled tokens equal host-sampled ones for %zu requests (%d seeded draws)\n",
              requests.size(), non_greedy_tokens);
}

// --- Warm-up -----------------------------------------------------------------------------------

// Prefill of three sequences, then decode batches of 3, 2 and 1 (buckets 4, 2, 1), every logits
// row returned. `every_decode_replayed` says whether every decode step replayed a graph.
std::vector<float> WarmScript(CudaModelRunner& runner, bool* every_decode_replayed) {
  const int vocab = runner.config().vocab_size;
  const std::vector<int> prompt_lengths = {37, 80, 5};
  std::vector<std::vector<int32_t>> tables(3), tokens(3);
  for (int s = 0; s < 3; ++s) {
    for (int j = 0; j < 16; ++j) tables[s].push_back(s * 16 + j);
    tokens[s] = TokenIds(prompt_lengths[s] + 40, vocab, 300 + s);
  }
  std::vector<int> cached(3, 0);
  std::vector<float> all;
  ForwardOutput output;
  *every_decode_replayed = true;
  auto step = [&](const std::vector<int>& seqs, bool prefill) {
    ForwardBatch batch;
    for (int s : seqs) {
      ForwardSequence fs;
      fs.sequence_id = s;
      const int n = prefill ? prompt_lengths[s] : 1;
      fs.tokens = absl::MakeConstSpan(tokens[s]).subspan(cached[s], n);
      fs.start_position = cached[s];
      fs.block_table = tables[s];
      fs.logits = LogitsWanted::kLast;
      batch.sequences.push_back(fs);
      cached[s] += n;
    }
    const absl::Status status = runner.Forward(batch, &output);
    EXPECT_TRUE(status.ok()) << status;
    if (!prefill && !runner.last_step_used_graph()) *every_decode_replayed = false;
    all.insert(all.end(), output.logits.begin(), output.logits.end());
  };
  step({0, 1, 2}, true);
  for (int i = 0; i < 6; ++i) step({0, 1, 2}, false);
  for (int i = 0; i < 4; ++i) step({0, 2}, false);
  for (int i = 0; i < 3; ++i) step({1}, false);
  return all;
}

TEST(WarmupGpuTest, EveryDecodeStepReplaysAndResultsAreUnchanged) {
  SKIP_WITHOUT_GPUS(1);
  const ModelConfig config = SmallQwen3Config();
  SparsePolicyConfig quest;
  quest.policy = SparsePolicy::kQuest;
  quest.budget = 32;
  quest.sinks = 4;
  quest.recent = 8;
  quest.quest_page_size = 16;
  SparsePolicyConfig dense;
  dense.policy = SparsePolicy::kDense;
  for (const SparsePolicyConfig* policy : {&dense, &quest}) {
    const bool sparse = policy->policy != SparsePolicy::kDense;
    SCOPED_TRACE(sparse ? "default quest" : "default dense");
    CudaModelRunnerOptions options = SmallRunnerOptions(/*num_kv_blocks=*/64, /*max_seq_len=*/1024);
    options.default_sparse = *policy;
    auto warmed = CudaModelRunner::CreateWithRandomWeights(config, 31, options);
    ASSERT_TRUE(warmed.ok()) << warmed.status();
    auto cold = CudaModelRunner::CreateWithRandomWeights(config, 31, options);
    ASSERT_TRUE(cold.ok()) << cold.status();
    ASSERT_TRUE((*warmed)->Warmup().ok());
    const CudaWarmupReport report = (*warmed)->last_warmup();
    // Buckets 1..8 × classes 256, 512, 1024 for dense; quest adds its group with and without
    // non-members.
    EXPECT_GE(report.graphs_captured, 4 * 3);
    EXPECT_EQ(report.graphs_captured, (*warmed)->num_cached_graphs());
    EXPECT_EQ((*warmed)->TotalSparseCounters().sparse_layer_steps, 0) << "warm-up steps are not counted";
    const int graphs = (*warmed)->num_cached_graphs();
    bool replayed = false, cold_replayed = false;
    const std::vector<float> a = WarmScript(**warmed, &replayed);
    const std::vector<float> b = WarmScript(**cold, &cold_replayed);
    EXPECT_TRUE(replayed) << "a decode step after the warm-up ran eagerly (its graph was not captured)";
    EXPECT_FALSE(cold_replayed) << "without warm-up the first step of a shape runs eagerly";
    EXPECT_EQ((*warmed)->num_cached_graphs(), graphs) << "no capture after the warm-up";
    ASSERT_EQ(a.size(), b.size());
    const int vocab = config.vocab_size;
    double worst = 0.0;
    size_t differing = 0;
    for (size_t r = 0; r * vocab < a.size(); ++r) {
      worst = std::max(worst, RelativeL2(a.data() + r * vocab, b.data() + r * vocab, vocab));
      for (int i = 0; i < vocab; ++i) differing += a[r * vocab + i] != b[r * vocab + i];
    }
    // Dense: bit for bit. Quest: the top-k's order changes the attention's summation order only.
    if (sparse) {
      EXPECT_LE(worst, 5e-3);
      EXPECT_GT((*warmed)->TotalSparseCounters().sparse_layer_steps, 0) << "the script should reach quest";
    } else {
      EXPECT_EQ(differing, 0u);
    }
    std::printf("[ gpu ] warm-up (%s): %d steps, %d graphs in %.3f s; every later decode step replayed: %s; "
                "logits vs no warm-up: %zu differ, max row rel L2 %.3g\n",
                sparse ? "quest" : "dense", report.steps, report.graphs_captured, report.seconds,
                replayed ? "yes" : "no", differing, worst);
  }
}

// --- Fused decode kernels ---------------------------------------------------------------------

template <typename T>
std::vector<T> Download(const T* device, size_t n) {
  std::vector<T> host(n);
  EXPECT_EQ(cudaMemcpy(host.data(), device, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
  return host;
}

template <typename T>
T* Upload(const std::vector<T>& host) {
  T* device = nullptr;
  EXPECT_EQ(cudaMalloc(&device, std::max<size_t>(host.size(), 1) * sizeof(T)), cudaSuccess);
  if (!host.empty()) {
    EXPECT_EQ(cudaMemcpy(device, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
  }
  return device;
}

std::vector<__nv_bfloat16> RandomBf16(size_t n, uint32_t seed, float scale) {
  std::vector<__nv_bfloat16> v(n);
  uint32_t x = seed * 2654435761u + 7u;
  for (size_t i = 0; i < n; ++i) {
    x = x * 1664525u + 1013904223u;
    const float u = static_cast<float>((x >> 8) & 0xffff) / 65536.0f;  // [0, 1)
    v[i] = __float2bfloat16((u * 2.0f - 1.0f + 0.01f) * scale);
  }
  return v;
}

float F(__nv_bfloat16 x) { return __bfloat162float(x); }

// Decode steps of 5 sequences (one token each, pages filling in order, one padded token) through
// both paths; q, both caches and the Quest bounds compared after every step, the bounds also with
// the min/max of the cached keys themselves.
TEST(FusedDecodeKernelsGpuTest, QkvPrepareAndAppendEqualsTheSeparateKernels) {
  SKIP_WITHOUT_GPUS(1);
  for (bool qk_norm : {true, false}) {
    SCOPED_TRACE(qk_norm ? "q/k norm + RoPE" : "RoPE only");
    const int hq = 8, hkv = 2, d = 128, page = 16, blocks = 12, seqs = 5, tokens = 6;
    const kernels::PagedKvLayout layout{blocks, hkv, page, d};
    const int q_size = hq * d, kv_size = hkv * d, qkv_size = q_size + 2 * kv_size;
    const size_t cache_elems = static_cast<size_t>(blocks) * layout.block_stride();
    const size_t bounds_elems = static_cast<size_t>(blocks) * hkv * 2 * d;
    const std::vector<float> inv_freq_host = kernels::ComputeRopeInvFreq(d, 1e6, RopeScaling{});
    float* inv_freq = Upload(inv_freq_host);
    __nv_bfloat16* q_norm = Upload(RandomBf16(d, 1, 1.0f));
    __nv_bfloat16* k_norm = Upload(RandomBf16(d, 2, 1.0f));
    __nv_bfloat16* qkv = nullptr;
    __nv_bfloat16 *q_old = nullptr, *k_old = nullptr, *v_old = nullptr, *q_new = nullptr;
    __nv_bfloat16 *kc_old = nullptr, *vc_old = nullptr, *kc_new = nullptr, *vc_new = nullptr;
    __nv_bfloat16 *bounds_old = nullptr, *bounds_new = nullptr;
    ASSERT_EQ(cudaMalloc(&q_old, tokens * q_size * 2), cudaSuccess);
    ASSERT_EQ(cudaMalloc(&q_new, tokens * q_size * 2), cudaSuccess);
    ASSERT_EQ(cudaMalloc(&k_old, tokens * kv_size * 2), cudaSuccess);
    ASSERT_EQ(cudaMalloc(&v_old, tokens * kv_size * 2), cudaSuccess);
    for (__nv_bfloat16** cache : {&kc_old, &vc_old, &kc_new, &vc_new}) {
      ASSERT_EQ(cudaMalloc(cache, cache_elems * 2), cudaSuccess);
      ASSERT_EQ(cudaMemset(*cache, 0, cache_elems * 2), cudaSuccess);
    }
    for (__nv_bfloat16** b : {&bounds_old, &bounds_new}) {
      ASSERT_EQ(cudaMalloc(b, bounds_elems * 2), cudaSuccess);
      ASSERT_EQ(cudaMemset(*b, 0, bounds_elems * 2), cudaSuccess);
    }
    void* workspace = nullptr;
    const size_t workspace_bytes = kc::QuestUpdateWorkspaceBytes(layout);
    ASSERT_EQ(cudaMalloc(&workspace, workspace_bytes), cudaSuccess);
    ASSERT_EQ(kc::QuestInitUpdateWorkspace(layout, workspace, nullptr), cudaSuccess);
    // Sequence s owns blocks 2s and 2s + 1 and starts at position 11·s (mid-page for most).
    size_t max_q_diff = 0, max_k_diff = 0;
    for (int step = 0; step < 20; ++step) {
      std::vector<int32_t> positions(tokens, 0);
      std::vector<int64_t> slots(tokens, -1);
      for (int s = 0; s < seqs; ++s) {
        const int position = 11 * s + step;
        positions[s] = position;
        slots[s] = int64_t{2 * s + position / page} * page + position % page;
      }
      qkv = Upload(RandomBf16(static_cast<size_t>(tokens) * qkv_size, 100 + step, 2.0f));
      int32_t* positions_d = Upload(positions);
      int64_t* slots_d = Upload(slots);
      ASSERT_EQ(cuda_engine::SplitQkv(qkv, tokens, q_size, kv_size, q_old, k_old, v_old, nullptr), cudaSuccess);
      if (qk_norm) {
        ASSERT_EQ(kc::QkNormRope(q_old, k_old, q_norm, k_norm, 1e-6f, positions_d, tokens, hq, hkv, d, inv_freq, nullptr),
                  cudaSuccess);
      } else {
        ASSERT_EQ(kc::Rope(q_old, k_old, positions_d, tokens, hq, hkv, d, inv_freq, nullptr), cudaSuccess);
      }
      ASSERT_EQ(kc::PagedKvAppend(k_old, v_old, tokens, slots_d, layout, kc_old, vc_old, nullptr), cudaSuccess);
      ASSERT_EQ(kc::QuestUpdateMetadata(kc_old, layout, slots_d, tokens, bounds_old, workspace, workspace_bytes, nullptr),
                cudaSuccess);
      ASSERT_EQ(cuda_engine::QkvPrepareAndAppend(qkv, tokens, hq, hkv, d, qk_norm ? q_norm : nullptr,
                                                 qk_norm ? k_norm : nullptr, 1e-6f, positions_d, inv_freq, slots_d,
                                                 layout, q_new, kc_new, vc_new, bounds_new, nullptr),
                cudaSuccess);
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      const auto qo = Download(q_old, tokens * q_size), qn = Download(q_new, tokens * q_size);
      const auto ko = Download(kc_old, cache_elems), kn = Download(kc_new, cache_elems);
      const auto vo = Download(vc_old, cache_elems), vn = Download(vc_new, cache_elems);
      const auto bo = Download(bounds_old, bounds_elems), bn = Download(bounds_new, bounds_elems);
      size_t q_diff = 0, k_diff = 0, v_diff = 0, b_diff = 0;
      for (size_t i = 0; i < qo.size(); ++i) {
        q_diff += F(qo[i]) != F(qn[i]);
        // Contraction may differ: at most one bf16 step of the value.
        EXPECT_LE(std::abs(F(qo[i]) - F(qn[i])), 1e-2f * std::max(1.0f, std::abs(F(qo[i])))) << "q element " << i;
      }
      for (size_t i = 0; i < ko.size(); ++i) {
        k_diff += F(ko[i]) != F(kn[i]);
        v_diff += F(vo[i]) != F(vn[i]);
        EXPECT_LE(std::abs(F(ko[i]) - F(kn[i])), 1e-2f * std::max(1.0f, std::abs(F(ko[i])))) << "k element " << i;
      }
      EXPECT_EQ(v_diff, 0u) << "step " << step;
      // The fused bounds are the min / max of the page's cached keys up to the offset just written
      // (slots never written hold the cache's initial zeros, as the bounds of such a page do).
      for (int s = 0; s < seqs; ++s) {
        const int position = 11 * s + step;
        const int block = 2 * s + position / page;
        for (int h = 0; h < hkv; ++h) {
          const size_t at = (static_cast<size_t>(block) * hkv + h) * 2 * d;
          for (int c = 0; c < d; ++c) {
            float lo = INFINITY, hi = -INFINITY;
            for (int o = 0; o <= position % page; ++o) {
              const float v = F(kn[layout.Offset(block, h, o) + c]);
              lo = std::min(lo, v);
              hi = std::max(hi, v);
            }
            b_diff += F(bn[at + c]) != lo || F(bn[at + d + c]) != hi;
          }
        }
      }
      EXPECT_EQ(b_diff, 0u) << "step " << step;
      max_q_diff = std::max(max_q_diff, q_diff);
      max_k_diff = std::max(max_k_diff, k_diff);
      if (k_diff == 0) {
        size_t bounds_differ = 0;
        for (size_t i = 0; i < bo.size(); ++i) bounds_differ += F(bo[i]) != F(bn[i]);
        EXPECT_EQ(bounds_differ, 0u) << "equal keys must give equal bounds (step " << step << ")";
      }
      cudaFree(qkv);
      cudaFree(positions_d);
      cudaFree(slots_d);
    }
    std::printf("[ gpu ] fused q|k|v epilogue (%s): q elements differing at most %zu, K cache %zu, V cache 0, "
                "Quest bounds = min/max of the cached keys\n",
                qk_norm ? "norm + RoPE" : "RoPE", max_q_diff, max_k_diff);
    for (void* p : std::vector<void*>{inv_freq, q_norm, k_norm, q_old, k_old, v_old, q_new, kc_old, vc_old, kc_new,
                                      vc_new, bounds_old, bounds_new, workspace}) {
      cudaFree(p);
    }
  }
}

TEST(FusedDecodeKernelsGpuTest, QuestBuildSparseIndicesEqualsExpandThenBuild) {
  SKIP_WITHOUT_GPUS(1);
  const int seqs = 3, hkv = 4, page = 16, pages_per_row = 6, sinks = 5, recent = 20;
  const int num_selected = pages_per_row * page;
  const int max_indices = sinks + num_selected + recent;
  const std::vector<int32_t> kv_lens = {300, 0, 97};  // 0: a non-member
  std::vector<int32_t> pages(seqs * hkv * pages_per_row);
  uint32_t x = 99;
  for (size_t i = 0; i < pages.size(); ++i) {
    x = x * 1664525u + 1013904223u;
    const int32_t row = static_cast<int32_t>(i / pages_per_row);
    const int32_t max_page = (kv_lens[row / hkv] + page - 1) / page;
    // Distinct pages per row, some −1 padding, some straddling the sinks / recent window / end.
    pages[i] = (x >> 9) % 7 == 0 || max_page == 0 ? -1 : static_cast<int32_t>((i % pages_per_row) * 3 + (x >> 20) % 3) % max_page;
  }
  for (int row = 0; row < seqs * hkv; ++row) {  // make each row's pages distinct
    for (int i = 0; i < pages_per_row; ++i) {
      for (int j = 0; j < i; ++j) {
        if (pages[row * pages_per_row + i] == pages[row * pages_per_row + j]) pages[row * pages_per_row + i] = -1;
      }
    }
  }
  int32_t* pages_d = Upload(pages);
  int32_t* kv_lens_d = Upload(kv_lens);
  int32_t *tokens_d = nullptr, *indices_old = nullptr, *indices_new = nullptr, *counts_old = nullptr,
          *counts_new = nullptr;
  ASSERT_EQ(cudaMalloc(&tokens_d, seqs * hkv * num_selected * 4), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&indices_old, seqs * hkv * max_indices * 4), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&indices_new, seqs * hkv * max_indices * 4), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&counts_old, seqs * hkv * 4), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&counts_new, seqs * hkv * 4), cudaSuccess);
  ASSERT_EQ(kc::QuestExpandPages(pages_d, seqs, hkv, pages_per_row, kv_lens_d, page, tokens_d, nullptr), cudaSuccess);
  ASSERT_EQ(kc::BuildSparseIndices(tokens_d, seqs, hkv, num_selected, kv_lens_d, sinks, recent, indices_old,
                                   max_indices, counts_old, nullptr),
            cudaSuccess);
  ASSERT_EQ(cuda_engine::QuestBuildSparseIndices(pages_d, seqs, hkv, pages_per_row, page, kv_lens_d, sinks, recent,
                                                 indices_new, max_indices, counts_new, nullptr),
            cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const auto io = Download(indices_old, seqs * hkv * max_indices), in = Download(indices_new, seqs * hkv * max_indices);
  const auto co = Download(counts_old, seqs * hkv), cn = Download(counts_new, seqs * hkv);
  EXPECT_EQ(cn, co);
  EXPECT_EQ(in, io);
  int64_t selected_positions = 0;
  for (int row = 0; row < seqs * hkv; ++row) selected_positions += co[row] - std::min(kv_lens[row / hkv], sinks + recent);
  EXPECT_GT(selected_positions, 0) << "the test lists should select something beyond sinks and window";
  for (void* p : std::vector<void*>{pages_d, kv_lens_d, tokens_d, indices_old, indices_new, counts_old, counts_new}) {
    cudaFree(p);
  }
}

// Whole steps: the same script with and without the fused kernels, dense and quest.
TEST(FusedDecodeKernelsGpuTest, StepsWithAndWithoutFusedKernelsAgree) {
  SKIP_WITHOUT_GPUS(1);
  const ModelConfig config = SmallQwen3Config();
  SparsePolicyConfig quest;
  quest.policy = SparsePolicy::kQuest;
  quest.budget = 32;
  quest.sinks = 4;
  quest.recent = 8;
  quest.quest_page_size = 16;
  SparsePolicyConfig dense;
  dense.policy = SparsePolicy::kDense;
  for (const SparsePolicyConfig* policy : {&dense, &quest}) {
    CudaModelRunnerOptions options = SmallRunnerOptions(64, 512);
    options.default_sparse = *policy;
    auto fused = CudaModelRunner::CreateWithRandomWeights(config, 37, options);
    ASSERT_TRUE(fused.ok()) << fused.status();
    options.fuse_decode_kernels = false;
    auto separate = CudaModelRunner::CreateWithRandomWeights(config, 37, options);
    ASSERT_TRUE(separate.ok()) << separate.status();
    bool unused = false;
    const std::vector<float> a = WarmScript(**fused, &unused);
    const std::vector<float> b = WarmScript(**separate, &unused);
    ASSERT_EQ(a.size(), b.size());
    const int vocab = config.vocab_size;
    double worst = 0.0;
    for (size_t r = 0; r * vocab < a.size(); ++r) {
      worst = std::max(worst, RelativeL2(a.data() + r * vocab, b.data() + r * vocab, vocab));
    }
    EXPECT_LE(worst, 5e-3);
    EXPECT_TRUE(AllFinite(a.data(), a.size()));
    if (policy == &quest) {
      EXPECT_GT((*fused)->TotalSparseCounters().sparse_layer_steps, 0);
      EXPECT_EQ((*fused)->TotalSparseCounters().sparse_layer_steps, (*separate)->TotalSparseCounters().sparse_layer_steps);
    }
    std::printf("[ gpu ] fused vs separate decode kernels (%s): max row rel L2 %.3g over %zu rows\n",
                policy == &quest ? "quest" : "dense", worst, a.size() / vocab);
  }
}

}  // namespace
}  // namespace asyncspade
