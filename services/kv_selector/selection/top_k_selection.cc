#include "services/kv_selector/selection/top_k_selection.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/topk.h"

namespace asyncspade::selection {

absl::Status SelectionParams::Validate() const {
  if (budget <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("selection budget is ", budget, "; it must be > 0"));
  }
  if (sinks < 0) {
    return absl::InvalidArgumentError(absl::StrCat("selection sinks is ", sinks, "; it must be >= 0"));
  }
  if (recent < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "selection recent window is ", recent,
        "; it must be >= 1 (the decode step's own key is attended through it)"));
  }
  return absl::OkStatus();
}

ScoredRange ScoredRangeFor(int32_t indexed, int32_t query_position, int recent) {
  ScoredRange range;
  range.kv_len = std::max(0, std::min(indexed, query_position));
  const int64_t recent_begin = int64_t{query_position} + 1 - recent;
  range.recent_exclude =
      static_cast<int32_t>(std::clamp<int64_t>(range.kv_len - recent_begin, 0, range.kv_len));
  return range;
}

namespace {

absl::StatusOr<Selection> SelectOne(const KeyIndex& index, const SelectionQuery& query,
                                    const SelectionParams& params, SelectionScratch* scratch) {
  const KeyIndexShape& shape = index.shape();
  if (query.predicted_queries == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("sequence ", query.sequence_id, " layer ",
                                                   query.layer, ": no predicted queries"));
  }
  if (query.query_position < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "sequence ", query.sequence_id, " layer ", query.layer, ": query position ",
        query.query_position, " must be >= 1 (a query follows at least one key)"));
  }
  const int budget = query.budget > 0 ? query.budget : params.budget;

  Selection selection;
  selection.for_position = query.query_position;
  selection.step = query.step;
  selection.budget = budget;
  selection.indices.assign(size_t(shape.num_kv_heads) * budget, -1);
  selection.counts.assign(shape.num_kv_heads, 0);

  absl::Status scored_status = absl::OkStatus();
  const absl::Status read_status = index.Read(query.sequence_id, query.layer, [&](const LayerKeys& keys) {
    if (keys.length() < query.query_position) {
      scored_status = absl::FailedPreconditionError(absl::StrCat(
          "sequence ", query.sequence_id, " layer ", query.layer, ": a query for position ",
          query.query_position, " needs keys 0..", query.query_position - 1, " but the index holds ",
          keys.length(), "; append positions ", keys.length(), ".. first"));
      return;
    }
    const ScoredRange range = ScoredRangeFor(keys.length(), query.query_position, params.recent);
    if (range.kv_len == 0) return;
    kernels::KeyScoringParams scoring;
    scoring.scale = params.scale > 0.0f ? params.scale : 1.0f / std::sqrt(float(shape.head_dim));
    scoring.sinks = params.sinks;
    scoring.recent_exclude = range.recent_exclude;
    scoring.aggregation = params.aggregation;
    scratch->scores.resize(size_t(shape.num_kv_heads) * range.kv_len);
    const int32_t kv_len = range.kv_len;
    const kernels::PagedKvLayout layout = keys.layout();
    kernels::cpu::ScoreKeys(query.predicted_queries, /*num_seqs=*/1, shape.num_q_heads, &kv_len,
                            kv_len, keys.block_table(), layout.num_blocks, layout, keys.pages(),
                            scoring, scratch->scores.data(), kv_len);
    kernels::cpu::TopK(scratch->scores.data(), shape.num_kv_heads, kv_len, /*lengths=*/nullptr,
                       kv_len, budget, selection.indices.data(), /*values=*/nullptr);
  });
  if (!read_status.ok()) return read_status;
  if (!scored_status.ok()) return scored_status;
  for (int h = 0; h < shape.num_kv_heads; ++h) {
    const int32_t* row = selection.indices.data() + size_t(h) * budget;
    selection.counts[h] = static_cast<int32_t>(std::count_if(row, row + budget, [](int32_t p) { return p >= 0; }));
  }
  return selection;
}

}  // namespace

std::vector<absl::StatusOr<Selection>> SelectTopK(const KeyIndex& index,
                                                  absl::Span<const SelectionQuery> queries,
                                                  const SelectionParams& params,
                                                  SelectionScratch* scratch) {
  std::vector<absl::StatusOr<Selection>> results;
  results.reserve(queries.size());
  const absl::Status valid = params.Validate();
  SelectionScratch local_scratch;
  if (scratch == nullptr) scratch = &local_scratch;
  for (const SelectionQuery& query : queries) {
    if (!valid.ok()) {
      results.push_back(valid);
      continue;
    }
    results.push_back(SelectOne(index, query, params, scratch));
  }
  return results;
}

absl::StatusOr<Selection> SelectTopK(const KeyIndex& index, const SelectionQuery& query,
                                     const SelectionParams& params, SelectionScratch* scratch) {
  return std::move(SelectTopK(index, absl::MakeConstSpan(&query, 1), params, scratch).front());
}

}  // namespace asyncspade::selection
