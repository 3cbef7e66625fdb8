// asyncspade-bench-decode: whole decode steps of the CUDA model runner at real model shapes with
// random weights and a synthetic KV cache (no checkpoint, no prefill). For each shape it reports
// the device time of one step (CUDA events around the step on rank 0; median over the timed steps
// after warm-up), the host wall time of Forward, the floor = minimal bytes moved / 4.28 TB/s, and,
// for quest and oracle, the per-stage breakdown from an eager profiling pass and the ratio to
// dense. Shapes whose KV cache does not fit are reported as infeasible, never shrunk.
//
//   asyncspade-bench-decode [--json FILE] [--reps N] [--warmup N] [--quick]
//                           [--sections warmup,step,dense,sparse,tp]
//
// Sections (docs/gpu_engine.md): warmup = CudaModelRunner::Warmup() of the Qwen3-8B runner (time,
// graphs); step = Qwen3-8B B=1 N=1K: graphs on and off, fused decode kernels on and off, the
// logits copied to the host vs tokens drawn on the device vs drawn on the host, with the eager
// per-stage profile of the fused and unfused step; dense = Qwen3-8B B=16 N=32K; sparse = quest,
// oracle (softmax_sum, the quality default) and oracle with sum aggregation (one key read) at
// budget 2048 against dense, B ∈ {1,16,32}, N ∈ {8K,32K}, plus dense and quest with the unfused
// kernels at B=1; tp = Qwen3-32B B=16 N=16K at TP=1 and (with two GPUs visible) TP=2.
//
// Variant column: "fused"/"unfused" = CudaModelRunnerOptions::fuse_decode_kernels; "dev-sample" =
// the token drawn on the device, no logits copied (what the engine now does); "host-sample" = the
// logits row copied and sampled with kernels::cpu::Sample (the engine before), included in
// wall_ms; both draw with temperature 0.7, top_p 0.95 (the host's full-vocabulary sort);
// ",no-pdl" = every kernel launched the ordinary way (kernels::cuda::SetProgrammaticLaunch, kernels/launch.h).
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/config/random_weight_presets.h"
#include "kernels/launch.h"
#include "kernels/sampling.h"
#include "nlohmann/json.hpp"
#include "services/decode_worker/model/cuda/cuda_model_runner.h"

namespace asyncspade {
namespace {

constexpr double kFloorBytesPerSecond = 4.28e12;  // H200 device-to-device copy, read + write
constexpr int kPage = 16;

struct Flags {
  std::string json;
  int reps = 30;
  int warmup = 5;
  bool quick = false;
  std::set<std::string> sections = {"warmup", "step", "dense", "sparse", "tp"};
};

bool ParseFlags(int argc, char** argv, Flags* flags) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> const char* { return i + 1 < argc ? argv[++i] : nullptr; };
    if (arg == "--json") {
      const char* v = value();
      if (v == nullptr) return false;
      flags->json = v;
    } else if (arg == "--reps") {
      const char* v = value();
      if (v == nullptr || (flags->reps = std::atoi(v)) < 20) {
        std::fprintf(stderr, "--reps must be at least 20\n");
        return false;
      }
    } else if (arg == "--warmup") {
      const char* v = value();
      if (v == nullptr || (flags->warmup = std::atoi(v)) < 2) {
        std::fprintf(stderr, "--warmup must be at least 2 (the second step captures the graph)\n");
        return false;
      }
    } else if (arg == "--quick") {
      flags->quick = true;
    } else if (arg == "--sections") {
      const char* v = value();
      if (v == nullptr) return false;
      flags->sections.clear();
      for (absl::string_view s : absl::StrSplit(v, ',', absl::SkipEmpty())) {
        const std::string name(s);
        if (name != "warmup" && name != "step" && name != "dense" && name != "sparse" && name != "tp") {
          std::fprintf(stderr, "unknown section '%s' (warmup, step, dense, sparse, tp)\n", name.c_str());
          return false;
        }
        flags->sections.insert(name);
      }
    } else {
      std::fprintf(stderr,
                   "usage: %s [--json FILE] [--reps N>=20] [--warmup N>=2] [--quick] "
                   "[--sections warmup,step,dense,sparse,tp]\n",
                   argv[0]);
      return false;
    }
  }
  return true;
}

