// The one way the rest of the code opens a data-plane channel. Which transport carries it is a
// deployment setting; callers never depend on it.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/data_plane/channel.h"
#include "common/data_plane/channel_spec.h"

namespace asyncspade::data_plane {

enum class Transport {
  kGloo,  // TCP through Gloo; host memory; works everywhere
  kNccl,  // GPU to GPU through NCCL (not built yet)
};

const char* TransportName(Transport transport);
// Accepts "gloo" and "nccl".
absl::StatusOr<Transport> ParseTransport(absl::string_view name);

// Blocks until the peer has opened its end of the same channel (same id and epoch, the other
// role) and the handshake completed, or `spec.connect_timeout` passed (DEADLINE_EXCEEDED).
absl::StatusOr<std::unique_ptr<Channel>> CreateChannel(const ChannelSpec& spec,
                                                       Transport transport);

}  // namespace asyncspade::data_plane
