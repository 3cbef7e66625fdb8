// Presents a RendezvousStore to Gloo (gloo::rendezvous::Store) under one channel's key prefix.
// Gloo reports failures by throwing, so this adapter throws gloo::IoException; GlooChannel catches
// everything at its boundary and turns it into an absl::Status.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/data_plane/rendezvous_store.h"
#include "gloo/rendezvous/store.h"

namespace asyncspade::data_plane {

class GlooStoreAdapter : public gloo::rendezvous::Store {
 public:
  // `timeout` bounds every wait that Gloo does not bound itself.
  GlooStoreAdapter(RendezvousStore& store, std::string key_prefix, absl::Duration timeout)
      : store_(store), key_prefix_(std::move(key_prefix)), timeout_(timeout) {}

  void set(const std::string& key, const std::vector<char>& data) override;
  std::vector<char> get(const std::string& key) override;
  void wait(const std::vector<std::string>& keys) override;
  void wait(const std::vector<std::string>& keys, const std::chrono::milliseconds& timeout) override;

  // Full store keys this adapter has set, so that their owner can delete them once the peer has
  // read them.
  std::vector<std::string> keys_set() const;
  // The first store error Gloo saw (as an exception), so that the caller can report its code.
  absl::Status first_error() const;
  const std::string& key_prefix() const { return key_prefix_; }

 private:
  RendezvousStore& store_;
  const std::string key_prefix_;
  const absl::Duration timeout_;
  mutable absl::Mutex mutex_;
  std::vector<std::string> keys_set_ ABSL_GUARDED_BY(mutex_);
  absl::Status first_error_ ABSL_GUARDED_BY(mutex_);

  // Records `status` and throws it as the exception Gloo expects.
  [[noreturn]] void Throw(const absl::Status& status);
};

}  // namespace asyncspade::data_plane