double Median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct Row {
  std::string section, model, policy, note;
  std::string variant = "fused";
  int tp = 1, batch = 0, context = 0, budget = 0;
  bool graphs = true;
  bool feasible = true;  // false: not run (too large for the GPU, or `error`)
  bool error = false;    // a failure rather than a size limit
  double device_ms = 0, wall_ms = 0, floor_ms = 0, bytes = 0, weight_bytes = 0, kv_bytes = 0;
  double estimate_ms = -1, topk_ms = -1, attention_ms = -1, profiled_total_ms = -1;
  CudaStageTimes stages;  // the eager profile's medians (valid when estimate_ms >= 0)
  double vs_dense = 0;
};

// How a timed step hands its result back.
enum class Output {
  kLogits,      // the last logits row to the host (no token)
  kDeviceDraw,  // a token drawn on the device, no logits row copied
  kHostDraw,    // the logits row to the host, then kernels::cpu::Sample there (timed in wall_ms)
};

kernels::SamplingParams BenchSampling() {
  kernels::SamplingParams p;
  p.temperature = 0.7f;
  p.top_p = 0.95f;
  p.seed = 42;
  return p;
}

std::vector<Row> g_rows;

void PrintHeader() {
  std::printf("%-7s %-10s %2s %3s %6s %-7s %-3s %-11s %9s %9s %9s %6s %8s | %8s %8s %8s %8s | %7s\n", "section",
              "model", "tp", "B", "N", "policy", "cg", "variant", "step_ms", "wall_ms", "floor_ms", "xfloor",
              "GB_moved", "est_ms", "topk_ms", "attn_ms", "rest_ms", "/dense");
}

void PrintRow(const Row& r) {
  if (!r.feasible) {
    std::printf("%-7s %-10s %2d %3d %6d %-7s %-3s %-11s infeasible: %s\n", r.section.c_str(), r.model.c_str(), r.tp,
                r.batch, r.context, r.policy.c_str(), r.graphs ? "on" : "off", r.variant.c_str(), r.note.c_str());
    std::fflush(stdout);
    return;
  }
  char breakdown[128] = "       -        -        -        -";
  if (r.estimate_ms >= 0) {
    const double rest = r.device_ms - r.estimate_ms - r.topk_ms - r.attention_ms;
    std::snprintf(breakdown, sizeof(breakdown), "%8.3f %8.3f %8.3f %8.3f", r.estimate_ms, r.topk_ms, r.attention_ms,
                  rest);
  }
  char ratio[16] = "      -";
  if (r.vs_dense > 0) std::snprintf(ratio, sizeof(ratio), "%7.3f", r.vs_dense);
  std::printf("%-7s %-10s %2d %3d %6d %-7s %-3s %-11s %9.3f %9.3f %9.3f %6.2f %8.2f | %s | %s\n", r.section.c_str(),
              r.model.c_str(), r.tp, r.batch, r.context, r.policy.c_str(), r.graphs ? "on" : "off", r.variant.c_str(),
              r.device_ms, r.wall_ms, r.floor_ms, r.floor_ms > 0 ? r.device_ms / r.floor_ms : 0.0, r.bytes / 1e9,
              breakdown, ratio);
  if (r.estimate_ms >= 0) {
    const CudaStageTimes& t = r.stages;
    std::printf(
        "        eager profile (ms/step): gemm %.3f norm %.3f prep %.3f attn %.3f est %.3f topk %.3f act %.3f "
        "allreduce %.3f head+emb %.3f sample %.3f | total %.3f (graph step %.3f)\n",
        t.gemm_ms, t.norm_ms, t.prep_ms, t.attention_ms, t.estimate_ms, t.topk_ms, t.activation_ms, t.allreduce_ms,
        t.head_ms, t.sampling_ms, t.total_ms, r.device_ms);
  }
  std::fflush(stdout);
}

