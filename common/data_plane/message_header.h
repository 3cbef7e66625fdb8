// The wire format of one data-plane message, shared by every transport.
//
// A message is a "head transfer" followed, unless its payload is inline, by one transfer per chunk
// of each non-empty part:
//
//   head transfer (at most kHeadTransferCapacity bytes, little-endian):
//     offset  size  field
//          0     4  magic "ASDP"
//          4     2  wire version (kWireVersion)
//          6     2  flags (bit 0: payload inline, right after the part sizes)
//          8     4  tag
//         12     4  number of parts n
//         16     8  epoch of the sender's channel
//         24     8  sequence number (per direction; control messages carry the next user number)
//         32     8  channel fingerprint (FNV-1a of the channel id)
//         40     8  bytes of this head transfer (header + part sizes + inline payload)
//         48   8*n  byte size of each part
//     48+8*n     …  the parts back to back, when inline
//
//   payload transfers: each non-empty part in chunks of at most kTransferChunkBytes, in order.
//
// The receiver always has a head transfer of full capacity posted, so a message whose head fits is
// delivered in a single transfer with no round trip; larger payloads cost one round trip (the
// receiver learns their sizes from the head before it can post receives for them).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/data_plane/channel.h"

namespace asyncspade::data_plane {

inline constexpr uint32_t kWireMagic = 0x50445341;  // "ASDP" in little-endian byte order
inline constexpr uint16_t kWireVersion = 1;
inline constexpr size_t kFixedHeaderBytes = 48;
inline constexpr size_t kHeadTransferCapacity = 256 * 1024;
inline constexpr size_t kMaxPartsPerMessage = 1024;
// Large parts are cut into chunks so that each transfer completes (and shows the peer alive)
// within a bounded time even on a slow link.
inline constexpr size_t kTransferChunkBytes = 8u << 20;
inline constexpr uint16_t kFlagInlinePayload = 1;

// Control messages of the channel itself (never delivered to users).
inline constexpr uint32_t kHelloTag = kFirstReservedTag + 1;
inline constexpr uint32_t kKeepaliveTag = kFirstReservedTag + 2;
inline constexpr uint32_t kGoodbyeTag = kFirstReservedTag + 3;

struct MessageHeader {
  uint32_t tag = 0;
  uint16_t flags = 0;
  uint64_t epoch = 0;
  uint64_t sequence = 0;
  uint64_t channel_fingerprint = 0;
  uint64_t head_bytes = 0;
  std::vector<uint64_t> part_bytes;

  bool payload_inline() const { return (flags & kFlagInlinePayload) != 0; }
  uint64_t payload_bytes() const;
};

// FNV-1a of the channel id: stable across processes and builds.
uint64_t ChannelFingerprint(const std::string& channel_id);

// Bytes of a head transfer carrying `part_bytes` sizes (and the parts themselves when inline).
size_t HeadBytes(absl::Span<const uint64_t> part_bytes, bool payload_inline);

struct EncodedHead {
  size_t bytes = 0;             // length of the head transfer written
  bool payload_inline = false;  // false: the parts follow as payload transfers
};

// Writes the head transfer of a message into `out`. The payload goes inline whenever it fits.
// `header.flags`, `header.head_bytes` and `header.part_bytes` are derived from `parts`, not read.
absl::StatusOr<EncodedHead> EncodeHead(const MessageHeader& header, absl::Span<const Buffer> parts,
                                       absl::Span<uint8_t> out);

// Parses and validates a head transfer. The inline payload, when present, starts at
// `kFixedHeaderBytes + 8 * part_bytes.size()` in `head`. Errors are DATA_LOSS.
absl::StatusOr<MessageHeader> DecodeHead(absl::Span<const uint8_t> head);

// The (offset, length) chunks a part of `part_bytes` bytes travels in.
std::vector<std::pair<size_t, size_t>> PartChunks(uint64_t part_bytes);

}  // namespace asyncspade::data_plane
