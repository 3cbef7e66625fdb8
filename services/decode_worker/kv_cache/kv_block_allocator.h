// A fixed pool of KV-cache blocks (pages) handed out from a free list. Bookkeeping only: the
// storage the block ids index belongs to the model runner (host arrays on CPU, device memory on
// GPU), so the same allocator serves both.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace asyncspade {

class KvBlockAllocator {
 public:
  explicit KvBlockAllocator(int num_blocks);

  // `count` distinct free block ids, or RESOURCE_EXHAUSTED (allocating nothing) when fewer are free.
  absl::StatusOr<std::vector<int32_t>> Allocate(int count);
  // Returns blocks to the pool. Freeing a block that is not allocated is an internal bug (CHECK).
  void Free(absl::Span<const int32_t> blocks);

  int num_blocks() const { return num_blocks_; }
  int num_free() const { return static_cast<int>(free_list_.size()); }
  int num_used() const { return num_blocks_ - num_free(); }

 private:
  int num_blocks_;
  std::vector<int32_t> free_list_;  // LIFO: recently freed blocks are reused first (warm cache)
  std::vector<bool> allocated_;
};

}  // namespace asyncspade