// The runner of one model with its KV cache, and B sequences filled to a context.
class Bench {
 public:
  Bench(std::string model, std::unique_ptr<CudaModelRunner> runner, const Flags& flags)
      : model_(std::move(model)), runner_(std::move(runner)), flags_(flags) {}

  CudaModelRunner& runner() { return *runner_; }
  // Whether the last failed Prepare() was an error rather than a cache too small for the shape.
  bool fill_failed() const { return fill_error_; }

  // Bytes of a K+V cache of `batch` sequences at `context` tokens, and the blocks it needs.
  int64_t BlocksFor(int batch, int context) const { return int64_t{batch} * ((context + kPage - 1) / kPage); }
  double KvBytes(int batch, int context) const {
    return double(batch) * context * runner_->config().num_layers * runner_->kv_bytes_per_token_per_layer();
  }

  // Minimal bytes one decode step moves: the weights once, plus what the policy must read of the
  // cache (dense: all K and V; oracle: all K to score them and the selected K/V; quest: the page
  // bounds and the selected K/V). Selected = sinks + budget + recent positions per KV head.
  double FloorBytes(int batch, int context, const SparsePolicyConfig& p) const {
    return double(runner_->step_weight_bytes()) + CacheBytes(batch, context, p);
  }

  // The floor in ms: the busiest GPU's share (its weight shard, 1/TP of the cache) at 4.28 TB/s.
  double FloorMs(int batch, int context, const SparsePolicyConfig& p) const {
    const int tp = runner_->tensor_parallel_size();
    size_t busiest = 0;
    for (int r = 0; r < tp; ++r) busiest = std::max(busiest, runner_->rank_step_weight_bytes(r));
    return (double(busiest) + CacheBytes(batch, context, p) / tp) / kFloorBytesPerSecond * 1e3;
  }

  // The cache part of FloorBytes.
  double CacheBytes(int batch, int context, const SparsePolicyConfig& p) const {
    const ModelConfig& c = runner_->config();
    const double kv_token = double(runner_->kv_bytes_per_token_per_layer());  // K + V
    const double layers = c.num_layers;
    if (p.policy == SparsePolicy::kDense || context <= p.SparseFromContext()) {
      return batch * layers * context * kv_token;
    }
    const double selected = std::min<double>(context, double(p.sinks) + p.budget + p.recent);
    double bytes = batch * layers * selected * kv_token;
    if (p.policy == SparsePolicy::kOracle) bytes += batch * layers * context * kv_token / 2;
    if (p.policy == SparsePolicy::kQuest) {
      const double pages = std::ceil(double(context) / kPage);
      bytes += batch * layers * pages * c.num_kv_heads * 2.0 * c.head_dim * 2.0;
    }
    return bytes;
  }

  // Fills `batch` sequences to context - 1 tokens (scattered blocks); the timed step decodes the
  // context-th token. False if the cache is too small.
  bool Prepare(int batch, int context, std::string* why) {
    fill_error_ = false;
    const int64_t needed = BlocksFor(batch, context);
    const int64_t have = runner_->kv_layout().num_blocks;
    if (needed > have) {
      *why = absl::StrCat("needs ", needed, " KV blocks (", KvBytes(batch, context) / 1e9,
                          " GB of K+V), the cache holds ", have, " (", double(runner_->kv_cache_bytes()) / 1e9, " GB)");
      return false;
    }
    const int blocks_per_seq = static_cast<int>(needed / batch);
    std::vector<int32_t> permutation(have);
    std::iota(permutation.begin(), permutation.end(), 0);
    std::mt19937 rng(batch * 131 + context);
    std::shuffle(permutation.begin(), permutation.end(), rng);
    tables_.assign(batch, {});
    for (int b = 0; b < batch; ++b) {
      tables_[b].assign(permutation.begin() + int64_t{b} * blocks_per_seq,
                        permutation.begin() + int64_t{b + 1} * blocks_per_seq);
    }
    std::vector<SyntheticKvSequence> seqs;
    for (int b = 0; b < batch; ++b) seqs.push_back({tables_[b], context - 1});
    const absl::Status filled = runner_->FillSyntheticKv(seqs, 1000 + context);
    if (!filled.ok()) {
      *why = absl::StrCat("synthetic KV fill failed: ", filled.message());
      fill_error_ = true;
      return false;
    }
    batch_ = batch;
    context_ = context;
    return true;
  }

