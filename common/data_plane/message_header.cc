#include "common/data_plane/message_header.h"

#include <bit>
#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace asyncspade::data_plane {
namespace {

static_assert(std::endian::native == std::endian::little,
              "the data-plane wire format is little-endian; add byte swapping for this CPU");

template <typename T>
void Put(uint8_t* out, size_t offset, T value) {
  std::memcpy(out + offset, &value, sizeof(T));
}

template <typename T>
T Take(const uint8_t* in, size_t offset) {
  T value;
  std::memcpy(&value, in + offset, sizeof(T));
  return value;
}

}  // namespace

uint64_t MessageHeader::payload_bytes() const {
  uint64_t total = 0;
  for (uint64_t bytes : part_bytes) total += bytes;
  return total;
}

uint64_t ChannelFingerprint(const std::string& channel_id) {
  uint64_t hash = 0xcbf29ce484222325ull;
  for (unsigned char c : channel_id) {
    hash ^= c;
    hash *= 0x100000001b3ull;
  }
  return hash;
}

size_t HeadBytes(absl::Span<const uint64_t> part_bytes, bool payload_inline) {
  size_t bytes = kFixedHeaderBytes + 8 * part_bytes.size();
  if (payload_inline) {
    for (uint64_t part : part_bytes) bytes += part;
  }
  return bytes;
}

absl::StatusOr<EncodedHead> EncodeHead(const MessageHeader& header,
                                       absl::Span<const Buffer> parts, absl::Span<uint8_t> out) {
  if (parts.size() > kMaxPartsPerMessage) {
    return absl::InvalidArgumentError(absl::StrCat("a data-plane message has ", parts.size(),
                                                   " parts; at most ", kMaxPartsPerMessage,
                                                   " are allowed: concatenate small parts"));
  }
  std::vector<uint64_t> sizes;
  sizes.reserve(parts.size());
  for (const Buffer& part : parts) sizes.push_back(part.bytes);
  const bool payload_inline = HeadBytes(sizes, /*payload_inline=*/true) <= out.size();
  const size_t head_bytes = HeadBytes(sizes, payload_inline);
  if (head_bytes > out.size()) {
    return absl::InvalidArgumentError(absl::StrCat("data-plane message head needs ", head_bytes,
                                                   " bytes; the buffer has ", out.size()));
  }
  uint8_t* p = out.data();
  Put<uint32_t>(p, 0, kWireMagic);
  Put<uint16_t>(p, 4, kWireVersion);
  Put<uint16_t>(p, 6, payload_inline ? kFlagInlinePayload : 0);
  Put<uint32_t>(p, 8, header.tag);
  Put<uint32_t>(p, 12, static_cast<uint32_t>(parts.size()));
  Put<uint64_t>(p, 16, header.epoch);
  Put<uint64_t>(p, 24, header.sequence);
  Put<uint64_t>(p, 32, header.channel_fingerprint);
  Put<uint64_t>(p, 40, head_bytes);
  size_t offset = kFixedHeaderBytes;
  for (uint64_t size : sizes) {
    Put<uint64_t>(p, offset, size);
    offset += 8;
  }
  if (payload_inline) {
    for (const Buffer& part : parts) {
      if (part.bytes > 0) std::memcpy(p + offset, part.data, part.bytes);
      offset += part.bytes;
    }
  }
  return EncodedHead{head_bytes, payload_inline};
}

absl::StatusOr<MessageHeader> DecodeHead(absl::Span<const uint8_t> head) {
  if (head.size() < kFixedHeaderBytes) {
    return absl::DataLossError(absl::StrCat("data-plane message head has ", head.size(),
                                            " bytes, fewer than the fixed header's ",
                                            kFixedHeaderBytes));
  }
  const uint8_t* p = head.data();
  const uint32_t magic = Take<uint32_t>(p, 0);
  if (magic != kWireMagic) {
    return absl::DataLossError(absl::StrCat(
        "data-plane message does not start with the magic 'ASDP' (got 0x", absl::Hex(magic),
        "): the peer is not an asyncspade data-plane endpoint"));
  }
  const uint16_t version = Take<uint16_t>(p, 4);
  if (version != kWireVersion) {
    return absl::DataLossError(absl::StrCat("data-plane wire version ", version,
                                            " from the peer; this build speaks version ",
                                            kWireVersion, ": run the same release on both ends"));
  }
  MessageHeader header;
  header.flags = Take<uint16_t>(p, 6);
  header.tag = Take<uint32_t>(p, 8);
  const uint32_t num_parts = Take<uint32_t>(p, 12);
  header.epoch = Take<uint64_t>(p, 16);
  header.sequence = Take<uint64_t>(p, 24);
  header.channel_fingerprint = Take<uint64_t>(p, 32);
  header.head_bytes = Take<uint64_t>(p, 40);
  if ((header.flags & ~kFlagInlinePayload) != 0) {
    return absl::DataLossError(absl::StrCat("data-plane message has unknown flags 0x",
                                            absl::Hex(header.flags)));
  }
  if (num_parts > kMaxPartsPerMessage) {
    return absl::DataLossError(absl::StrCat("data-plane message claims ", num_parts,
                                            " parts; at most ", kMaxPartsPerMessage, " exist"));
  }
  const size_t sizes_end = kFixedHeaderBytes + 8 * size_t{num_parts};
  if (sizes_end > head.size()) {
    return absl::DataLossError(absl::StrCat("data-plane message head is truncated: ", num_parts,
                                            " part sizes need ", sizes_end, " bytes, got ",
                                            head.size()));
  }
  header.part_bytes.reserve(num_parts);
  for (size_t i = 0; i < num_parts; ++i) {
    header.part_bytes.push_back(Take<uint64_t>(p, kFixedHeaderBytes + 8 * i));
  }
  // Sizes come from the network: check the sum cannot wrap before trusting it.
  uint64_t payload = 0;
  for (uint64_t bytes : header.part_bytes) {
    if (bytes > (uint64_t{1} << 48) || payload + bytes < payload) {
      return absl::DataLossError(absl::StrCat("data-plane message part of ", bytes,
                                              " bytes is impossible"));
    }
    payload += bytes;
  }
  const uint64_t expected_head = HeadBytes(header.part_bytes, header.payload_inline());
  if (header.head_bytes != expected_head || expected_head > head.size()) {
    return absl::DataLossError(absl::StrCat(
        "data-plane message head claims ", header.head_bytes, " bytes; its parts imply ",
        expected_head, " and ", head.size(), " arrived"));
  }
  return header;
}

std::vector<std::pair<size_t, size_t>> PartChunks(uint64_t part_bytes) {
  std::vector<std::pair<size_t, size_t>> chunks;
  for (uint64_t offset = 0; offset < part_bytes; offset += kTransferChunkBytes) {
    chunks.emplace_back(offset, std::min<uint64_t>(kTransferChunkBytes, part_bytes - offset));
  }
  return chunks;
}

}  // namespace asyncspade::data_plane
