#include "services/decode_worker/kv_cache/kv_block_allocator.h"

#include "absl/strings/str_cat.h"
#include "glog/logging.h"

namespace asyncspade {

KvBlockAllocator::KvBlockAllocator(int num_blocks)
    : num_blocks_(num_blocks), allocated_(static_cast<size_t>(num_blocks), false) {
  CHECK_GE(num_blocks, 0);
  free_list_.reserve(num_blocks);
  // Reversed so that the first allocations get blocks 0, 1, 2, ...
  for (int32_t b = num_blocks - 1; b >= 0; --b) free_list_.push_back(b);
}

absl::StatusOr<std::vector<int32_t>> KvBlockAllocator::Allocate(int count) {
  CHECK_GE(count, 0);
  if (count > num_free()) {
    return absl::ResourceExhaustedError(absl::StrCat("KV cache has ", num_free(), " free blocks of ",
                                                     num_blocks_, ", ", count, " requested"));
  }
  std::vector<int32_t> blocks(free_list_.end() - count, free_list_.end());
  free_list_.resize(free_list_.size() - count);
  for (int32_t b : blocks) allocated_[b] = true;
  return blocks;
}

void KvBlockAllocator::Free(absl::Span<const int32_t> blocks) {
  for (int32_t b : blocks) {
    CHECK(b >= 0 && b < num_blocks_ && allocated_[b]) << "freeing KV block " << b << " twice or out of range";
    allocated_[b] = false;
    free_list_.push_back(b);
  }
}

}  // namespace asyncspade