  // Times the decode step of the prepared sequences with `policy`.
  Row Time(const std::string& section, const SparsePolicyConfig& policy, bool graphs, bool profile_stages,
           Output mode = Output::kLogits, bool fused = true, bool programmatic = true) {
    Row row;
    row.variant = mode == Output::kDeviceDraw ? "dev-sample"
                  : mode == Output::kHostDraw ? "host-sample"
                  : fused                     ? "fused"
                                              : "unfused";
    if (!fused) row.variant = "unfused";
    if (!programmatic) row.variant += ",no-pdl";
    if (policy.policy == SparsePolicy::kOracle && policy.aggregation == ScoreAggregation::kSum) {
      row.variant += ",sum";
    }
    absl::Status switched = runner_->set_fuse_decode_kernels(fused);
    if (switched.ok() && programmatic != kernels::cuda::ProgrammaticLaunch()) {
      kernels::cuda::SetProgrammaticLaunch(programmatic);
      switched = runner_->ClearGraphs();  // the captured graphs hold the other launch mode
    }
    if (!switched.ok()) {
      row.feasible = false;
      row.error = true;
      row.note = absl::StrCat("switching the fused kernels or the launch mode: ", switched.message());
      return row;
    }
    row.section = section;
    row.model = model_;
    row.tp = runner_->tensor_parallel_size();
    row.batch = batch_;
    row.context = context_;
    row.graphs = graphs;
    row.policy = std::string(SparsePolicyName(policy.policy));
    row.budget = policy.policy == SparsePolicy::kDense ? 0 : policy.budget;
    ForwardBatch forward;
    const std::vector<int32_t> token = {1000};
    const kernels::SamplingParams sampling = BenchSampling();
    for (int b = 0; b < batch_; ++b) {
      ForwardSequence fs;
      fs.sequence_id = b;
      fs.tokens = token;
      fs.start_position = context_ - 1;  // rewritten every step: the context stays fixed
      fs.block_table = tables_[b];
      fs.sparse = &policy;
      if (mode == Output::kDeviceDraw) {
        fs.logits = LogitsWanted::kNone;
        fs.sampling = &sampling;
      }
      forward.sequences.push_back(fs);
    }
    ForwardOutput output;
    runner_->set_cuda_graphs(graphs);
    std::vector<double> device, wall;
    std::vector<int32_t> drawn(batch_);
    std::vector<kernels::SamplingParams> host_params(batch_, sampling);
    std::vector<uint64_t> host_steps(batch_, 0);
    for (int i = 0; i < flags_.warmup + flags_.reps; ++i) {
      const auto start = std::chrono::steady_clock::now();
      absl::Status status = runner_->Forward(forward, &output);
      if (status.ok() && mode == Output::kHostDraw) {
        kernels::cpu::Sample(output.logits.data(), batch_, output.vocab_size, host_params.data(), host_steps.data(),
                             drawn.data());
      }
      if (status.ok() && mode == Output::kDeviceDraw &&
          (output.sampled_tokens.size() != static_cast<size_t>(batch_) || output.sampled_tokens[0] < 0)) {
        status = absl::InternalError("the runner returned no sampled tokens");
      }
      const auto end = std::chrono::steady_clock::now();
      if (!status.ok()) {
        row.feasible = false;
        row.error = true;
        row.note = absl::StrCat("forward failed: ", status.message());
        return row;
      }
      if (i < flags_.warmup) continue;
      device.push_back(runner_->last_step_device_ms());
      wall.push_back(std::chrono::duration<double, std::milli>(end - start).count());
    }
    row.device_ms = Median(device);
    row.wall_ms = Median(wall);
    row.bytes = FloorBytes(batch_, context_, policy);
    row.weight_bytes = double(runner_->step_weight_bytes());
    row.kv_bytes = row.bytes - row.weight_bytes;
    row.floor_ms = FloorMs(batch_, context_, policy);
    if (profile_stages) {
      runner_->set_stage_profiling(true);
      std::vector<std::vector<double>> stages(11);
      for (int i = 0; i < 2 + flags_.reps / 2; ++i) {
        if (!runner_->Forward(forward, &output).ok()) break;
        if (i < 2) continue;
        const CudaStageTimes& t = runner_->last_stage_times();
        const double values[] = {t.estimate_ms,   t.topk_ms,      t.attention_ms, t.gemm_ms,
                                 t.norm_ms,       t.prep_ms,      t.activation_ms, t.allreduce_ms,
                                 t.head_ms,       t.sampling_ms,  t.total_ms};
        for (int k = 0; k < 11; ++k) stages[k].push_back(values[k]);
      }
      runner_->set_stage_profiling(false);
      CudaStageTimes& m = row.stages;
      double* fields[] = {&m.estimate_ms, &m.topk_ms,       &m.attention_ms, &m.gemm_ms,
                          &m.norm_ms,     &m.prep_ms,       &m.activation_ms, &m.allreduce_ms,
                          &m.head_ms,     &m.sampling_ms,   &m.total_ms};
      for (int k = 0; k < 11; ++k) *fields[k] = Median(stages[k]);
      row.estimate_ms = m.estimate_ms;
      row.topk_ms = m.topk_ms;
      row.attention_ms = m.attention_ms;
      row.profiled_total_ms = m.total_ms;
    }
    return row;
  }

