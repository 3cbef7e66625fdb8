#include "common/data_plane/rendezvous_store.h"

#include "absl/strings/str_cat.h"

namespace asyncspade::data_plane {

std::string ChannelKeyPrefix(const std::string& channel_id, uint64_t epoch) {
  return absl::StrCat("asyncspade/data_plane/", channel_id, "/epoch-", epoch, "/");
}

absl::Status ValidateChannelId(const std::string& channel_id) {
  constexpr size_t kMaxLength = 200;
  if (channel_id.empty() || channel_id.size() > kMaxLength) {
    return absl::InvalidArgumentError(
        absl::StrCat("data-plane channel id '", channel_id, "' has ", channel_id.size(),
                     " characters; it needs 1 to ", kMaxLength));
  }
  for (char c : channel_id) {
    const bool allowed = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                         (c >= '0' && c <= '9') || c == '.' || c == '_' || c == ':' || c == '/' ||
                         c == '-' || c == '~';
    if (!allowed) {
      return absl::InvalidArgumentError(
          absl::StrCat("data-plane channel id '", channel_id,
                       "' contains a character outside [A-Za-z0-9._:/~-]; use e.g. "
                       "'decode-0:selector-1'"));
    }
  }
  return absl::OkStatus();
}

}  // namespace asyncspade::data_plane
