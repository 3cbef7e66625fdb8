// A RendezvousStore inside one process, for tests and single-process deployments.
#pragma once

#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "common/data_plane/rendezvous_store.h"

namespace asyncspade::data_plane {

class InMemoryRendezvousStore : public RendezvousStore {
 public:
  absl::Status Set(const std::string& key, const std::string& value) override;
  absl::StatusOr<std::string> Get(const std::string& key, absl::Duration timeout) override;
  absl::Status Delete(const std::string& key) override;

  // Number of keys currently stored (tests check that channels clean up after themselves).
  size_t size() const;

 private:
  mutable absl::Mutex mutex_;
  absl::flat_hash_map<std::string, std::string> values_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace asyncspade::data_plane