 private:
  std::string model_;
  std::unique_ptr<CudaModelRunner> runner_;
  const Flags& flags_;
  std::vector<std::vector<int32_t>> tables_;
  int batch_ = 0, context_ = 0;
  bool fill_error_ = false;
};

SparsePolicyConfig PolicyConfig(SparsePolicy policy) {
  SparsePolicyConfig p;  // deploy/h200.yaml's budget vocabulary
  p.policy = policy;
  p.budget = 2048;
  p.sinks = 16;
  p.recent = 64;
  return p;
}

void Emit(Row row) {
  PrintRow(row);
  g_rows.push_back(std::move(row));
}

// Null with `why` on failure; `out_of_memory` tells a model that does not fit from an error.
std::unique_ptr<CudaModelRunner> MakeRunner(const std::string& preset, const std::vector<int>& devices, int max_batch,
                                            int max_seq_len, int64_t blocks, bool sparse, std::string* why,
                                            bool* out_of_memory) {
  *out_of_memory = false;
  auto config = RandomWeightPresetModelConfig(preset);
  if (!config.ok()) {
    *why = std::string(config.status().message());
    return nullptr;
  }
  CudaModelRunnerOptions options;
  options.devices = devices;
  if (blocks > 0) {
    options.num_kv_blocks = blocks;
  } else {
    options.kv_memory_fraction = 0.92;
  }
  options.max_seq_len = max_seq_len;
  options.max_batch_size = max_batch;
  options.max_batch_tokens = max_batch;
  options.per_sequence_policies = sparse;
  options.quest_metadata = sparse;
  auto runner = CudaModelRunner::CreateWithRandomWeights(*config, 2025, options);
  if (!runner.ok()) {
    *why = std::string(runner.status().message());
    *out_of_memory = runner.status().code() == absl::StatusCode::kResourceExhausted;
    return nullptr;
  }
  return std::move(runner).value();
}

