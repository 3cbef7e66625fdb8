#include "common/config/closest_name.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace asyncspade {
namespace {

const std::vector<std::string> kKeys = {"page_size", "blocks", "memory_fraction"};

TEST(ClosestNameTest, FindsTyposTranspositionsAndSpellingVariants) {
  EXPECT_EQ(ClosestName("blokcs", kKeys), "blocks");        // transposition
  EXPECT_EQ(ClosestName("block", kKeys), "blocks");         // deletion
  EXPECT_EQ(ClosestName("page-size", kKeys), "page_size");  // dash for underscore
  EXPECT_EQ(ClosestName("Memory_Fraction", kKeys), "memory_fraction");
  EXPECT_EQ(ClosestName("memory_fractoin", kKeys), "memory_fraction");
}

TEST(ClosestNameTest, NothingWhenNoCandidateIsPlausible) {
  EXPECT_FALSE(ClosestName("replicas", kKeys).has_value());
  EXPECT_FALSE(ClosestName("x", kKeys).has_value());
  EXPECT_FALSE(ClosestName("blocks", {}).has_value());
  EXPECT_EQ(DidYouMean("replicas", kKeys), "");
}

TEST(ClosestNameTest, PicksTheNearest) {
  EXPECT_EQ(ClosestName("quest", {"dense", "quest", "oracle", "asyncspade"}), "quest");
  EXPECT_EQ(ClosestName("oracel", {"dense", "quest", "oracle", "asyncspade"}), "oracle");
  EXPECT_EQ(DidYouMean("blcks", kKeys), " (did you mean 'blocks'?)");
}

TEST(ClosestNameTest, JoinsAlternativesForMessages) {
  EXPECT_EQ(JoinAlternatives({"a"}), "a");
  EXPECT_EQ(JoinAlternatives({"a", "b"}), "a or b");
  EXPECT_EQ(JoinAlternatives({"a", "b", "c"}), "a, b or c");
}

}  // namespace
}  // namespace asyncspade
