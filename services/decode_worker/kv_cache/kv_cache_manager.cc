#include "services/decode_worker/kv_cache/kv_cache_manager.h"

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "glog/logging.h"

namespace asyncspade {

KvCacheManager::KvCacheManager(int num_blocks, int page_size)
    : page_size_(page_size), allocator_(num_blocks) {
  CHECK_GT(page_size, 0);
}

double KvCacheManager::usage_fraction() const {
  if (num_blocks() == 0) return 0.0;
  return static_cast<double>(num_used_blocks()) / num_blocks();
}

int KvCacheManager::BlocksForTokens(int64_t num_tokens) const {
  return static_cast<int>((num_tokens + page_size_ - 1) / page_size_);
}

int KvCacheManager::AdditionalBlocksNeeded(SequenceId seq, int64_t new_length) const {
  const int needed = BlocksForTokens(new_length);
  auto it = tables_.find(seq);
  const int have = it == tables_.end() ? 0 : static_cast<int>(it->second.size());
  return needed > have ? needed - have : 0;
}

bool KvCacheManager::CanReserve(SequenceId seq, int64_t new_length) const {
  return AdditionalBlocksNeeded(seq, new_length) <= allocator_.num_free();
}

absl::Status KvCacheManager::Reserve(SequenceId seq, int64_t new_length) {
  const int additional = AdditionalBlocksNeeded(seq, new_length);
  if (additional == 0) {
    tables_.try_emplace(seq);
    return absl::OkStatus();
  }
  auto blocks = allocator_.Allocate(additional);
  if (!blocks.ok()) {
    return Annotate(blocks.status(), absl::StrCat("growing sequence ", seq, " to ", new_length, " tokens"));
  }
  std::vector<int32_t>& table = tables_[seq];
  table.insert(table.end(), blocks->begin(), blocks->end());
  return absl::OkStatus();
}

void KvCacheManager::Free(SequenceId seq) {
  auto it = tables_.find(seq);
  if (it == tables_.end()) return;
  allocator_.Free(it->second);
  tables_.erase(it);
}

absl::Span<const int32_t> KvCacheManager::BlockTable(SequenceId seq) const {
  auto it = tables_.find(seq);
  if (it == tables_.end()) return {};
  return it->second;
}

int64_t KvCacheManager::Capacity(SequenceId seq) const {
  return static_cast<int64_t>(BlockTable(seq).size()) * page_size_;
}

}  // namespace asyncspade
