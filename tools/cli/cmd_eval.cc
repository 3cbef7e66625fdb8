// `asyncspade eval`: how well each sparse-attention policy approximates dense attention on one
// prompt, on the CPU reference engine. Two passes:
//
//  1. Teacher pass: dense greedy decoding of N tokens. At every decode step and layer, every
//     policy variant runs side by side on the same (dense) KV cache and queries, and is measured:
//       - recall: |selected ∩ reference| / |reference| per KV head, where the reference is the
//         exact top-`budget` of the current query's group attention mass (softmax over all keys,
//         summed over the group's heads) outside the sinks and recent window;
//       - rel_err: ‖o_policy − o_dense‖ / ‖o_dense‖ of the attention output of that token;
//       - q_cos (asyncspade): cosine of the predicted query for position t with the actual one.
//     Layer-steps a policy attends densely (short context, no selection yet) are not measured.
//  2. Driven pass (per variant, unless --no-drive): the policy drives greedy decoding for N
//     tokens; agreement with the dense tokens until the first divergence and overall.
//
// Flags that take lists (comma-separated) run the cartesian product of their values as variants;
// settings a policy does not use are not multiplied (dense has none; oracle and quest have no
// predictor).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/status.h"
#include "common/tokenizer/tokenizer.h"
#include "kernels/key_scoring.h"
#include "kernels/topk.h"
#include "nlohmann/json.hpp"
#include "services/decode_worker/engine/generation_engine.h"
#include "services/decode_worker/model/cpu_model_runner.h"
#include "services/decode_worker/model/dense_attention_stage.h"
#include "services/decode_worker/policy/local_selector_pool.h"
#include "services/decode_worker/policy/query_predictor.h"
#include "services/decode_worker/policy/sparse_attention_stage.h"
#include "tools/cli/args.h"
#include "tools/cli/commands.h"

namespace asyncspade::cli {
namespace {

using Clock = std::chrono::steady_clock;

constexpr int kPageSize = 16;
constexpr int64_t kSequenceId = 1;

const std::vector<FlagSpec>& EvalFlags() {
  static const std::vector<FlagSpec> flags = {
      {"model", true, "model directory (HF layout: config.json, *.safetensors, tokenizer.json)"},
      {"policy", true, "policies, comma-separated: dense, quest, oracle, asyncspade (default asyncspade)"},
      {"budget", true, "selected tokens per (layer, KV head), comma-separated list (default 64)"},
      {"tokens", true, "tokens to decode in each pass (default 64)"},
      {"prompt", true, "prompt text; the tokenizer adds its special tokens (e.g. BOS)"},
      {"prompt-ids", true, "prompt as comma-separated token ids"},
      {"prompt-file", true, "prompt text read from a file"},
      {"prompt-ids-file", true, "prompt token ids (comma/space separated) read from a file"},
      {"prompt-repeat", true, "repeat a text prompt this many times (default 1)"},
      {"prompt-max-tokens", true, "keep only the first N tokens of the prompt (before --extend-prompt)"},
      {"extend-prompt", true, "append this many tokens sampled from the model (dense) to the prompt"},
      {"extend-temperature", true, "sampling temperature of --extend-prompt (default 0.8)"},
      {"seed", true, "sampling seed of --extend-prompt (default 0)"},
      {"save-prompt-ids", true, "write the final prompt's ids to this file (reuse with --prompt-ids-file)"},
      {"sinks", true, "S: first tokens always attended (default 4)"},
      {"recent", true, "R: last tokens always attended (default 64)"},
      {"predictor", true,
       "asyncspade predictors, comma-separated: ridge (per head), shared (ridge_shared), last_query (default shared)"},
      {"lags", true, "ridge lags p, comma-separated, each 1..4 (default 4)"},
      {"rope", true, "ridge regression space, comma-separated: pre, post (default pre)"},
      {"window", true, "predictor window W (default 16)"},
      {"ridge-epsilon", true, "relative ridge ε (default 1e-3)"},
      {"aggregation", true, "query-group score aggregation, comma-separated: sum, max, softmax_sum (default softmax_sum)"},
      {"delay-steps", true, "asyncspade: extra steps before a selection is visible (default 0)"},
      {"no-drive", false, "skip the driven pass (token agreement)"},
      {"json", true, "write the results as JSON to this file"},
      {"help", false, "show this help"},
  };
  return flags;
}

constexpr char kSynopsis[] =
    "--model DIR --policy P[,P..] --budget K[,K..] [--tokens N] (--prompt TEXT | --prompt-ids 1,2,3 | "
    "--prompt-file F | --prompt-ids-file F) [--prompt-repeat N] [--prompt-max-tokens N] [--extend-prompt N] [--sinks S] [--recent R] "
    "[--predictor ridge|shared|last_query[,..]] [--lags p[,..]] [--rope post|pre[,..]] [--window W] "
    "[--aggregation sum|max|softmax_sum[,..]] [--delay-steps D] [--no-drive] [--json FILE]";

struct Variant {
  SparsePolicy policy = SparsePolicy::kDense;
  int budget = 0;
  ScoreAggregation aggregation = ScoreAggregation::kSum;
  QueryPredictorOptions predictor;  // asyncspade only