nlohmann::json g_warmup;  // the warm-up section's result, if run

void Qwen3_8B(const Flags& flags) {
  const bool any = flags.sections.count("step") || flags.sections.count("dense") || flags.sections.count("sparse") ||
                   flags.sections.count("warmup");
  if (!any) return;
  std::string why;
  bool out_of_memory = false;
  auto runner = MakeRunner("qwen3-8b", {0}, 32, 32768, 0, true, &why, &out_of_memory);
  if (runner == nullptr) {
    Row r{"all", "qwen3-8b", "-", absl::StrCat("creating the runner: ", why)};
    r.feasible = false;
    r.error = true;
    Emit(r);
    return;
  }
  std::printf("qwen3-8b: %.2f GB of weights read per step, KV cache %.1f GB (%d blocks) + Quest bounds %.1f GB\n",
              runner->step_weight_bytes() / 1e9, runner->kv_cache_bytes() / 1e9, runner->kv_layout().num_blocks,
              runner->quest_metadata_bytes() / 1e9);
  if (flags.sections.count("warmup")) {
    // Every decode graph of up to 32 sequences and 32K tokens (the runner's default policy is not
    // quest/oracle here, so dense ones), as a decode worker does at start-up.
    const absl::Status warmed = runner->Warmup();
    const CudaWarmupReport& w = runner->last_warmup();
    if (warmed.ok()) {
      std::printf("warmup  qwen3-8b: %d steps, %d decode graphs captured in %.3f s (max 32 sequences, 32K tokens)\n",
                  w.steps, w.graphs_captured, w.seconds);
      g_warmup = {{"steps", w.steps}, {"graphs", w.graphs_captured}, {"seconds", w.seconds}};
    } else {
      Row r{"warmup", "qwen3-8b", "dense", absl::StrCat("warm-up failed: ", warmed.message())};
      r.feasible = false;
      r.error = true;
      Emit(r);
    }
  }
  Bench bench("qwen3-8b", std::move(runner), flags);
  const SparsePolicyConfig dense = PolicyConfig(SparsePolicy::kDense);
  const SparsePolicyConfig quest = PolicyConfig(SparsePolicy::kQuest);
  const SparsePolicyConfig oracle = PolicyConfig(SparsePolicy::kOracle);
  SparsePolicyConfig oracle_sum = PolicyConfig(SparsePolicy::kOracle);
  oracle_sum.aggregation = ScoreAggregation::kSum;

  if (flags.sections.count("step")) {
    if (bench.Prepare(1, 1024, &why)) {
      Emit(bench.Time("step", dense, /*graphs=*/true, /*profile_stages=*/true));
      Emit(bench.Time("step", dense, /*graphs=*/true, /*profile_stages=*/true, Output::kLogits, /*fused=*/false));
      Emit(bench.Time("step", dense, /*graphs=*/true, /*profile_stages=*/false, Output::kLogits, /*fused=*/true,
                      /*programmatic=*/false));
      Emit(bench.Time("step", dense, /*graphs=*/false, false));
      Emit(bench.Time("step", dense, /*graphs=*/true, false, Output::kDeviceDraw));
      Emit(bench.Time("step", dense, /*graphs=*/true, false, Output::kHostDraw));
    } else {
      Row r{"step", "qwen3-8b", "dense", why};
      r.batch = 1;
      r.context = 1024;
      r.feasible = false;
      r.error = bench.fill_failed();
      Emit(r);
    }
  }
  if (flags.sections.count("dense")) {
    const int context = flags.quick ? 8192 : 32768;
    if (bench.Prepare(16, context, &why)) {
      Emit(bench.Time("dense", dense, true, false));
    } else {
      Row r{"dense", "qwen3-8b", "dense", why};
      r.batch = 16;
      r.context = context;
      r.feasible = false;
      r.error = bench.fill_failed();
      Emit(r);
    }
  }
  if (flags.sections.count("sparse")) {
    const std::vector<int> contexts = flags.quick ? std::vector<int>{8192} : std::vector<int>{8192, 32768};
    const std::vector<int> batches = flags.quick ? std::vector<int>{1, 16} : std::vector<int>{1, 16, 32};
    for (int context : contexts) {
      for (int batch : batches) {
        if (!bench.Prepare(batch, context, &why)) {
          for (const char* policy : {"dense", "quest", "oracle", "oracle"}) {
            Row r{"sparse", "qwen3-8b", policy, why};
            r.batch = batch;
            r.context = context;
            r.feasible = false;
            r.error = bench.fill_failed();
            Emit(r);
          }
          continue;
        }
        Row d = bench.Time("sparse", dense, true, true);
        Emit(d);
        for (const SparsePolicyConfig* p : std::vector<const SparsePolicyConfig*>{&quest, &oracle, &oracle_sum}) {
          Row r = bench.Time("sparse", *p, true, true);
          if (d.device_ms > 0) r.vs_dense = r.device_ms / d.device_ms;
          Emit(r);
        }
        if (batch == 1) {
          // Before / after the fused decode kernels, where their fixed cost per layer shows.
          Row du = bench.Time("sparse", dense, true, true, Output::kLogits, /*fused=*/false);
          Emit(du);
          Row qu = bench.Time("sparse", quest, true, true, Output::kLogits, /*fused=*/false);
          if (du.device_ms > 0) qu.vs_dense = qu.device_ms / du.device_ms;
          Emit(qu);
        }
      }
    }
  }
}

