// Helpers of the engine-level GPU tests (tests/gpu/model/, one binary: engine_gpu_test): device
// checks, a watchdog, small random model configs, runner construction, and greedy generation
// through the GenerationEngine with the top-1/top-2 margins of a reference.
#pragma once

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "common/model_config.h"
#include "services/decode_worker/engine/generation_engine.h"
#include "services/decode_worker/model/cpu_model_runner.h"
#include "services/decode_worker/model/cuda/cuda_model_runner.h"

namespace asyncspade::engine_gpu_testing {

inline int VisibleGpus() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return count;
}

#define SKIP_WITHOUT_GPUS(n)                                                                    \
  do {                                                                                          \
    const int asyncspade_gpus_ = ::asyncspade::engine_gpu_testing::VisibleGpus();               \
    if (asyncspade_gpus_ < (n)) {                                                               \
      GTEST_SKIP() << "needs " << (n) << " CUDA device(s), " << asyncspade_gpus_ << " visible"; \
    }                                                                                           \
  } while (0)

// Aborts the binary if it runs longer than `seconds` (a hung kernel or collective never returns).
class Watchdog : public ::testing::Environment {
 public:
  explicit Watchdog(int seconds) : seconds_(seconds) {}
  void SetUp() override {
    std::thread([seconds = seconds_] {
      std::this_thread::sleep_for(std::chrono::seconds(seconds));
      std::fprintf(stderr, "FAIL: watchdog: engine_gpu_test ran longer than %d s (hung kernel?)\n", seconds);
      std::fflush(stderr);
      std::_Exit(3);
    }).detach();
  }

 private:
  int seconds_;
};
inline ::testing::Environment* const kWatchdog = ::testing::AddGlobalTestEnvironment(new Watchdog(420));

// A small Qwen3-shaped config whose heads suit the tuned attention and selection kernels.
inline ModelConfig SmallQwen3Config(int head_dim = 128, int num_heads = 8, int num_kv_heads = 2, int num_layers = 2,
                                    int vocab = 1003) {
  ModelConfig c;
  c.arch = ModelArch::kQwen3;
  c.architecture = "Qwen3ForCausalLM";
  c.vocab_size = vocab;
  c.hidden_size = 512;
  c.intermediate_size = 1024;
  c.num_layers = num_layers;
  c.num_heads = num_heads;
  c.num_kv_heads = num_kv_heads;
  c.head_dim = head_dim;
  c.max_position_embeddings = 8192;
  c.rms_norm_eps = 1e-6;
  c.rope_theta = 1000000.0;
  c.qk_norm = true;
  c.bos_token_id = 1;
  c.eos_token_ids = {2};
  return c;
}

inline CudaModelRunnerOptions SmallRunnerOptions(int num_kv_blocks = 512, int max_seq_len = 4096) {
  CudaModelRunnerOptions o;
  o.num_kv_blocks = num_kv_blocks;
  o.max_seq_len = max_seq_len;
  o.max_batch_size = 8;
  o.max_batch_tokens = 1024;
  o.default_sparse.policy = SparsePolicy::kDense;
  return o;
}

// Deterministic token ids in [3, vocab) (never BOS/EOS of the test configs).
inline std::vector<int32_t> TokenIds(int n, int vocab, uint32_t seed) {
  std::vector<int32_t> ids(n);
  uint32_t x = seed * 2654435761u + 12345u;
  for (int i = 0; i < n; ++i) {
    x = x * 1664525u + 1013904223u;
    ids[i] = 3 + static_cast<int32_t>((x >> 8) % static_cast<uint32_t>(vocab - 3));
  }
  return ids;
}

inline double RelativeL2(const float* a, const float* ref, size_t n) {
  double diff = 0.0, norm = 0.0;
  for (size_t i = 0; i < n; ++i) {
    const double d = double(a[i]) - ref[i];
    diff += d * d;
    norm += double(ref[i]) * ref[i];
  }
  return norm > 0 ? std::sqrt(diff / norm) : std::sqrt(diff);
}

inline bool AllFinite(const float* a, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    if (!std::isfinite(a[i])) return false;
  }
  return true;
}

struct Top2 {
  int top1 = -1;
  double margin = 0.0;  // top-1 minus top-2
};
inline Top2 TopTwo(const float* row, int vocab) {
  int best = 0;
  for (int i = 1; i < vocab; ++i) {
    if (row[i] > row[best]) best = i;
  }
  double second = -INFINITY;
  for (int i = 0; i < vocab; ++i) {
    if (i != best) second = std::max(second, double(row[i]));
  }
  return {best, double(row[best]) - second};
}

