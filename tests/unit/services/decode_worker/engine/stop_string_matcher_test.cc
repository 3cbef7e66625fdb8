#include "services/decode_worker/engine/stop_string_matcher.h"

#include <gtest/gtest.h>

namespace asyncspade {
namespace {

std::string Feed(StopStringMatcher* m, const std::vector<std::string>& pieces, bool* stopped) {
  std::string shown;
  *stopped = false;
  for (size_t i = 0; i < pieces.size() && !*stopped; ++i) {
    auto r = m->Push(pieces[i], i + 1 == pieces.size());
    shown += r.visible;
    *stopped = r.stopped;
  }
  return shown;
}

TEST(StopStringMatcherTest, StopStringSplitAcrossPiecesIsNeverShown) {
  StopStringMatcher m({"</end>"});
  bool stopped;
  EXPECT_EQ(Feed(&m, {"Hello <", "/en", "d> world"}, &stopped), "Hello ");
  EXPECT_TRUE(stopped);
}

TEST(StopStringMatcherTest, HeldBackPrefixIsReleasedWhenItDiverges) {
  StopStringMatcher m({"abc"});
  auto r1 = m.Push("xxab", false);
  EXPECT_EQ(r1.visible, "xx");  // "ab" might start "abc"
  auto r2 = m.Push("d", false);
  EXPECT_EQ(r2.visible, "abd");
  EXPECT_FALSE(r2.stopped);
}

TEST(StopStringMatcherTest, FinalPushReleasesEverything) {
  StopStringMatcher m({"abc"});
  EXPECT_EQ(m.Push("zab", false).visible, "z");
  auto r = m.Push("", true);
  EXPECT_EQ(r.visible, "ab");
  EXPECT_FALSE(r.stopped);
}

TEST(StopStringMatcherTest, EarliestOfSeveralStopStringsWins) {
  StopStringMatcher m({"world", "lo w"});
  bool stopped;
  EXPECT_EQ(Feed(&m, {"hel", "lo world"}, &stopped), "hel");
  EXPECT_TRUE(stopped);
}

TEST(StopStringMatcherTest, WithoutStopStringsEverythingPassesThrough) {
  StopStringMatcher m({});
  EXPECT_EQ(m.Push("abc", false).visible, "abc");
  StopStringMatcher empty_only({""});
  EXPECT_EQ(empty_only.Push("abc", false).visible, "abc");
}

}  // namespace
}  // namespace asyncspade