void Qwen3_32B_TensorParallel(const Flags& flags) {
  if (!flags.sections.count("tp")) return;
  const int batch = 16;
  const int context = flags.quick ? 4096 : 16384;
  const int64_t blocks = int64_t{batch} * (context / kPage);
  int gpus = 0;
  if (cudaGetDeviceCount(&gpus) != cudaSuccess) gpus = 0;
  double tp1_ms = 0.0;
  for (int tp : {1, 2}) {
    if (tp > gpus) {
      std::printf("tp: TP=%d skipped: %d GPU(s) visible\n", tp, gpus);
      continue;
    }
    std::vector<int> devices;
    for (int r = 0; r < tp; ++r) devices.push_back(r);
    std::string why;
    bool out_of_memory = false;
    auto runner = MakeRunner("qwen3-32b", devices, batch, context, blocks, /*sparse=*/false, &why, &out_of_memory);
    if (runner == nullptr) {
      Row r{"tp", "qwen3-32b", "dense",
            absl::StrCat(out_of_memory ? "does not fit in GPU memory: " : "creating the runner failed: ", why)};
      r.error = !out_of_memory;
      r.tp = tp;
      r.batch = batch;
      r.context = context;
      r.feasible = false;
      Emit(r);
      continue;
    }
    std::printf("qwen3-32b TP=%d: %.2f GB of weights read per step (all ranks), KV cache %.1f GB\n", tp,
                runner->step_weight_bytes() / 1e9, runner->kv_cache_bytes() / 1e9);
    Bench bench("qwen3-32b", std::move(runner), flags);
    if (!bench.Prepare(batch, context, &why)) {
      Row r{"tp", "qwen3-32b", "dense", why};
      r.tp = tp;
      r.batch = batch;
      r.context = context;
      r.feasible = false;
      r.error = bench.fill_failed();
      Emit(r);
      continue;
    }
    Row r = bench.Time("tp", PolicyConfig(SparsePolicy::kDense), true, false);
    if (tp == 1) tp1_ms = r.device_ms;
    if (tp == 2 && tp1_ms > 0) r.note = absl::StrCat("speed-up over TP=1: ", tp1_ms / r.device_ms);
    Emit(r);
    if (!r.note.empty()) std::printf("tp: %s\n", r.note.c_str());
  }
}

