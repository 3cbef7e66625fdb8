// What a process needs to open its end of one data-plane channel. The controller hands both ends
// the same id, epoch and store; each end passes its own role and host.
#pragma once

#include <cstdint>
#include <string>

#include "absl/time/time.h"
#include "common/data_plane/channel.h"
#include "common/data_plane/rendezvous_store.h"

namespace asyncspade::data_plane {

struct ChannelSpec {
  // Names the (decode worker, selector) pair; see ValidateChannelId().
  std::string channel_id;
  // Bumped whenever the pair's channel is re-created (e.g. a selector was replaced).
  uint64_t epoch = 0;
  // Rank 0 is the decode worker, rank 1 the selector.
  ChannelRole role = ChannelRole::kDecodeWorker;
  // Exchanges connection addresses. Not owned; only used while the channel is being created.
  RendezvousStore* store = nullptr;
  // Interface this end listens on, as an IP address or a host name that resolves to it. The peer
  // must be able to reach it.
  std::string host = "127.0.0.1";
  // Bounds each step of creation: waiting for the peer's address, connecting, the handshake.
  absl::Duration connect_timeout = absl::Seconds(30);
  // An idle sender sends a keepalive this often, so that the receiver can tell idle from hung.
  absl::Duration keepalive_interval = absl::Seconds(1);
  // A peer that sends nothing (not even a keepalive) for this long is declared gone: the channel
  // fails with UNAVAILABLE. Must exceed keepalive_interval by a good margin. Zero disables
  // keepalives and this check (then only a closed or reset connection is noticed).
  absl::Duration peer_timeout = absl::Seconds(10);
  // Larger incoming messages fail the channel (DATA_LOSS); larger outgoing ones are refused
  // (INVALID_ARGUMENT). Split bulk copies into several messages.
  uint64_t max_message_bytes = uint64_t{1} << 30;
};

// Checks the fields that do not depend on the transport.
absl::Status ValidateChannelSpec(const ChannelSpec& spec);

}  // namespace asyncspade::data_plane
