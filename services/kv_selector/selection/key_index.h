// The KV selector's copy of the keys: per (sequence, layer) a growing store of post-RoPE keys,
// filled by bulk copies (prefill chunks, attaching a sequence to a new selector) and by one key per
// decode step. Selection (top_k_selection.h) scores every indexed key against predicted queries.
//
// Layout. The keys of one (sequence, layer) are pages of the KV cache's layout
// ([page][kv_head][page_size][head_dim], kernels/kernel_types.h) kept contiguous with an identity
// block table, so the kernels' paged scoring reads them without a copy. Pages grow by doubling the
// reserved capacity; an index never shrinks until its sequence is detached.
//
// Threads. Each sequence has its own lock: appends take it exclusively, selections share it, so
// the selector process may serve several channels (hence many sequences) from several threads;
// operations on one sequence are expected in order from one channel (an append racing a selection
// of the same sequence is safe but the selection then sees either length).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "kernels/kernel_types.h"

namespace asyncspade::selection {

// The model geometry the index serves. `num_q_heads` is not needed to store keys but every
// selection needs the query group size, and both come from the same HELLO.
struct KeyIndexShape {
  int num_layers = 0;
  int num_q_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int page_size = 16;
  // 0: unlimited. Appends that would reserve more fail with RESOURCE_EXHAUSTED.
  size_t max_bytes = 0;

  absl::Status Validate() const;
  int group_size() const { return num_kv_heads > 0 ? num_q_heads / num_kv_heads : 0; }
};

// The keys of one (sequence, layer).
class LayerKeys {
 public:
  int32_t length() const { return length_; }
  int num_pages() const { return static_cast<int>((length_ + page_size_ - 1) / page_size_); }
  // What kernels::cpu::ScoreKeys reads: the pages and an identity block table covering them.
  const float* pages() const { return pages_.data(); }
  const int32_t* block_table() const { return block_table_.data(); }
  kernels::PagedKvLayout layout() const;
  size_t reserved_bytes() const { return pages_.capacity() * sizeof(float); }
  // Key of (position, kv_head): head_dim floats. position < length().
  const float* Key(int32_t position, int kv_head) const;

 private:
  friend class KeyIndex;
  void Init(int num_kv_heads, int head_dim, int page_size);
  // Bytes that writing up to `end_position` would reserve in total.
  size_t BytesToHold(int32_t end_position) const;
  // keys [num_tokens][num_kv_heads][head_dim] → positions start .. start + num_tokens - 1.
  void Write(int32_t start_position, int32_t num_tokens, const float* keys);

  int num_kv_heads_ = 0;
  int head_dim_ = 0;
  int page_size_ = 16;
  int32_t length_ = 0;
  std::vector<float> pages_;
  std::vector<int32_t> block_table_;
};

class KeyIndex {
 public:
  // `shape` must be valid (KeyIndexShape::Validate); CHECKed.
  explicit KeyIndex(const KeyIndexShape& shape);
  KeyIndex(const KeyIndex&) = delete;
  KeyIndex& operator=(const KeyIndex&) = delete;

  const KeyIndexShape& shape() const { return shape_; }

  // Keys [num_tokens][num_kv_heads][head_dim] of positions start_position .. of one layer.
  // start_position 0 creates (or restarts) the sequence's index for that layer. A later start must
  // not leave a gap: start_position ≤ the layer's current length (an overlap rewrites positions the
  // index already holds, which is harmless because a position's key never changes).
  // INVALID_ARGUMENT for a bad layer or count, FAILED_PRECONDITION for a gap (the message says
  // which positions to send first), RESOURCE_EXHAUSTED past max_bytes.
  absl::Status AppendKeys(int64_t sequence_id, int layer, int32_t start_position,
                          int32_t num_tokens, const float* keys);
  // One key [num_kv_heads][head_dim] of `position` (a decode step's new key).
  absl::Status Append(int64_t sequence_id, int layer, int32_t position, const float* key) {
    return AppendKeys(sequence_id, layer, position, 1, key);
  }

  // Frees the sequence's index (every layer). Unknown sequences are ignored (a sequence that never
  // reached the selector, or a repeated detach).
  void Detach(int64_t sequence_id);

  // Keys indexed for (sequence, layer); -1 when the sequence or layer has no index.
  int32_t Length(int64_t sequence_id, int layer) const;
  bool HasSequence(int64_t sequence_id) const;
  int64_t num_sequences() const;
  // Positions indexed, summed over sequences and layers.
  int64_t indexed_keys() const { return indexed_keys_.load(std::memory_order_relaxed); }
  // Bytes reserved for keys (what max_bytes limits).
  size_t reserved_bytes() const { return reserved_bytes_.load(std::memory_order_relaxed); }

  // Runs `read` on (sequence, layer)'s keys under the sequence's shared lock. NOT_FOUND when the
  // sequence or the layer has no index.
  absl::Status Read(int64_t sequence_id, int layer,
                    absl::FunctionRef<void(const LayerKeys&)> read) const;

 private:
  struct SequenceKeys {
    mutable absl::Mutex mu;
    std::vector<LayerKeys> layers ABSL_GUARDED_BY(mu);     // [num_layers]
    std::vector<bool> has_layer ABSL_GUARDED_BY(mu);       // [num_layers]
    bool detached ABSL_GUARDED_BY(mu) = false;  // an append that raced Detach must not resurrect it
  };

  std::shared_ptr<SequenceKeys> Find(int64_t sequence_id) const;

  const KeyIndexShape shape_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<int64_t, std::shared_ptr<SequenceKeys>> sequences_ ABSL_GUARDED_BY(mu_);
  std::atomic<int64_t> indexed_keys_{0};
  std::atomic<size_t> reserved_bytes_{0};
};

}  // namespace asyncspade::selection
