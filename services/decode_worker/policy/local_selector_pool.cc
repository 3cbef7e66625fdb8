#include "services/decode_worker/policy/local_selector_pool.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "glog/logging.h"

namespace asyncspade {

absl::StatusOr<std::unique_ptr<LocalSelectorPool>> LocalSelectorPool::Create(const LocalSelectorPoolOptions& options) {
  RETURN_IF_ERROR(Annotate(options.shape.Validate(), "local selector pool"));
  RETURN_IF_ERROR(Annotate(options.params.Validate(), "local selector pool"));
  if (options.delay_steps < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("local selector pool: delay_steps is ", options.delay_steps, "; it must be >= 0"));
  }
  return std::unique_ptr<LocalSelectorPool>(new LocalSelectorPool(options));
}

LocalSelectorPool::LocalSelectorPool(const LocalSelectorPoolOptions& options)
    : options_(options),
      index_(std::make_unique<selection::KeyIndex>(options.shape)),
      served_(options.shape.num_layers, true) {}

bool LocalSelectorPool::ServesLayer(int layer) const {
  return layer >= 0 && layer < static_cast<int>(served_.size()) && served_[layer];
}

void LocalSelectorPool::SetServesLayer(int layer, bool serves) {
  if (layer >= 0 && layer < static_cast<int>(served_.size())) served_[layer] = serves;
}

void LocalSelectorPool::AppendKeys(int layer, int64_t sequence_id, int32_t start_position, int32_t num_tokens,
                                   const float* keys) {
  const absl::Status appended = index_->AppendKeys(sequence_id, layer, start_position, num_tokens, keys);
  if (!appended.ok()) {
    ++errors_total_;
    LOG(WARNING) << "local selector: " << appended;
  }
}

void LocalSelectorPool::Submit(SelectRequest request) {
  const selection::KeyIndexShape& shape = options_.shape;
  const size_t n = request.sequence_ids.size();
  const size_t key_floats = size_t(shape.num_kv_heads) * shape.head_dim;
  const size_t query_floats = size_t(shape.num_q_heads) * shape.head_dim;
  if (request.positions.size() != n || request.new_keys.size() != n * key_floats ||
      request.predicted_queries.size() != n * query_floats || (!request.budgets.empty() && request.budgets.size() != n)) {
    ++errors_total_;
    LOG(WARNING) << "local selector: malformed SelectRequest for layer " << request.layer << " (" << n
                 << " sequences); dropped";
    return;
  }
  for (size_t i = 0; i < n; ++i) {
    const absl::Status appended = index_->Append(request.sequence_ids[i], request.layer, request.positions[i],
                                                 request.new_keys.data() + i * key_floats);
    if (!appended.ok()) {
      ++errors_total_;
      LOG(WARNING) << "local selector: " << appended;
      continue;
    }
    selection::SelectionQuery query;
    query.sequence_id = request.sequence_ids[i];
    query.layer = request.layer;
    query.query_position = request.positions[i] + 1;
    query.step = request.step;
    query.predicted_queries = request.predicted_queries.data() + i * query_floats;
    query.budget = request.budgets.empty() ? 0 : request.budgets[i];
    absl::StatusOr<Selection> selected = selection::SelectTopK(*index_, query, options_.params, &scratch_);
    if (!selected.ok()) {
      ++errors_total_;
      LOG(WARNING) << "local selector: " << selected.status();
      continue;
    }
    ++selections_total_;
    pending_.push_back({request.step + 1 + static_cast<uint64_t>(options_.delay_steps), query.sequence_id,
                        query.layer, std::make_shared<const Selection>(std::move(selected).value())});
  }
}

void LocalSelectorPool::BeginStep(uint64_t step) {
  while (!pending_.empty() && pending_.front().visible_at_step <= step) {
    Pending& due = pending_.front();
    latest_[due.sequence_id][due.layer] = std::move(due.selection);
    pending_.pop_front();
  }
}

void LocalSelectorPool::Detach(int64_t sequence_id) {
  index_->Detach(sequence_id);
  latest_.erase(sequence_id);
  std::erase_if(pending_, [sequence_id](const Pending& p) { return p.sequence_id == sequence_id; });
}

std::shared_ptr<const Selection> LocalSelectorPool::Latest(int64_t sequence_id, int layer) {
  auto seq = latest_.find(sequence_id);
  if (seq == latest_.end()) return nullptr;
  auto it = seq->second.find(layer);
  return it == seq->second.end() ? nullptr : it->second;
}

LocalSelectorPoolStats LocalSelectorPool::stats() const {
  LocalSelectorPoolStats stats;
  stats.selections_total = selections_total_;
  stats.errors_total = errors_total_;
  stats.indexed_keys = index_->indexed_keys();
  stats.index_bytes = index_->reserved_bytes();
  return stats;
}

}  // namespace asyncspade