  std::string PredictorName() const { return policy == SparsePolicy::kAsyncSpade ? predictor.Name() : "-"; }
  std::string Name() const {
    return absl::StrCat(std::string(SparsePolicyName(policy)), " k=", budget, " ", PredictorName(), " ",
                        std::string(ScoreAggregationName(aggregation)));
  }
};

struct EvalOptions {
  std::string model_dir;
  std::optional<std::string> prompt, prompt_ids, prompt_file, prompt_ids_file, save_prompt_ids;
  int prompt_repeat = 1;
  int prompt_max_tokens = 0;  // 0: all
  int extend_prompt = 0;
  float extend_temperature = 0.8f;
  uint64_t seed = 0;
  int tokens = 64;
  int sinks = 4;
  int recent = 64;
  int delay_steps = 0;
  bool drive = true;
  std::optional<std::string> json_path;
  std::vector<Variant> variants;
};

std::vector<std::string> SplitList(const std::string& text) {
  std::vector<std::string> out;
  for (absl::string_view piece : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    out.emplace_back(absl::StripAsciiWhitespace(piece));
  }
  return out;
}

absl::StatusOr<std::vector<int>> IntList(const Args& args, const std::string& flag, int fallback, int min_value) {
  std::vector<int> out;
  if (!args.Has(flag)) return std::vector<int>{fallback};
  for (const std::string& piece : SplitList(*args.Get(flag))) {
    int value = 0;
    if (!absl::SimpleAtoi(piece, &value) || value < min_value) {
      return absl::InvalidArgumentError(absl::StrCat("--", flag, ": '", piece, "' is not an integer >= ", min_value));
    }
    out.push_back(value);
  }
  if (out.empty()) return absl::InvalidArgumentError(absl::StrCat("--", flag, " is empty"));
  return out;
}

absl::StatusOr<int> IntFlag(const Args& args, const std::string& flag, int fallback, int min_value) {
  ASSIGN_OR_RETURN(std::optional<int64_t> value, args.GetInt(flag));
  if (!value) return fallback;
  if (*value < min_value || *value > std::numeric_limits<int>::max()) {
    return absl::InvalidArgumentError(absl::StrCat("--", flag, " must be >= ", min_value, ", got ", *value));
  }
  return static_cast<int>(*value);
}

absl::StatusOr<EvalOptions> ParseEvalOptions(const Args& args) {
  EvalOptions o;
  if (!args.positional().empty()) {
    return absl::InvalidArgumentError(absl::StrCat("unexpected argument '", args.positional()[0],
                                                   "' (quote the prompt: --prompt \"...\")"));
  }
  if (!args.Has("model")) return absl::InvalidArgumentError("--model DIR is required");
  o.model_dir = *args.Get("model");
  o.prompt = args.Get("prompt");
  o.prompt_ids = args.Get("prompt-ids");
  o.prompt_file = args.Get("prompt-file");
  o.prompt_ids_file = args.Get("prompt-ids-file");
  o.save_prompt_ids = args.Get("save-prompt-ids");
  if (int(o.prompt.has_value()) + int(o.prompt_ids.has_value()) + int(o.prompt_file.has_value()) +
          int(o.prompt_ids_file.has_value()) != 1) {
    return absl::InvalidArgumentError("give exactly one of --prompt, --prompt-ids, --prompt-file or --prompt-ids-file");
  }
  ASSIGN_OR_RETURN(o.prompt_repeat, IntFlag(args, "prompt-repeat", 1, 1));
  ASSIGN_OR_RETURN(o.prompt_max_tokens, IntFlag(args, "prompt-max-tokens", 0, 1));
  ASSIGN_OR_RETURN(o.extend_prompt, IntFlag(args, "extend-prompt", 0, 0));
  ASSIGN_OR_RETURN(std::optional<double> temperature, args.GetDouble("extend-temperature"));
  if (temperature) {
    if (*temperature < 0) return absl::InvalidArgumentError("--extend-temperature must be >= 0");
    o.extend_temperature = static_cast<float>(*temperature);
  }
  ASSIGN_OR_RETURN(int seed, IntFlag(args, "seed", 0, 0));
  o.seed = static_cast<uint64_t>(seed);
  ASSIGN_OR_RETURN(o.tokens, IntFlag(args, "tokens", 64, 1));
  ASSIGN_OR_RETURN(o.sinks, IntFlag(args, "sinks", 4, 0));
  ASSIGN_OR_RETURN(o.recent, IntFlag(args, "recent", 64, 1));
  ASSIGN_OR_RETURN(o.delay_steps, IntFlag(args, "delay-steps", 0, 0));
  ASSIGN_OR_RETURN(int window, IntFlag(args, "window", 16, 2));
  ASSIGN_OR_RETURN(std::optional<double> epsilon, args.GetDouble("ridge-epsilon"));
  o.drive = !args.Has("no-drive");
  o.json_path = args.Get("json");

  std::vector<SparsePolicy> policies;
  for (const std::string& name : SplitList(args.GetOr("policy", "asyncspade"))) {
    ASSIGN_OR_RETURN(SparsePolicy policy, ParseSparsePolicy(name));
    policies.push_back(policy);
  }
  ASSIGN_OR_RETURN(std::vector<int> budgets, IntList(args, "budget", 64, 1));
  ASSIGN_OR_RETURN(std::vector<int> lags, IntList(args, "lags", QueryPredictorOptions{}.lags, 1));
  std::vector<ScoreAggregation> aggregations;
  for (const std::string& name : SplitList(args.GetOr("aggregation", "softmax_sum"))) {
    absl::StatusOr<ScoreAggregation> parsed = ParseScoreAggregation(name);
    if (!parsed.ok()) return Annotate(parsed.status(), "--aggregation");
    aggregations.push_back(*parsed);
  }
  std::vector<kernels::QueryPredictionMode> modes;
  for (const std::string& name : SplitList(args.GetOr("predictor", "shared"))) {
    if (name == "ridge") {
      modes.push_back(kernels::QueryPredictionMode::kRidgePerHead);
    } else if (name == "shared" || name == "ridge_shared") {
      modes.push_back(kernels::QueryPredictionMode::kRidgeSharedPerLayer);
    } else if (name == "last_query") {
      modes.push_back(kernels::QueryPredictionMode::kLastQuery);
    } else {
      return absl::InvalidArgumentError(absl::StrCat("--predictor: unknown value '", name, "'; use ridge, shared or last_query"));
    }
  }
  std::vector<QueryPredictorRope> spaces;
  for (const std::string& name : SplitList(args.GetOr("rope", "pre"))) {
    if (name == "post") {
      spaces.push_back(QueryPredictorRope::kPost);
    } else if (name == "pre") {
      spaces.push_back(QueryPredictorRope::kPre);
    } else {
      return absl::InvalidArgumentError(absl::StrCat("--rope: unknown value '", name, "'; use post or pre"));
    }
  }

  std::vector<std::string> seen;
  auto add = [&](const Variant& v) {
    if (std::find(seen.begin(), seen.end(), v.Name()) != seen.end()) return;
    seen.push_back(v.Name());
    o.variants.push_back(v);
  };
  for (SparsePolicy policy : policies) {
    for (int budget : budgets) {
      Variant v;
      v.policy = policy;
      v.budget = budget;
      if (policy == SparsePolicy::kDense) {
        add(v);
        continue;
      }
      for (ScoreAggregation aggregation : aggregations) {
        v.aggregation = aggregation;
        if (policy != SparsePolicy::kAsyncSpade) {
          add(v);
          continue;
        }
        for (kernels::QueryPredictionMode mode : modes) {
          for (int p : lags) {
            for (QueryPredictorRope space : spaces) {
              v.predictor = QueryPredictorOptions{};
              v.predictor.window = window;
              v.predictor.lags = mode == kernels::QueryPredictionMode::kLastQuery ? 1 : p;
              v.predictor.mode = mode;
              v.predictor.space = mode == kernels::QueryPredictionMode::kLastQuery ? QueryPredictorRope::kPost : space;
              if (epsilon) v.predictor.ridge_epsilon = *epsilon;
              RETURN_IF_ERROR(Annotate(v.predictor.Validate(), "predictor flags"));
              add(v);
            }
          }
        }
      }
    }
  }
  return o;
}

SparsePolicyConfig ConfigFor(const Variant& v, const EvalOptions& o) {
  SparsePolicyConfig config;
  config.policy = v.policy;
  config.budget = v.budget;
  config.sinks = o.sinks;
  config.recent = o.recent;
  config.quest_page_size = kPageSize;
  config.aggregation = v.aggregation;
  config.predictor.window = v.predictor.window;
  config.predictor.lags = v.predictor.lags;
  config.predictor.ridge_epsilon = v.predictor.ridge_epsilon;
  return config;
}

// ---------------------------------------------------------------------------------------------
// Teacher pass
// ---------------------------------------------------------------------------------------------

struct Mean {
  double sum = 0;
  int64_t n = 0;
  void Add(double x) {
    sum += x;
    ++n;
  }
  void Add(const Mean& m) {
    sum += m.sum;
    n += m.n;
  }
  double value() const { return n > 0 ? sum / double(n) : std::numeric_limits<double>::quiet_NaN(); }
};

double Cosine(const float* a, const float* b, int n) {
  double dot = 0, na = 0, nb = 0;
  for (int i = 0; i < n; ++i) {
    dot += double(a[i]) * b[i];
    na += double(a[i]) * a[i];
    nb += double(b[i]) * b[i];
  }
  return na > 0 && nb > 0 ? dot / std::sqrt(na * nb) : 0.0;
}

// Mean over heads of the cosine of two [heads, d] queries.
double HeadCosine(const float* a, const float* b, int heads, int d) {
  double sum = 0;
  for (int h = 0; h < heads; ++h) sum += Cosine(a + size_t(h) * d, b + size_t(h) * d, d);
  return sum / heads;
}

// One policy variant running beside the dense teacher, measured at every decode step.
class VariantProbe : public SparseAttentionObserver {
 public:
  static absl::StatusOr<std::unique_ptr<VariantProbe>> Create(const ModelConfig& model, const Variant& variant,
                                                              const EvalOptions& o) {
    auto probe = std::unique_ptr<VariantProbe>(new VariantProbe(model, variant, ConfigFor(variant, o)));
    if (variant.policy == SparsePolicy::kAsyncSpade) {
      ASSIGN_OR_RETURN(probe->pool_, LocalSelectorPool::Create(PoolOptions(model, variant, o)));
    }
    SparseAttentionStageOptions options;
    options.default_config = probe->config_;
    options.predictor = variant.predictor;
    options.compute_dense_rows = false;
    options.selector_pool = probe->pool_.get();
    options.observer = probe.get();
    ASSIGN_OR_RETURN(probe->stage_, SparseAttentionStage::Create(model, options));
    probe->recall_.resize(model.num_layers);
    probe->rel_error_.resize(model.num_layers);
    probe->cosine_.resize(model.num_layers);
    probe->predictions_.resize(model.num_layers);
    return probe;
  }

