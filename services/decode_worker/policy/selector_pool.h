// What the asyncspade attention policy in the decode loop sees of the KV selectors: a pool that
// routes each layer to the selector serving it. Implementations: remote (the data plane to selector
// processes, in the decode-worker service) and local (in-process, synchronous; for `asyncspade eval`
// and tests). Every method is called from the decode loop thread and NEVER waits for a selector.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

namespace asyncspade {

// One layer of one decode step, for the sequences whose layer is served by selectors.
struct SelectRequest {
  int layer = 0;
  uint64_t step = 0;                     // the worker's step counter
  std::vector<int64_t> sequence_ids;     // [n]
  std::vector<int32_t> positions;        // [n] position t of the new key; the query is for t + 1
  std::vector<float> new_keys;           // [n, num_kv_heads, head_dim], post-RoPE, position t
  std::vector<float> predicted_queries;  // [n, num_q_heads, head_dim], post-RoPE, for position t+1
  // [n] per-sequence budgets (a request's override), or empty: the pool's configured budget.
  // Optional: a pool whose wire carries one budget per channel (the remote pool) may ignore it; the
  // decode worker then uses at most its own budget of the selection's positions.
  std::vector<int32_t> budgets;
};

// The selector's answer for one (sequence, layer): top-k positions per KV head, excluding the
// sinks and the recent window (which the worker always attends).
struct Selection {
  int32_t for_position = 0;        // the query position it was made for
  uint64_t step = 0;               // echoes SelectRequest::step
  int budget = 0;
  std::vector<int32_t> indices;    // [num_kv_heads, budget], -1 past counts
  std::vector<int32_t> counts;     // [num_kv_heads]
};

class SelectorPool {
 public:
  virtual ~SelectorPool() = default;

  // Whether a live selector currently serves `layer`. When not, the layer attends densely (the
  // caller counts a dense fallback).
  virtual bool ServesLayer(int layer) const = 0;

  // Keys [num_tokens, num_kv_heads, head_dim] of positions start_position.. of one layer
  // (prefill chunks). start_position 0 creates the sequence's index for that layer.
  virtual void AppendKeys(int layer, int64_t sequence_id, int32_t start_position, int32_t num_tokens,
                          const float* keys) = 0;

  // Queues one layer's selection request. Never blocks.
  virtual void Submit(SelectRequest request) = 0;

  // The sequence finished: selectors free its index.
  virtual void Detach(int64_t sequence_id) = 0;

  // The freshest selection received for (sequence, layer), or null when none has arrived yet.
  // Never blocks.
  virtual std::shared_ptr<const Selection> Latest(int64_t sequence_id, int layer) = 0;

  // The decode loop starts step `step` (called once per forward, before any other call of that
  // step). Pools that emulate the selector's timing (LocalSelectorPool) publish here what is due;
  // the remote pool needs nothing.
  virtual void BeginStep(uint64_t step) {}
};

}  // namespace asyncspade
