// Per-sequence block tables over a KvBlockAllocator: which pages hold which sequence's keys and
// values. Token j of a sequence lives in block_table[j / page_size] at offset j % page_size.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/types/span.h"
#include "services/decode_worker/kv_cache/kv_block_allocator.h"

namespace asyncspade {

using SequenceId = int64_t;

class KvCacheManager {
 public:
  KvCacheManager(int num_blocks, int page_size);

  int page_size() const { return page_size_; }
  int num_blocks() const { return allocator_.num_blocks(); }
  int num_free_blocks() const { return allocator_.num_free(); }
  int num_used_blocks() const { return allocator_.num_used(); }
  double usage_fraction() const;

  int BlocksForTokens(int64_t num_tokens) const;
  // Blocks Reserve(seq, new_length) would have to allocate (0 if the table is already long enough).
  int AdditionalBlocksNeeded(SequenceId seq, int64_t new_length) const;
  bool CanReserve(SequenceId seq, int64_t new_length) const;

  // Grows `seq`'s table (creating it if needed) to hold `new_length` tokens. All or nothing:
  // RESOURCE_EXHAUSTED, with nothing allocated, if the pool is short. Never shrinks.
  absl::Status Reserve(SequenceId seq, int64_t new_length);
  // Returns every block of `seq` to the pool; unknown sequences are ignored.
  void Free(SequenceId seq);

  bool Has(SequenceId seq) const { return tables_.contains(seq); }
  // The block table of a known sequence (empty span if unknown).
  absl::Span<const int32_t> BlockTable(SequenceId seq) const;
  // Tokens the table can hold (blocks × page size).
  int64_t Capacity(SequenceId seq) const;
  int num_sequences() const { return static_cast<int>(tables_.size()); }

 private:
  int page_size_;
  KvBlockAllocator allocator_;
  absl::flat_hash_map<SequenceId, std::vector<int32_t>> tables_;
};

}  // namespace asyncspade