bool WriteJson(const std::string& path) {
  nlohmann::json rows = nlohmann::json::array();
  for (const Row& r : g_rows) {
    nlohmann::json j = {{"section", r.section},
                        {"model", r.model},
                        {"policy", r.policy},
                        {"budget", r.budget},
                        {"tp", r.tp},
                        {"batch", r.batch},
                        {"context", r.context},
                        {"cuda_graphs", r.graphs},
                        {"variant", r.variant},
                        {"feasible", r.feasible},
                        {"note", r.note}};
    if (r.feasible) {
      j["step_device_ms"] = r.device_ms;
      j["step_wall_ms"] = r.wall_ms;
      j["floor_bytes"] = r.bytes;
      j["floor_weight_bytes"] = r.weight_bytes;
      j["floor_kv_bytes"] = r.kv_bytes;
      j["floor_ms"] = r.floor_ms;
      j["times_floor"] = r.floor_ms > 0 ? r.device_ms / r.floor_ms : 0.0;
      if (r.estimate_ms >= 0) {
        j["stages_ms"] = {{"estimate", r.estimate_ms},
                          {"topk", r.topk_ms},
                          {"attention", r.attention_ms},
                          {"rest", r.device_ms - r.estimate_ms - r.topk_ms - r.attention_ms},
                          {"profiled_eager_total", r.profiled_total_ms}};
        j["eager_profile_ms"] = {{"gemm", r.stages.gemm_ms},         {"norm", r.stages.norm_ms},
                                 {"prep", r.stages.prep_ms},         {"attention", r.stages.attention_ms},
                                 {"estimate", r.stages.estimate_ms}, {"topk", r.stages.topk_ms},
                                 {"activation", r.stages.activation_ms}, {"allreduce", r.stages.allreduce_ms},
                                 {"head_and_embedding", r.stages.head_ms}, {"sampling", r.stages.sampling_ms},
                                 {"total", r.stages.total_ms}};
      }
      if (r.vs_dense > 0) j["ratio_to_dense"] = r.vs_dense;
    }
    rows.push_back(std::move(j));
  }
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  const nlohmann::json doc = {{"benchmark", "asyncspade-bench-decode"},
                              {"device", prop.name},
                              {"floor_bandwidth_tbps", kFloorBytesPerSecond / 1e12},
                              {"warmup", g_warmup},
                              {"results", rows}};
  FILE* f = std::fopen(path.c_str(), "w");
  if (f == nullptr) {
    std::fprintf(stderr, "FAIL: cannot write %s: %s\n", path.c_str(), std::strerror(errno));
    return false;
  }
  const std::string text = doc.dump(2);
  std::fwrite(text.data(), 1, text.size(), f);
  std::fclose(f);
  std::printf("wrote %s\n", path.c_str());
  return true;
}

}  // namespace
}  // namespace asyncspade

int main(int argc, char** argv) {
  using namespace asyncspade;  // NOLINT
  Flags flags;
  if (!ParseFlags(argc, argv, &flags)) return 2;
  int gpus = 0;
  if (cudaGetDeviceCount(&gpus) != cudaSuccess || gpus == 0) {
    std::fprintf(stderr, "FAIL: no CUDA device visible\n");
    return 1;
  }
  std::printf(
      "asyncspade-bench-decode: %d GPU(s); floor = minimal bytes / %.2f TB/s; step_ms = device time of one "
      "decode step (median of %d after %d warm-up); stages from an eager profiling pass\n",
      gpus, kFloorBytesPerSecond / 1e12, flags.reps, flags.warmup);
  PrintHeader();
  Qwen3_8B(flags);
  Qwen3_32B_TensorParallel(flags);
  if (!flags.json.empty() && !WriteJson(flags.json)) return 1;
  for (const Row& r : g_rows) {
    if (r.error) return 1;
  }
  return 0;
}
