#include "common/data_plane/message_header.h"

#include <cstring>
#include <numeric>
#include <vector>

#include "gtest/gtest.h"

namespace asyncspade::data_plane {
namespace {

std::vector<uint8_t> Pattern(size_t bytes, uint8_t seed) {
  std::vector<uint8_t> data(bytes);
  for (size_t i = 0; i < bytes; ++i) data[i] = static_cast<uint8_t>(seed + 31 * i + (i >> 8));
  return data;
}

MessageHeader SampleHeader() {
  MessageHeader header;
  header.tag = 0x1234;
  header.epoch = 7;
  header.sequence = 99;
  header.channel_fingerprint = ChannelFingerprint("decode-0:selector-1");
  return header;
}

TEST(MessageHeaderTest, SmallPayloadTravelsInlineAndRoundTrips) {
  const std::vector<uint8_t> a = Pattern(1, 3), b = Pattern(0, 0), c = Pattern(1000, 9);
  const Buffer parts[] = {{a.data(), a.size()}, {b.data(), b.size()}, {c.data(), c.size()}};
  std::vector<uint8_t> head(kHeadTransferCapacity, 0xEE);
  absl::StatusOr<EncodedHead> encoded = EncodeHead(SampleHeader(), parts, absl::MakeSpan(head));
  ASSERT_TRUE(encoded.ok()) << encoded.status();
  EXPECT_TRUE(encoded->payload_inline);
  EXPECT_EQ(encoded->bytes, kFixedHeaderBytes + 3 * 8 + 1001);

  absl::StatusOr<MessageHeader> decoded = DecodeHead(head);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(decoded->tag, 0x1234u);
  EXPECT_EQ(decoded->epoch, 7u);
  EXPECT_EQ(decoded->sequence, 99u);
  EXPECT_EQ(decoded->channel_fingerprint, ChannelFingerprint("decode-0:selector-1"));
  EXPECT_TRUE(decoded->payload_inline());
  EXPECT_EQ(decoded->part_bytes, (std::vector<uint64_t>{1, 0, 1000}));
  const uint8_t* payload = head.data() + kFixedHeaderBytes + 3 * 8;
  EXPECT_EQ(0, std::memcmp(payload, a.data(), 1));
  EXPECT_EQ(0, std::memcmp(payload + 1, c.data(), 1000));
}

TEST(MessageHeaderTest, PayloadThatDoesNotFitTravelsSeparately) {
  const std::vector<uint8_t> big = Pattern(kHeadTransferCapacity, 1);
  const Buffer parts[] = {{big.data(), big.size()}};
  std::vector<uint8_t> head(kHeadTransferCapacity);
  absl::StatusOr<EncodedHead> encoded = EncodeHead(SampleHeader(), parts, absl::MakeSpan(head));
  ASSERT_TRUE(encoded.ok()) << encoded.status();
  EXPECT_FALSE(encoded->payload_inline);
  EXPECT_EQ(encoded->bytes, kFixedHeaderBytes + 8);
  absl::StatusOr<MessageHeader> decoded = DecodeHead(head);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_FALSE(decoded->payload_inline());
  EXPECT_EQ(decoded->payload_bytes(), kHeadTransferCapacity);
}

TEST(MessageHeaderTest, LargestInlinePayloadIsExactlyTheCapacity) {
  const size_t fits = kHeadTransferCapacity - kFixedHeaderBytes - 8;
  const std::vector<uint8_t> exact = Pattern(fits, 2), over = Pattern(fits + 1, 2);
  std::vector<uint8_t> head(kHeadTransferCapacity);
  const Buffer exact_part[] = {{exact.data(), exact.size()}};
  const Buffer over_part[] = {{over.data(), over.size()}};
  EXPECT_TRUE(EncodeHead(SampleHeader(), exact_part, absl::MakeSpan(head))->payload_inline);
  EXPECT_FALSE(EncodeHead(SampleHeader(), over_part, absl::MakeSpan(head))->payload_inline);
}

TEST(MessageHeaderTest, TooManyPartsAreRefused) {
  std::vector<Buffer> parts(kMaxPartsPerMessage + 1);
  std::vector<uint8_t> head(kHeadTransferCapacity);
  absl::StatusOr<EncodedHead> encoded = EncodeHead(SampleHeader(), parts, absl::MakeSpan(head));
  EXPECT_EQ(encoded.status().code(), absl::StatusCode::kInvalidArgument);
}

class CorruptHeadTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::vector<uint8_t> data = Pattern(10, 5);
    const Buffer parts[] = {{data.data(), data.size()}};
    head_.assign(kHeadTransferCapacity, 0);
    ASSERT_TRUE(EncodeHead(SampleHeader(), parts, absl::MakeSpan(head_)).ok());
    ASSERT_TRUE(DecodeHead(head_).ok());
  }
  template <typename T>
  void Overwrite(size_t offset, T value) {
    std::memcpy(head_.data() + offset, &value, sizeof(T));
  }
  absl::StatusCode DecodeCode() { return DecodeHead(head_).status().code(); }
  std::vector<uint8_t> head_;
};