  static LocalSelectorPoolOptions PoolOptions(const ModelConfig& model, const Variant& variant, const EvalOptions& o) {
    LocalSelectorPoolOptions pool;
    pool.shape = {model.num_layers, model.num_heads, model.num_kv_heads, model.head_dim, kPageSize};
    pool.params.budget = variant.budget;
    pool.params.sinks = o.sinks;
    pool.params.recent = o.recent;
    pool.params.aggregation = KernelAggregation(variant.aggregation);
    pool.delay_steps = o.delay_steps;
    return pool;
  }

  void OnQkv(int layer, const AttentionBatchLayout& layout, const QkvView& qkv) {
    const size_t q_floats = size_t(qkv.num_q_heads) * qkv.head_dim;
    for (int b = 0; b < layout.num_seqs; ++b) {
      const int r0 = layout.q_indptr[b];
      if (layout.q_indptr[b + 1] - r0 != 1) continue;
      auto& [position, predicted] = predictions_[layer];
      if (!predicted.empty() && position == layout.positions[r0]) {
        cosine_[layer].Add(HeadCosine(predicted.data(), qkv.q + r0 * q_floats, qkv.num_q_heads, qkv.head_dim));
      }
    }
    stage_->OnQkv(layer, layout, qkv);
  }

  void Attend(int layer, const AttentionBatchLayout& layout, const QkvView& qkv, const LayerKvCache& cache,
              float scale, const float* dense_out) {
    const size_t q_floats = size_t(qkv.num_q_heads) * qkv.head_dim;
    out_.resize(size_t(layout.num_tokens) * q_floats);
    records_.clear();
    const absl::Status attended = stage_->Attend(layer, layout, qkv, cache, scale, out_.data());
    if (!attended.ok()) {
      error_ = attended;
      return;
    }
    for (const Record& record : records_) {
      const int b = static_cast<int>(std::find(layout.sequence_ids.begin(), layout.sequence_ids.end(),
                                               record.sequence_id) - layout.sequence_ids.begin());
      const int r0 = layout.q_indptr[b];
      double diff = 0, norm = 0;
      for (size_t i = 0; i < q_floats; ++i) {
        const double x = out_[r0 * q_floats + i], y = dense_out[r0 * q_floats + i];
        diff += (x - y) * (x - y);
        norm += y * y;
      }
      rel_error_[layer].Add(norm > 0 ? std::sqrt(diff / norm) : 0.0);
      recall_[layer].Add(Recall(layout, b, qkv, cache, scale, record));
    }
  }

