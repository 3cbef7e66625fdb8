#include "common/data_plane/channel.h"

namespace asyncspade::data_plane {

const char* ChannelRoleName(ChannelRole role) {
  switch (role) {
    case ChannelRole::kDecodeWorker:
      return "decode worker";
    case ChannelRole::kSelector:
      return "kv selector";
  }
  return "unknown role";
}

size_t Message::payload_bytes() const {
  size_t total = 0;
  for (const auto& part : parts) total += part.size();
  return total;
}

}  // namespace asyncspade::data_plane