inline double MaxAbs(const float* a, size_t n) {
  double m = 0.0;
  for (size_t i = 0; i < n; ++i) m = std::max(m, std::abs(double(a[i])));
  return m;
}

// One request's output through an engine.
struct EngineResult {
  std::vector<int32_t> tokens;
  std::vector<float> prompt_logits;
};

// Runs every request to completion on `engine` (submitted together, so they batch) and returns the
// outputs in request order. Greedy unless the requests say otherwise.
inline std::vector<EngineResult> RunEngine(GenerationEngine& engine, const std::vector<GenerationRequest>& requests) {
  std::vector<EngineResult> results(requests.size());
  for (size_t i = 0; i < requests.size(); ++i) {
    const absl::Status submitted = engine.Submit(static_cast<int64_t>(i), requests[i]);
    EXPECT_TRUE(submitted.ok()) << submitted;
  }
  int guard = 0;
  while (engine.HasWork() && guard++ < 100000) {
    auto events = engine.Step();
    EXPECT_TRUE(events.ok()) << events.status();
    if (!events.ok()) break;
    for (GenerationEvent& e : *events) {
      EngineResult& r = results[e.request_id];
      if (!e.prompt_logits.empty()) r.prompt_logits = std::move(e.prompt_logits);
      if (e.token_id) r.tokens.push_back(*e.token_id);
    }
  }
  return results;
}

inline GenerationRequest GreedyRequest(const std::vector<int32_t>& prompt, int max_tokens, bool prompt_logits = false) {
  GenerationRequest r;
  r.prompt_ids = prompt;
  r.max_tokens = max_tokens;
  r.ignore_eos = true;
  r.return_prompt_logits = prompt_logits;
  return r;
}

// Teacher-forced fp32 logits of every position of `ids` from the CPU runner (the reference).
inline std::vector<float> CpuScore(const std::shared_ptr<const CpuModelWeights>& weights,
                                   const std::vector<int32_t>& ids) {
  const int page = 16;
  auto runner = CpuModelRunner::Create(weights, {static_cast<int>(ids.size()) / page + 2, page});
  EXPECT_TRUE(runner.ok()) << runner.status();
  if (!runner.ok()) return {};
  auto engine = GenerationEngine::Create(std::move(runner).value(), {});
  EXPECT_TRUE(engine.ok()) << engine.status();
  if (!engine.ok()) return {};
  std::vector<EngineResult> r = RunEngine(**engine, {GreedyRequest(ids, 0, true)});
  return r[0].prompt_logits;
}

// Compares a GPU greedy continuation with the CPU's. Returns a one-line report; adds a failure if
// they diverge at a step whose CPU top-1/top-2 margin exceeds `margin_tolerance` (a divergence
// bf16 cannot explain).
inline std::string CheckGreedyAgainstCpu(const std::string& what, const std::shared_ptr<const CpuModelWeights>& weights,
                                         const std::vector<int32_t>& prompt, const std::vector<int32_t>& cpu,
                                         const std::vector<int32_t>& gpu, double margin_tolerance) {
  EXPECT_EQ(gpu.size(), cpu.size()) << what;
  size_t step = 0;
  while (step < cpu.size() && step < gpu.size() && cpu[step] == gpu[step]) ++step;
  char line[512];
  if (step == cpu.size() && gpu.size() == cpu.size()) {
    std::snprintf(line, sizeof(line), "%s: GPU greedy equals CPU for all %zu tokens", what.c_str(), cpu.size());
    return line;
  }
  // The CPU's margin at the first differing step: logits after prompt + cpu[0 .. step).
  std::vector<int32_t> prefix = prompt;
  prefix.insert(prefix.end(), cpu.begin(), cpu.begin() + step);
  const std::vector<float> logits = CpuScore(weights, prefix);
  const int vocab = weights->config().vocab_size;
  const Top2 top = TopTwo(logits.data() + (prefix.size() - 1) * vocab, vocab);
  std::snprintf(line, sizeof(line),
                "%s: GPU greedy diverges from CPU at step %zu of %zu (CPU %d, GPU %d); CPU top-1/top-2 margin "
                "there %.5f (tolerance %.5f)",
                what.c_str(), step, cpu.size(), cpu[step], step < gpu.size() ? gpu[step] : -1, top.margin,
                margin_tolerance);
  EXPECT_LE(top.margin, margin_tolerance) << line;
  return line;
}

}  // namespace asyncspade::engine_gpu_testing