  void OnSparseAttend(const SparseAttendRecord& r) override {
    records_.push_back({r.sequence_id, r.num_selected,
                        std::vector<int32_t>(r.selected, r.selected + size_t(r.num_kv_heads) * r.num_selected)});
  }
  void OnPrediction(int64_t sequence_id, int layer, int32_t position, const float* predicted) override {
    predictions_[layer].first = position;
    predictions_[layer].second.assign(predicted, predicted + size_t(model_.num_heads) * model_.head_dim);
  }

  const Variant& variant() const { return variant_; }
  const SparsePolicyConfig& config() const { return config_; }
  const absl::Status& error() const { return error_; }
  SparseAttentionCounters counters() const { return stage_->TotalCounters(); }
  const std::vector<Mean>& recall() const { return recall_; }
  const std::vector<Mean>& rel_error() const { return rel_error_; }
  const std::vector<Mean>& cosine() const { return cosine_; }

 private:
  struct Record {
    int64_t sequence_id;
    int num_selected;
    std::vector<int32_t> selected;
  };

  VariantProbe(const ModelConfig& model, const Variant& variant, const SparsePolicyConfig& config)
      : model_(model), variant_(variant), config_(config) {}

  // Mean over KV heads of |selected ∩ reference| / |reference|.
  double Recall(const AttentionBatchLayout& layout, int b, const QkvView& qkv, const LayerKvCache& cache, float scale,
                const Record& record) {
    const int hkv = qkv.num_kv_heads;
    const int32_t kv_len = layout.kv_lens[b];
    kernels::KeyScoringParams params;
    params.scale = scale;
    params.sinks = config_.sinks;
    params.recent_exclude = config_.recent;
    params.aggregation = kernels::GroupAggregation::kSoftmaxSum;
    scores_.resize(size_t(hkv) * kv_len);
    kernels::cpu::ScoreKeys(qkv.q + layout.q_indptr[b] * size_t(qkv.num_q_heads) * qkv.head_dim, 1,
                            qkv.num_q_heads, &kv_len, kv_len,
                            layout.block_tables.data() + size_t(b) * layout.max_blocks_per_seq,
                            layout.max_blocks_per_seq, cache.layout, cache.k, params, scores_.data(), kv_len);
    reference_.resize(size_t(hkv) * config_.budget);
    kernels::cpu::TopK(scores_.data(), hkv, kv_len, nullptr, kv_len, config_.budget, reference_.data(), nullptr);
    double sum = 0;
    int heads = 0;
    for (int h = 0; h < hkv; ++h) {
      const int32_t* sel = record.selected.data() + size_t(h) * record.num_selected;
      std::vector<int32_t> chosen(sel, sel + record.num_selected);
      std::sort(chosen.begin(), chosen.end());
      int found = 0, wanted = 0;
      for (int i = 0; i < config_.budget; ++i) {
        const int32_t p = reference_[size_t(h) * config_.budget + i];
        if (p < 0) continue;
        ++wanted;
        if (std::binary_search(chosen.begin(), chosen.end(), p)) ++found;
      }
      if (wanted == 0) continue;
      sum += double(found) / wanted;
      ++heads;
    }
    return heads > 0 ? sum / heads : 1.0;
  }

