// The hand-over between the engine loop and a stream's handler: text is written in whole UTF-8
// characters, tokens and text arrive together, the final message comes once.
#include "services/decode_worker/service/active_request.h"

#include <thread>

#include "gtest/gtest.h"

namespace asyncspade {
namespace {

TEST(CompleteUtf8PrefixTest, HoldsBackOnlyAnUnfinishedCharacter) {
  EXPECT_EQ(CompleteUtf8Prefix(""), 0u);
  EXPECT_EQ(CompleteUtf8Prefix("abc"), 3u);
  const std::string euro = "\xE2\x82\xAC";        // €, 3 bytes
  const std::string smile = "\xF0\x9F\x98\x80";  // 😀, 4 bytes
  EXPECT_EQ(CompleteUtf8Prefix("a" + euro), 4u);
  EXPECT_EQ(CompleteUtf8Prefix("a" + euro.substr(0, 1)), 1u);
  EXPECT_EQ(CompleteUtf8Prefix("a" + euro.substr(0, 2)), 1u);
  EXPECT_EQ(CompleteUtf8Prefix("ab" + smile.substr(0, 3)), 2u);
  EXPECT_EQ(CompleteUtf8Prefix(smile), 4u);
  EXPECT_EQ(CompleteUtf8Prefix("\xC3"), 0u);           // lead byte of é alone
  EXPECT_EQ(CompleteUtf8Prefix("x\xC3\xA9"), 3u);      // é complete
  EXPECT_EQ(CompleteUtf8Prefix("x\x80"), 2u) << "a stray continuation byte is not waited for";
}

TEST(ActiveRequestTest, TakeJoinsTokensAndSplitsTextOnlyAtCharacterBoundaries) {
  TranslatedRequest translated;
  ActiveRequest request("r1", 7, translated, absl::Now());
  request.Append(10, "h\xE2\x82");
  ActiveRequest::Output first = request.Take(absl::ZeroDuration());
  EXPECT_EQ(first.token_ids, std::vector<int32_t>{10});
  EXPECT_EQ(first.text, "h");
  EXPECT_FALSE(first.final.has_value());
  request.Append(11, "\xAC!");
  ActiveRequest::Output second = request.Take(absl::ZeroDuration());
  EXPECT_EQ(second.token_ids, std::vector<int32_t>{11});
  EXPECT_EQ(second.text, "\xE2\x82\xAC!");

  // The end flushes whatever is held back, once.
  request.Append(12, "\xF0\x9F");
  serving::v1::GenerateFinal final;
  final.set_finish_reason(serving::v1::FINISH_REASON_LENGTH);
  request.Finish(final);
  EXPECT_TRUE(request.finished());
  ActiveRequest::Output last = request.Take(absl::ZeroDuration());
  EXPECT_EQ(last.text, "\xF0\x9F");
  ASSERT_TRUE(last.final.has_value());
  EXPECT_EQ(last.final->finish_reason(), serving::v1::FINISH_REASON_LENGTH);
  EXPECT_FALSE(request.Take(absl::ZeroDuration()).final.has_value());
}

TEST(ActiveRequestTest, TakeWaitsForOutputAndWakesWhenItComes) {
  TranslatedRequest translated;
  ActiveRequest request("r2", 8, translated, absl::Now());
  EXPECT_TRUE(request.Take(absl::Milliseconds(5)).token_ids.empty());
  std::thread producer([&] {
    absl::SleepFor(absl::Milliseconds(20));
    request.Append(3, "x");
  });
  const absl::Time start = absl::Now();
  ActiveRequest::Output output = request.Take(absl::Seconds(10));
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  EXPECT_EQ(output.token_ids, std::vector<int32_t>{3});
  producer.join();
}

}  // namespace
}  // namespace asyncspade
