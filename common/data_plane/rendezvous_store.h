// The key-value store the two ends of a data-plane channel use to exchange connection addresses
// before they can talk directly. Implementations: in-process (tests), a shared directory (tests
// across processes on one machine) and, later, the controller's gRPC control plane. The interface
// is deliberately three calls so that a remote implementation is easy.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace asyncspade::data_plane {

class RendezvousStore {
 public:
  virtual ~RendezvousStore() = default;

  // Stores `value` under `key`, replacing any previous value.
  virtual absl::Status Set(const std::string& key, const std::string& value) = 0;

  // Returns the value of `key`, waiting until some process sets it. DEADLINE_EXCEEDED when it is
  // still absent after `timeout`.
  virtual absl::StatusOr<std::string> Get(const std::string& key, absl::Duration timeout) = 0;

  // Removes `key`; a missing key is not an error.
  virtual absl::Status Delete(const std::string& key) = 0;
};

// Every key a channel uses starts with this prefix. It contains the channel id and the epoch, so a
// re-created channel (new epoch) can never read an address published for an older one.
std::string ChannelKeyPrefix(const std::string& channel_id, uint64_t epoch);

// Channel ids become part of keys and file names: 1 to 200 characters of [A-Za-z0-9._:/~-] (the
// controller names a pair "<decode worker>~<selector>").
absl::Status ValidateChannelId(const std::string& channel_id);

}  // namespace asyncspade::data_plane