  const ModelConfig model_;
  const Variant variant_;
  const SparsePolicyConfig config_;
  std::unique_ptr<LocalSelectorPool> pool_;
  std::unique_ptr<SparseAttentionStage> stage_;
  absl::Status error_;
  std::vector<Mean> recall_, rel_error_, cosine_;  // per layer
  std::vector<std::pair<int32_t, std::vector<float>>> predictions_;  // per layer: (position, query)
  std::vector<Record> records_;  // this layer's sparse rows
  std::vector<float> out_, scores_;
  std::vector<int32_t> reference_;
};

// The attention stage of the teacher pass: dense attention drives the model; the probes watch.
// The engine owns the stage, so what it measures itself goes to `last_query_cosine` (per layer:
// the cosine of consecutive actual queries, i.e. what predicting "the last query" achieves),
// which the caller owns.
class TeacherStage : public AttentionStage {
 public:
  TeacherStage(const ModelConfig& model, std::vector<VariantProbe*> probes, std::vector<Mean>* last_query_cosine)
      : probes_(std::move(probes)), last_query_(model.num_layers), last_query_cosine_(*last_query_cosine) {
    last_query_cosine_.assign(model.num_layers, Mean{});
  }

  void OnQkv(int layer, const AttentionBatchLayout& layout, const QkvView& qkv) override {
    // Each probe runs its own policy: drop the engine's per-sequence settings.
    probe_layout_ = layout;
    probe_layout_.sparse.assign(layout.num_seqs, nullptr);
    const size_t q_floats = size_t(qkv.num_q_heads) * qkv.head_dim;
    if (layout.num_seqs == 1) {
      const int n = layout.q_indptr[1];
      const float* newest = qkv.q + (n - 1) * q_floats;
      if (n == 1 && !last_query_[layer].empty()) {
        last_query_cosine_[layer].Add(HeadCosine(last_query_[layer].data(), newest, qkv.num_q_heads, qkv.head_dim));
      }
      last_query_[layer].assign(newest, newest + q_floats);
    }
    for (VariantProbe* probe : probes_) probe->OnQkv(layer, probe_layout_, qkv);
  }

  absl::Status Attend(int layer, const AttentionBatchLayout& layout, const QkvView& qkv, const LayerKvCache& cache,
                      float scale, float* out) override {
    RETURN_IF_ERROR(dense_.Attend(layer, layout, qkv, cache, scale, out));
    for (VariantProbe* probe : probes_) {
      probe->Attend(layer, probe_layout_, qkv, cache, scale, out);
      if (!probe->error().ok()) return Annotate(probe->error(), probe->variant().Name());
    }
    return absl::OkStatus();
  }

