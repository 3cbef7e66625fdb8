#include "common/data_plane/channel_factory.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "common/data_plane/gloo_channel.h"

namespace asyncspade::data_plane {

absl::Status ValidateChannelSpec(const ChannelSpec& spec) {
  absl::Status id_status = ValidateChannelId(spec.channel_id);
  if (!id_status.ok()) return id_status;
  const std::string where = absl::StrCat("data-plane channel '", spec.channel_id, "': ");
  if (spec.role != ChannelRole::kDecodeWorker && spec.role != ChannelRole::kSelector) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, "role must be decode worker (rank 0) or kv selector (rank 1)"));
  }
  if (spec.store == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, "no rendezvous store given; pass the store both ends share"));
  }
  if (spec.host.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, "host is empty; give the IP address or host name to listen on"));
  }
  if (spec.connect_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat(where, "connect_timeout must be positive"));
  }
  if (spec.peer_timeout < absl::ZeroDuration() ||
      (spec.peer_timeout > absl::ZeroDuration() &&
       (spec.keepalive_interval <= absl::ZeroDuration() ||
        spec.peer_timeout < 2 * spec.keepalive_interval))) {
    return absl::InvalidArgumentError(absl::StrCat(
        where, "peer_timeout (", absl::FormatDuration(spec.peer_timeout),
        ") must be zero (disabled) or at least twice a positive keepalive_interval (",
        absl::FormatDuration(spec.keepalive_interval), ")"));
  }
  if (spec.max_message_bytes == 0) {
    return absl::InvalidArgumentError(absl::StrCat(where, "max_message_bytes must be positive"));
  }
  return absl::OkStatus();
}

const char* TransportName(Transport transport) {
  switch (transport) {
    case Transport::kGloo:
      return "gloo";
    case Transport::kNccl:
      return "nccl";
  }
  return "unknown";
}

absl::StatusOr<Transport> ParseTransport(absl::string_view name) {
  if (name == "gloo") return Transport::kGloo;
  if (name == "nccl") return Transport::kNccl;
  return absl::InvalidArgumentError(absl::StrCat("unknown data-plane transport '",
                                                 std::string(name),
                                                 "'; use 'gloo' (CPU, TCP) or 'nccl' (GPU)"));
}

absl::StatusOr<std::unique_ptr<Channel>> CreateChannel(const ChannelSpec& spec,
                                                       Transport transport) {
  switch (transport) {
    case Transport::kGloo: {
      absl::StatusOr<std::unique_ptr<GlooChannel>> channel = GlooChannel::Create(spec);
      if (!channel.ok()) return channel.status();
      return std::unique_ptr<Channel>(std::move(*channel));
    }
    case Transport::kNccl:
      return absl::UnimplementedError(absl::StrCat(
          "data-plane channel '", spec.channel_id,
          "': the NCCL transport is not built yet; use transport 'gloo'"));
  }
  return absl::InvalidArgumentError("unknown data-plane transport");
}

}  // namespace asyncspade::data_plane
