#include "services/kv_selector/service/selector_wire.h"

#include "absl/strings/str_cat.h"

namespace asyncspade::selector_wire {

std::string TagName(uint32_t tag) {
  switch (tag) {
    case selector::v1::MESSAGE_TAG_HELLO: return "HELLO";
    case selector::v1::MESSAGE_TAG_APPEND_KEYS: return "APPEND_KEYS";
    case selector::v1::MESSAGE_TAG_SELECT: return "SELECT";
    case selector::v1::MESSAGE_TAG_DETACH: return "DETACH";
    case selector::v1::MESSAGE_TAG_SELECTION: return "SELECTION";
    case selector::v1::MESSAGE_TAG_ERROR: return "ERROR";
    case selector::v1::MESSAGE_TAG_GOODBYE: return "GOODBYE";
    default: break;
  }
  return absl::StrCat("tag ", tag);
}

Parts Encode(const google::protobuf::MessageLite& header) {
  Parts parts(1);
  const std::string bytes = header.SerializeAsString();
  parts[0].assign(bytes.begin(), bytes.end());
  return parts;
}

absl::Status DecodeHeader(const data_plane::Message& message, size_t expected_parts,
                          google::protobuf::MessageLite* header) {
  if (message.parts.size() != expected_parts) {
    return absl::InvalidArgumentError(absl::StrCat(TagName(message.tag), " message #", message.sequence, " has ",
                                                   message.parts.size(), " parts; expected ", expected_parts,
                                                   " (header + tensors, see selector.proto)"));
  }
  if (!header->ParseFromArray(message.parts[0].data(), static_cast<int>(message.parts[0].size()))) {
    return absl::InvalidArgumentError(absl::StrCat(TagName(message.tag), " message #", message.sequence,
                                                   ": part 0 is not a valid ", header->GetTypeName(), " header"));
  }
  return absl::OkStatus();
}

absl::Status TensorSizeError(const data_plane::Message& message, size_t part, size_t expected_bytes) {
  const size_t got = part < message.parts.size() ? message.parts[part].size() : 0;
  return absl::InvalidArgumentError(absl::StrCat(TagName(message.tag), " message #", message.sequence, ": part ", part,
                                                 " has ", got, " bytes; the header describes ", expected_bytes));
}

}  // namespace asyncspade::selector_wire
