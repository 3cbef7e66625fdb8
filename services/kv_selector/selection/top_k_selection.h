// Token selection with predicted queries: the KV selector's step. For each (sequence, layer) of a
// batch, every indexed key is scored against the predicted queries of its KV head's query group
// (kernels::cpu::ScoreKeys), the positions the decode worker attends anyway at the query's position
// are excluded, and the top `budget` positions per KV head are returned (kernels::cpu::TopK).
//
// What is excluded, for a query at position t+1 (made after the key of t was indexed): the sinks
// [0, S) and the recent window the worker attends at t+1, i.e. positions ≥ t + 2 − R (the worker's
// kv_len at t+1 is t + 2). Keys at positions ≥ t+1 are never scored even if the index holds them.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/key_scoring.h"
#include "services/decode_worker/policy/selector_pool.h"
#include "services/kv_selector/selection/key_index.h"

namespace asyncspade::selection {

struct SelectionParams {
  int budget = 0;   // positions selected per KV head, > 0
  int sinks = 0;    // S ≥ 0
  int recent = 1;   // R ≥ 1: the worker's recent window (it covers the query's own key)
  kernels::GroupAggregation aggregation = kernels::GroupAggregation::kSum;
  // Score scale; ≤ 0 means 1/sqrt(head_dim), the attention scale, which makes kSoftmaxSum the
  // group's attention mass. (kSum and kMax rank the same for any positive scale.)
  float scale = 0.0f;

  absl::Status Validate() const;
};

// One (sequence, layer) to select for.
struct SelectionQuery {
  int64_t sequence_id = 0;
  int layer = 0;
  int32_t query_position = 0;                // t + 1
  uint64_t step = 0;                         // echoed into Selection::step
  const float* predicted_queries = nullptr;  // [num_q_heads, head_dim], post-RoPE for t + 1
  int budget = 0;                            // > 0 overrides SelectionParams::budget
};

// Reusable buffers, so a selector thread does not allocate per step. One per thread.
struct SelectionScratch {
  std::vector<float> scores;
  std::vector<int32_t> top;
};

// One result per query, in order. A query fails alone: NOT_FOUND when its (sequence, layer) is not
// indexed, FAILED_PRECONDITION when the index holds fewer than query_position keys (keys are
// missing: the sender must append them), INVALID_ARGUMENT for a bad query. Params are validated
// first (every result gets the same error when they are not).
std::vector<absl::StatusOr<Selection>> SelectTopK(const KeyIndex& index,
                                                  absl::Span<const SelectionQuery> queries,
                                                  const SelectionParams& params,
                                                  SelectionScratch* scratch = nullptr);

// The same for one query.
absl::StatusOr<Selection> SelectTopK(const KeyIndex& index, const SelectionQuery& query,
                                     const SelectionParams& params,
                                     SelectionScratch* scratch = nullptr);

// The scoring rule above on one layer's keys, for callers that hold the keys elsewhere (the oracle
// policy scores the worker's paged cache with the current query through the same kernels): the
// number of leading keys to score and the recent positions to exclude among them, for a query at
// `query_position` over `indexed` keys.
struct ScoredRange {
  int32_t kv_len = 0;          // keys 0 .. kv_len − 1 are scored
  int32_t recent_exclude = 0;  // the last recent_exclude of them are −inf
};
ScoredRange ScoredRangeFor(int32_t indexed, int32_t query_position, int recent);

}  // namespace asyncspade::selection
