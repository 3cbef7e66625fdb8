// The sparse-attention policy and its token budget: the `sparse:` section of a deployment YAML, the
// engine's per-sequence setting and the per-request override all share this one struct, so the
// rules for what is a valid budget live in one place.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace asyncspade {

// Who chooses the tokens each decode step attends to (DESIGN.md §3).
enum class SparsePolicy {
  kDense,       // full attention, the accuracy reference
  kQuest,       // decode worker, synchronously, pages with min/max key bounds, current query
  kOracle,      // decode worker, synchronously, exact top-k tokens, current query
  kAsyncSpade,  // KV selector, one step ahead, top-k tokens, predicted query
};

// "dense", "quest", "oracle", "asyncspade".
std::string_view SparsePolicyName(SparsePolicy policy);
// Accepts exactly the names SparsePolicyName returns; the error lists them.
absl::StatusOr<SparsePolicy> ParseSparsePolicy(std::string_view name);
const std::vector<std::string>& SparsePolicyNames();

// How the next decode step's query is predicted from the recent ones.
enum class QueryPredictorMode {
  kRidge,        // ridge regression on `lags` scalar lag coefficients fitted over the last `window` queries, per head
  kLastQuery,    // the most recent query itself (the no-regression baseline)
  kRidgeShared,  // the same regression with one coefficient vector shared by all heads of a layer
};

// "ridge", "last_query", "ridge_shared".
std::string_view QueryPredictorModeName(QueryPredictorMode mode);
absl::StatusOr<QueryPredictorMode> ParseQueryPredictorMode(std::string_view name);
const std::vector<std::string>& QueryPredictorModeNames();

// Which queries the regression is fitted on.
enum class QueryPredictorRope {
  kPost,  // the post-RoPE queries as the attention sees them
  kPre,   // queries un-rotated by their positions; the prediction is rotated to position t+1
};

// "post", "pre".
std::string_view QueryPredictorRopeName(QueryPredictorRope rope);
absl::StatusOr<QueryPredictorRope> ParseQueryPredictorRope(std::string_view name);
const std::vector<std::string>& QueryPredictorRopeNames();

// How the scores of one key for the G query heads that share a KV head become one score, when
// oracle and asyncspade rank tokens (and quest ranks pages).
enum class ScoreAggregation {
  kSum,         // Σ_g q_g·k
  kMax,         // max_g q_g·k
  kSoftmaxSum,  // Σ_g softmax(q_g·K/√d)(k): the group's attention mass (quest: falls back to kSum)
};

// "sum", "max", "softmax_sum".
std::string_view ScoreAggregationName(ScoreAggregation aggregation);
absl::StatusOr<ScoreAggregation> ParseScoreAggregation(std::string_view name);
const std::vector<std::string>& ScoreAggregationNames();

// Defaults: the variant with the best top-k recall in docs/quality.md.
struct QueryPredictorConfig {
  int window = 16;              // W: recent queries kept per (sequence, layer, head)
  int lags = 4;                 // p: lag coefficients, 1 <= p < W
  double ridge_epsilon = 1e-3;  // ε of the ridge penalty ε||a||², > 0
  QueryPredictorMode mode = QueryPredictorMode::kRidgeShared;
  QueryPredictorRope rope = QueryPredictorRope::kPre;
};

// One violated rule: `field` is the key relative to the section ("budget", "predictor.lags").
struct SparseConfigError {
  std::string field;
  std::string message;
};

struct SparsePolicyConfig {
  SparsePolicy policy = SparsePolicy::kAsyncSpade;
  int budget = 2048;         // tokens chosen by the policy per (sequence, layer, KV head), > 0
  int sinks = 4;             // S: the first tokens, always attended, >= 0
  int recent = 64;           // R: the last tokens, always attended, >= 1
  int quest_page_size = 16;  // tokens per Quest page (min/max key bounds per page)
  // Best recall and attention error in docs/quality.md (the selector reads the keys twice for it).
  ScoreAggregation aggregation = ScoreAggregation::kSoftmaxSum;
  QueryPredictorConfig predictor;
  // Sequences shorter than this attend densely. Unset: sinks + recent + budget, the length below
  // which sparse attention would read every token anyway. When set it must be at least that.
  std::optional<int> min_context_for_sparse;
  // false: every decode step of a sparse policy takes the sparse path, even when the context is so
  // short that the selection covers every token. Not for production (it only costs time); it
  // verifies the sparse paths end to end against dense attention.
  bool dense_below_threshold = true;

  // The context length from which the policy's selection is used instead of dense attention.
  int64_t SparseFromContext() const;

  // Every violated rule, in field order. Empty when valid.
  std::vector<SparseConfigError> Errors() const;
  // OK, or InvalidArgument naming each offending field as `<field_prefix><field>`
  // (e.g. Validate("sparse.") -> "sparse.budget: must be > 0 ...").
  absl::Status Validate(std::string_view field_prefix = "") const;
};

// A request may choose another policy and/or budget than its deployment's default.
struct SparsePolicyOverride {
  std::optional<SparsePolicy> policy;
  std::optional<int64_t> budget;
};

// The deployment default with a request's override applied, validated. A
// `min_context_for_sparse` below the new sinks + recent + budget is dropped, because that floor
// applies anyway. Errors name the request's field ("budget: ...") and are InvalidArgument, so they
// fail that request alone.
absl::StatusOr<SparsePolicyConfig> ApplySparsePolicyOverride(const SparsePolicyConfig& deployment_default,
                                                             const SparsePolicyOverride& request);

}  // namespace asyncspade
