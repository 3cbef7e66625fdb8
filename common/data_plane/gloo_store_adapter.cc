#include "common/data_plane/gloo_store_adapter.h"

#include <algorithm>

#include "gloo/common/error.h"

namespace asyncspade::data_plane {

void GlooStoreAdapter::set(const std::string& key, const std::vector<char>& data) {
  const std::string full_key = key_prefix_ + key;
  const absl::Status status = store_.Set(full_key, std::string(data.begin(), data.end()));
  if (!status.ok()) Throw(status);
  absl::MutexLock lock(&mutex_);
  keys_set_.push_back(full_key);
}

std::vector<char> GlooStoreAdapter::get(const std::string& key) {
  absl::StatusOr<std::string> value = store_.Get(key_prefix_ + key, timeout_);
  if (!value.ok()) Throw(value.status());
  return std::vector<char>(value->begin(), value->end());
}

void GlooStoreAdapter::wait(const std::vector<std::string>& keys) {
  wait(keys, std::chrono::milliseconds(absl::ToInt64Milliseconds(timeout_)));
}

void GlooStoreAdapter::wait(const std::vector<std::string>& keys,
                            const std::chrono::milliseconds& timeout) {
  // Gloo passes its own timeout (zero: none); never wait longer than the channel's connect timeout.
  const absl::Duration bound =
      timeout.count() > 0 ? std::min(absl::FromChrono(timeout), timeout_) : timeout_;
  const absl::Time deadline = absl::Now() + bound;
  for (const std::string& key : keys) {
    absl::StatusOr<std::string> value =
        store_.Get(key_prefix_ + key, std::max(deadline - absl::Now(), absl::ZeroDuration()));
    if (!value.ok()) Throw(value.status());
  }
}

void GlooStoreAdapter::Throw(const absl::Status& status) {
  {
    absl::MutexLock lock(&mutex_);
    if (first_error_.ok()) first_error_ = status;
  }
  throw gloo::IoException(std::string(status.message()));
}

absl::Status GlooStoreAdapter::first_error() const {
  absl::MutexLock lock(&mutex_);
  return first_error_;
}

std::vector<std::string> GlooStoreAdapter::keys_set() const {
  absl::MutexLock lock(&mutex_);
  return keys_set_;
}

}  // namespace asyncspade::data_plane