TEST_F(CorruptHeadTest, WrongMagicIsDataLoss) {
  Overwrite<uint32_t>(0, 0xDEADBEEF);
  EXPECT_EQ(DecodeCode(), absl::StatusCode::kDataLoss);
}

TEST_F(CorruptHeadTest, OtherWireVersionIsDataLoss) {
  Overwrite<uint16_t>(4, kWireVersion + 1);
  EXPECT_EQ(DecodeCode(), absl::StatusCode::kDataLoss);
}

TEST_F(CorruptHeadTest, UnknownFlagIsDataLoss) {
  Overwrite<uint16_t>(6, 0x8001);
  EXPECT_EQ(DecodeCode(), absl::StatusCode::kDataLoss);
}

TEST_F(CorruptHeadTest, TooManyPartsIsDataLoss) {
  Overwrite<uint32_t>(12, kMaxPartsPerMessage + 1);
  EXPECT_EQ(DecodeCode(), absl::StatusCode::kDataLoss);
}

TEST_F(CorruptHeadTest, HeadLengthThatDisagreesWithPartsIsDataLoss) {
  Overwrite<uint64_t>(40, kFixedHeaderBytes + 8 + 11);
  EXPECT_EQ(DecodeCode(), absl::StatusCode::kDataLoss);
}

TEST_F(CorruptHeadTest, InlinePayloadLargerThanTheHeadIsDataLoss) {
  Overwrite<uint64_t>(kFixedHeaderBytes, kHeadTransferCapacity);
  Overwrite<uint64_t>(40, kFixedHeaderBytes + 8 + kHeadTransferCapacity);
  EXPECT_EQ(DecodeCode(), absl::StatusCode::kDataLoss);
}

TEST_F(CorruptHeadTest, ImpossiblePartSizeIsDataLoss) {
  Overwrite<uint16_t>(6, 0);  // not inline: the size alone must be rejected
  Overwrite<uint64_t>(kFixedHeaderBytes, ~uint64_t{0});
  Overwrite<uint64_t>(40, kFixedHeaderBytes + 8);
  EXPECT_EQ(DecodeCode(), absl::StatusCode::kDataLoss);
}

TEST_F(CorruptHeadTest, TruncatedHeadIsDataLoss) {
  EXPECT_EQ(DecodeHead(absl::MakeConstSpan(head_).subspan(0, kFixedHeaderBytes - 1)).status().code(),
            absl::StatusCode::kDataLoss);
  EXPECT_EQ(DecodeHead(absl::MakeConstSpan(head_).subspan(0, kFixedHeaderBytes + 4)).status().code(),
            absl::StatusCode::kDataLoss);
}

TEST(MessageHeaderTest, PartsAreCutIntoChunksThatCoverThemExactly) {
  EXPECT_TRUE(PartChunks(0).empty());
  EXPECT_EQ(PartChunks(1), (std::vector<std::pair<size_t, size_t>>{{0, 1}}));
  const uint64_t bytes = 2 * kTransferChunkBytes + 5;
  const auto chunks = PartChunks(bytes);
  ASSERT_EQ(chunks.size(), 3u);
  uint64_t next = 0;
  for (const auto& [offset, length] : chunks) {
    EXPECT_EQ(offset, next);
    EXPECT_LE(length, kTransferChunkBytes);
    next += length;
  }
  EXPECT_EQ(next, bytes);
}

TEST(MessageHeaderTest, FingerprintDependsOnTheChannelId) {
  EXPECT_EQ(ChannelFingerprint("a"), ChannelFingerprint("a"));
  EXPECT_NE(ChannelFingerprint("decode-0:selector-0"), ChannelFingerprint("decode-0:selector-1"));
}

}  // namespace
}  // namespace asyncspade::data_plane