 private:
  DenseAttentionStage dense_;
  std::vector<VariantProbe*> probes_;
  AttentionBatchLayout probe_layout_;
  std::vector<std::vector<float>> last_query_;
  std::vector<Mean>& last_query_cosine_;
};

// ---------------------------------------------------------------------------------------------
// Generation helpers
// ---------------------------------------------------------------------------------------------

absl::StatusOr<std::vector<int32_t>> Generate(std::shared_ptr<const CpuModelWeights> weights,
                                              std::unique_ptr<AttentionStage> stage, const SparsePolicyConfig& sparse,
                                              const std::vector<int32_t>& prompt, int tokens,
                                              const kernels::SamplingParams& sampling,
                                              SparseAttentionCounters* counters = nullptr) {
  CpuModelRunnerOptions runner_options;
  runner_options.page_size = kPageSize;
  runner_options.num_kv_blocks = static_cast<int>((prompt.size() + tokens) / kPageSize + 2);
  ASSIGN_OR_RETURN(std::unique_ptr<CpuModelRunner> runner,
                   CpuModelRunner::Create(std::move(weights), runner_options, std::move(stage)));
  GenerationEngineOptions engine_options;
  engine_options.max_batch_size = 1;
  engine_options.max_batch_tokens = 1024;
  engine_options.sparse_default = sparse;
  ASSIGN_OR_RETURN(std::unique_ptr<GenerationEngine> engine, GenerationEngine::Create(std::move(runner), engine_options));
  GenerationRequest request;
  request.prompt_ids = prompt;
  request.max_tokens = tokens;
  request.sampling = sampling;
  request.ignore_eos = true;
  RETURN_IF_ERROR(engine->Submit(kSequenceId, std::move(request)));
  std::vector<int32_t> generated;
  while (engine->HasWork()) {
    ASSIGN_OR_RETURN(std::vector<GenerationEvent> events, engine->Step());
    for (const GenerationEvent& e : events) {
      if (e.token_id) generated.push_back(*e.token_id);
      if (e.finished && counters != nullptr) *counters = e.sparse_stats;
    }
  }
  return generated;
}

absl::StatusOr<std::vector<int32_t>> ReadIdsFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read --prompt-ids-file '", path, "'"));
  std::stringstream text;
  text << in.rdbuf();
  std::string joined = text.str();
  std::replace_if(joined.begin(), joined.end(), [](char c) { return c == '\n' || c == ' ' || c == '\t' || c == '\r'; }, ',');
  ASSIGN_OR_RETURN(std::vector<int32_t> ids, ParseIdList(joined));
  if (ids.empty()) return absl::InvalidArgumentError(absl::StrCat("--prompt-ids-file '", path, "' holds no ids"));
  return ids;
}

absl::StatusOr<std::vector<int32_t>> BuildPrompt(const EvalOptions& o, const std::shared_ptr<const CpuModelWeights>& weights,
                                                 const Tokenizer* tokenizer) {
  std::vector<int32_t> ids;
  if (o.prompt_ids) {
    ASSIGN_OR_RETURN(ids, ParseIdList(*o.prompt_ids));
  } else if (o.prompt_ids_file) {
    ASSIGN_OR_RETURN(ids, ReadIdsFile(*o.prompt_ids_file));
  } else {
    std::string text;
    if (o.prompt) {
      text = *o.prompt;
    } else {
      std::ifstream in(*o.prompt_file);
      if (!in) return absl::NotFoundError(absl::StrCat("cannot read --prompt-file '", *o.prompt_file, "'"));
      std::stringstream content;
      content << in.rdbuf();
      text = content.str();
    }
    std::string repeated = text;
    for (int i = 1; i < o.prompt_repeat; ++i) absl::StrAppend(&repeated, "\n\n", text);
    if (tokenizer == nullptr) return absl::FailedPreconditionError("a text prompt needs the model's tokenizer");
    ids = tokenizer->Encode(repeated, /*add_special_tokens=*/true);
  }
  if (ids.empty()) return absl::InvalidArgumentError("the prompt is empty");
  if (o.prompt_max_tokens > 0 && static_cast<int>(ids.size()) > o.prompt_max_tokens) ids.resize(o.prompt_max_tokens);
  if (o.extend_prompt > 0) {
    kernels::SamplingParams sampling;
    sampling.temperature = o.extend_temperature;
    sampling.seed = o.seed;
    SparsePolicyConfig dense;
    dense.policy = SparsePolicy::kDense;
    ASSIGN_OR_RETURN(std::vector<int32_t> more, Generate(weights, nullptr, dense, ids, o.extend_prompt, sampling));
    ids.insert(ids.end(), more.begin(), more.end());
  }
  return ids;
}

// ---------------------------------------------------------------------------------------------
// The command
// ---------------------------------------------------------------------------------------------

double MeanOf(const std::vector<Mean>& per_layer) {
  Mean all;
  for (const Mean& m : per_layer) all.Add(m);
  return all.value();
}

nlohmann::json PerLayer(const std::vector<Mean>& per_layer) {
  nlohmann::json out = nlohmann::json::array();
  for (const Mean& m : per_layer) {
    out.push_back(m.n > 0 ? nlohmann::json(m.value()) : nlohmann::json(nullptr));
  }
  return out;
}

nlohmann::json NumberOrNull(double x) { return std::isnan(x) ? nlohmann::json(nullptr) : nlohmann::json(x); }

std::string Fmt(double x, const char* format = "%.4f") {
  return std::isnan(x) ? std::string("-") : absl::StrFormat(format, x);
}

int Eval(const EvalOptions& o) {
  auto fail = [](const absl::Status& s) {
    std::fprintf(stderr, "asyncspade eval: %s\n", std::string(s.message()).c_str());
    return 1;
  };
  std::error_code ec;
  if (!std::filesystem::is_directory(o.model_dir, ec)) {
    return fail(absl::NotFoundError(absl::StrCat("model directory '", o.model_dir, "' does not exist")));
  }
  auto loaded = CpuModelWeights::Load(o.model_dir);
  if (!loaded.ok()) return fail(Annotate(loaded.status(), absl::StrCat("loading model '", o.model_dir, "'")));
  const std::shared_ptr<const CpuModelWeights> weights = std::move(loaded).value();
  const ModelConfig& model = weights->config();
  std::unique_ptr<Tokenizer> tokenizer;
  if (auto t = Tokenizer::FromModelDir(o.model_dir); t.ok()) tokenizer = std::move(t).value();

  for (const Variant& v : o.variants) {
    if (absl::Status valid = ConfigFor(v, o).Validate(); !valid.ok()) return fail(Annotate(valid, v.Name()));
  }
  const auto start = Clock::now();
  auto prompt = BuildPrompt(o, weights, tokenizer.get());
  if (!prompt.ok()) return fail(prompt.status());
  const int prompt_len = static_cast<int>(prompt->size());
  if (model.max_position_embeddings > 0 && prompt_len + o.tokens > model.max_position_embeddings) {
    return fail(absl::InvalidArgumentError(absl::StrCat("prompt (", prompt_len, " tokens) + --tokens ", o.tokens,
                                                        " exceeds the model's ", model.max_position_embeddings,
                                                        " positions; shorten the prompt or lower --tokens")));
  }
  if (o.save_prompt_ids) {
    std::ofstream out(*o.save_prompt_ids);
    out << absl::StrJoin(*prompt, ",") << "\n";
    if (!out) return fail(absl::InternalError(absl::StrCat("cannot write --save-prompt-ids '", *o.save_prompt_ids, "'")));
  }
  std::fprintf(stderr, "[eval: %s, prompt %d tokens, %d decode tokens, %zu variants]\n", o.model_dir.c_str(),
               prompt_len, o.tokens, o.variants.size());

  // 1. Teacher pass.
  std::vector<std::unique_ptr<VariantProbe>> probes;
  std::vector<VariantProbe*> probe_views;
  for (const Variant& v : o.variants) {
    auto probe = VariantProbe::Create(model, v, o);
    if (!probe.ok()) return fail(Annotate(probe.status(), v.Name()));
    probe_views.push_back(probe->get());
    probes.push_back(std::move(probe).value());
  }
  std::vector<Mean> last_query_cosine;
  auto teacher_stage = std::make_unique<TeacherStage>(model, probe_views, &last_query_cosine);
  SparsePolicyConfig dense_config;
  dense_config.policy = SparsePolicy::kDense;
  const auto teacher_start = Clock::now();
  auto teacher = Generate(weights, std::move(teacher_stage), dense_config, *prompt, o.tokens, {});
  if (!teacher.ok()) return fail(Annotate(teacher.status(), "teacher pass"));
  const double teacher_s = std::chrono::duration<double>(Clock::now() - teacher_start).count();
  std::fprintf(stderr, "[teacher pass: %.1f s]\n", teacher_s);

  // 2. Driven passes.
  struct Driven {
    int first_divergence = -1;  // -1: none
    double prefix = std::numeric_limits<double>::quiet_NaN(), overall = std::numeric_limits<double>::quiet_NaN();
    double seconds = 0;
    SparseAttentionCounters counters;
  };
  std::vector<Driven> driven(o.variants.size());
  if (o.drive) {
    for (size_t i = 0; i < o.variants.size(); ++i) {
      const Variant& v = o.variants[i];
      const SparsePolicyConfig config = ConfigFor(v, o);
      std::unique_ptr<LocalSelectorPool> pool;
      if (v.policy == SparsePolicy::kAsyncSpade) {
        auto created = LocalSelectorPool::Create(VariantProbe::PoolOptions(model, v, o));
        if (!created.ok()) return fail(created.status());
        pool = std::move(created).value();
      }
      SparseAttentionStageOptions options;
      options.default_config = config;
      options.predictor = v.predictor;
      options.selector_pool = pool.get();
      auto stage = SparseAttentionStage::Create(model, options);
      if (!stage.ok()) return fail(stage.status());
      const auto t0 = Clock::now();
      auto tokens = Generate(weights, std::move(stage).value(), config, *prompt, o.tokens, {}, &driven[i].counters);
      if (!tokens.ok()) return fail(Annotate(tokens.status(), absl::StrCat("driven pass of ", v.Name())));
      driven[i].seconds = std::chrono::duration<double>(Clock::now() - t0).count();
      int same = 0;
      for (size_t j = 0; j < tokens->size() && j < teacher->size(); ++j) {
        if ((*tokens)[j] == (*teacher)[j]) {
          ++same;
        } else if (driven[i].first_divergence < 0) {
          driven[i].first_divergence = static_cast<int>(j);
        }
      }
      const int n = static_cast<int>(teacher->size());
      driven[i].prefix = double(driven[i].first_divergence < 0 ? n : driven[i].first_divergence) / n;
      driven[i].overall = double(same) / n;
      std::fprintf(stderr, "[driven %s: %.1f s]\n", v.Name().c_str(), driven[i].seconds);
    }
  }

  // Report.
  const double last_query_cos = MeanOf(last_query_cosine);
  std::printf("model %s | prompt %d tokens | %d decode tokens | sinks %d | recent %d | cos(q_t, q_t+1) %.4f\n",
              o.model_dir.c_str(), prompt_len, o.tokens, o.sinks, o.recent, last_query_cos);
  std::printf("%-10s %6s %-28s %-11s %8s %8s %8s %8s %8s %8s %8s\n", "policy", "budget", "predictor", "aggregation",
              "sparse%", "recall", "rel_err", "q_cos", "fallbk", "agree1st", "agree");
  nlohmann::json rows = nlohmann::json::array();
  for (size_t i = 0; i < probes.size(); ++i) {
    const VariantProbe& probe = *probes[i];
    const Variant& v = probe.variant();
    const SparseAttentionCounters c = probe.counters();
    const int64_t decode_layer_steps = int64_t{model.num_layers} * (o.tokens - 1);
    const double sparse_fraction = decode_layer_steps > 0 ? double(c.sparse_layer_steps) / decode_layer_steps : 0.0;
    const double recall = MeanOf(probe.recall());
    const double rel_error = MeanOf(probe.rel_error());
    const double cosine = MeanOf(probe.cosine());
    std::printf("%-10s %6d %-28s %-11s %8s %8s %8s %8s %8lld %8s %8s\n", std::string(SparsePolicyName(v.policy)).c_str(),
                v.budget, v.PredictorName().c_str(),
                v.policy == SparsePolicy::kDense ? "-" : std::string(ScoreAggregationName(v.aggregation)).c_str(),
                Fmt(100.0 * sparse_fraction, "%.1f").c_str(), Fmt(recall).c_str(), Fmt(rel_error).c_str(),
                Fmt(cosine).c_str(), static_cast<long long>(c.dense_fallbacks), Fmt(driven[i].prefix, "%.3f").c_str(),
                Fmt(driven[i].overall, "%.3f").c_str());
    nlohmann::json row;
    row["policy"] = std::string(SparsePolicyName(v.policy));
    row["budget"] = v.budget;
    row["aggregation"] = std::string(ScoreAggregationName(v.aggregation));
    row["predictor"] = v.PredictorName();
    if (v.policy == SparsePolicy::kAsyncSpade) {
      row["predictor_mode"] = std::string(QueryPredictionModeName(v.predictor.mode));
      row["lags"] = v.predictor.lags;
      row["window"] = v.predictor.window;
      row["ridge_epsilon"] = v.predictor.ridge_epsilon;
      row["rope"] = v.predictor.space == QueryPredictorRope::kPre ? "pre" : "post";
    }
    row["teacher"] = {{"sparse_layer_steps", c.sparse_layer_steps},
                      {"dense_fallbacks", c.dense_fallbacks},
                      {"stale_selections", c.stale_selections},
                      {"mean_selector_lag_steps", c.mean_selector_lag_steps()},
                      {"sparse_fraction", sparse_fraction},
                      {"recall", NumberOrNull(recall)},
                      {"recall_per_layer", PerLayer(probe.recall())},
                      {"rel_error", NumberOrNull(rel_error)},
                      {"rel_error_per_layer", PerLayer(probe.rel_error())},
                      {"query_cosine", NumberOrNull(cosine)},
                      {"query_cosine_per_layer", PerLayer(probe.cosine())}};
    if (o.drive) {
      row["driven"] = {{"agreement_until_divergence", driven[i].prefix},
                       {"agreement_overall", driven[i].overall},
                       {"first_divergence", driven[i].first_divergence},
                       {"sparse_layer_steps", driven[i].counters.sparse_layer_steps},
                       {"dense_fallbacks", driven[i].counters.dense_fallbacks},
                       {"seconds", driven[i].seconds}};
    }
    rows.push_back(std::move(row));
  }
  const double total_s = std::chrono::duration<double>(Clock::now() - start).count();
  std::fprintf(stderr, "[eval total: %.1f s]\n", total_s);

  if (o.json_path) {
    nlohmann::json report;
    report["model"] = o.model_dir;
    report["prompt_tokens"] = prompt_len;
    report["decode_tokens"] = o.tokens;
    report["sinks"] = o.sinks;
    report["recent"] = o.recent;
    report["delay_steps"] = o.delay_steps;
    report["last_query_cosine"] = NumberOrNull(last_query_cos);
    report["last_query_cosine_per_layer"] = PerLayer(last_query_cosine);
    report["recall_reference"] = "exact top-budget of the current query group's attention mass (softmax_sum)";
    report["teacher_seconds"] = teacher_s;
    report["total_seconds"] = total_s;
    report["variants"] = std::move(rows);
    std::ofstream out(*o.json_path);
    try {
      out << report.dump(2) << "\n";
    } catch (const std::exception& e) {
      return fail(absl::InternalError(absl::StrCat("writing --json: ", e.what())));
    }
    if (!out) return fail(absl::InternalError(absl::StrCat("cannot write --json '", *o.json_path, "'")));
  }
  return 0;
}

int EvalCommand(int argc, char** argv) {
  int exit_code = 0;
  std::optional<Args> args = ParseCommandArgs(argc, argv, "eval", kSynopsis, EvalFlags(), &exit_code);
  if (!args) return exit_code;
  auto options = ParseEvalOptions(*args);
  if (!options.ok()) {
    std::fprintf(stderr, "asyncspade eval: %s\n(asyncspade eval --help lists the flags)\n",
                 std::string(options.status().message()).c_str());
    return 2;
  }
  return Eval(*options);
}

}  // namespace

ASYNCSPADE_REGISTER_COMMAND(eval, "measure sparse-attention policies against dense attention (recall, error, agreement)",
                            EvalCommand);

}  // namespace asyncspade::cli
