#include "common/data_plane/in_memory_rendezvous_store.h"

#include "absl/strings/str_cat.h"

namespace asyncspade::data_plane {

absl::Status InMemoryRendezvousStore::Set(const std::string& key, const std::string& value) {
  absl::MutexLock lock(&mutex_);
  values_[key] = value;
  return absl::OkStatus();
}

absl::StatusOr<std::string> InMemoryRendezvousStore::Get(const std::string& key,
                                                         absl::Duration timeout) {
  absl::MutexLock lock(&mutex_);
  auto present = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) { return values_.contains(key); };
  if (!mutex_.AwaitWithTimeout(absl::Condition(&present), timeout)) {
    return absl::DeadlineExceededError(
        absl::StrCat("rendezvous key '", key, "' was not set within ", absl::FormatDuration(timeout),
                     "; is the peer process running and using the same channel id and epoch?"));
  }
  return values_.at(key);
}

absl::Status InMemoryRendezvousStore::Delete(const std::string& key) {
  absl::MutexLock lock(&mutex_);
  values_.erase(key);
  return absl::OkStatus();
}

size_t InMemoryRendezvousStore::size() const {
  absl::MutexLock lock(&mutex_);
  return values_.size();
}

}  // namespace asyncspade::data_plane
