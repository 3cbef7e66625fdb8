// The data-plane messages between a decode worker and a KV selector (selector.proto): part 0 is the
// serialized header of the message's tag, further parts are raw little-endian tensors the header
// describes. Both ends encode and decode through these helpers so that the checks (part count,
// tensor sizes) are the same on both sides.
//
//   tag          header       parts after the header
//   HELLO        Hello        -
//   APPEND_KEYS  AppendKeys   keys f32 [num_tokens][num_kv_heads][head_dim]
//   SELECT       Select       new keys f32 [n][num_kv_heads][head_dim], queries f32 [n][num_heads][head_dim]
//   DETACH       Detach       -
//   SELECTION    Selection    positions i32 [n][num_kv_heads][budget] (-1 past counts)
//   ERROR        Error        -
//   GOODBYE      Error        - (sequence_id -1, message: why)
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "asyncspade/selector/v1/selector.pb.h"
#include "common/data_plane/channel.h"
#include "google/protobuf/message_lite.h"

namespace asyncspade::selector_wire {

using Parts = std::vector<std::vector<uint8_t>>;

// "HELLO", "SELECT", ... ("tag 42" for unknown tags).
std::string TagName(uint32_t tag);

// Starts a message: part 0 = the serialized header.
Parts Encode(const google::protobuf::MessageLite& header);

template <typename T>
void AppendTensor(Parts* parts, const T* data, size_t count) {
  std::vector<uint8_t> bytes(count * sizeof(T));
  if (count > 0) std::memcpy(bytes.data(), data, bytes.size());
  parts->push_back(std::move(bytes));
}

// Parses part 0 into `header` and checks the message has `expected_parts` parts in all.
// INVALID_ARGUMENT naming the tag otherwise.
absl::Status DecodeHeader(const data_plane::Message& message, size_t expected_parts,
                          google::protobuf::MessageLite* header);

absl::Status TensorSizeError(const data_plane::Message& message, size_t part, size_t expected_bytes);

// Part `part` as `count` elements of T. INVALID_ARGUMENT when its size differs.
template <typename T>
absl::Status DecodeTensor(const data_plane::Message& message, size_t part, size_t count, std::vector<T>* out) {
  if (part >= message.parts.size() || message.parts[part].size() != count * sizeof(T)) {
    return TensorSizeError(message, part, count * sizeof(T));
  }
  out->resize(count);
  if (count > 0) std::memcpy(out->data(), message.parts[part].data(), count * sizeof(T));
  return absl::OkStatus();
}

}  // namespace asyncspade::selector_wire
