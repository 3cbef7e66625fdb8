// A SelectorPool that runs the KV selector's selection core in-process: for `asyncspade eval`,
// tests and single-process runs. It reproduces the asynchronous protocol deterministically: a
// selection submitted at step s is computed right away from the keys up to its position t and the
// predicted query for t + 1, and becomes visible (Latest) at step s + 1 + delay_steps, when the
// decode loop calls BeginStep. delay_steps > 0 emulates a selector that answers late, so the
// worker meets missing (dense fallback) and stale selections exactly as with a slow remote one.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "services/decode_worker/policy/selector_pool.h"
#include "services/kv_selector/selection/key_index.h"
#include "services/kv_selector/selection/top_k_selection.h"

namespace asyncspade {

struct LocalSelectorPoolOptions {
  selection::KeyIndexShape shape;     // model geometry (and an optional memory limit)
  selection::SelectionParams params;  // budget, sinks, recent, aggregation
  int delay_steps = 0;                // ≥ 0: extra steps before a selection becomes visible
};

struct LocalSelectorPoolStats {
  int64_t selections_total = 0;  // computed
  int64_t errors_total = 0;      // appends or selections the core refused (logged)
  int64_t indexed_keys = 0;
  size_t index_bytes = 0;
};

class LocalSelectorPool : public SelectorPool {
 public:
  static absl::StatusOr<std::unique_ptr<LocalSelectorPool>> Create(const LocalSelectorPoolOptions& options);

  bool ServesLayer(int layer) const override;
  void AppendKeys(int layer, int64_t sequence_id, int32_t start_position, int32_t num_tokens,
                  const float* keys) override;
  void Submit(SelectRequest request) override;
  void Detach(int64_t sequence_id) override;
  std::shared_ptr<const Selection> Latest(int64_t sequence_id, int layer) override;
  void BeginStep(uint64_t step) override;

  // Emulates a selector that stops (or starts) serving a layer: while not served, the worker
  // attends that layer densely and counts fallbacks. Selections already published stay.
  void SetServesLayer(int layer, bool serves);
  LocalSelectorPoolStats stats() const;
  const selection::KeyIndex& index() const { return *index_; }

 private:
  explicit LocalSelectorPool(const LocalSelectorPoolOptions& options);

  struct Pending {
    uint64_t visible_at_step;
    int64_t sequence_id;
    int layer;
    std::shared_ptr<const Selection> selection;
  };

  LocalSelectorPoolOptions options_;
  std::unique_ptr<selection::KeyIndex> index_;
  std::vector<bool> served_;
  selection::SelectionScratch scratch_;
  std::deque<Pending> pending_;  // in submission order, so visible_at_step is non-decreasing
  absl::flat_hash_map<int64_t, absl::flat_hash_map<int, std::shared_ptr<const Selection>>> latest_;
  int64_t selections_total_ = 0;
  int64_t errors_total_ = 0;
};

}  // namespace asyncspade
