#include "common/data_plane/rendezvous_store.h"

#include <memory>
#include <string>
#include <thread>

#include "absl/time/clock.h"
#include "common/data_plane/file_rendezvous_store.h"
#include "common/data_plane/in_memory_rendezvous_store.h"
#include "gtest/gtest.h"
#include "tests/unit/common/data_plane/child_process.h"

namespace asyncspade::data_plane {
namespace {

using testing::ChildProcess;
using testing::TempDir;

// Both implementations must behave the same; each test runs against each.
class RendezvousStoreTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (GetParam() == "memory") {
      store_ = std::make_unique<InMemoryRendezvousStore>();
    } else {
      ASSERT_FALSE(dir_.path().empty());
      auto store = FileRendezvousStore::Open(dir_.path() + "/store");
      ASSERT_TRUE(store.ok()) << store.status();
      store_ = *std::move(store);
    }
  }
  TempDir dir_;
  std::unique_ptr<RendezvousStore> store_;
};

TEST_P(RendezvousStoreTest, GetReturnsWhatSetStored) {
  const std::string binary("addr\0with\xffzero", 14);
  ASSERT_TRUE(store_->Set("asyncspade/data_plane/x/epoch-1/0", binary).ok());
  absl::StatusOr<std::string> value = store_->Get("asyncspade/data_plane/x/epoch-1/0",
                                                  absl::Seconds(1));
  ASSERT_TRUE(value.ok()) << value.status();
  EXPECT_EQ(*value, binary);
}

TEST_P(RendezvousStoreTest, SetReplacesAndDeleteRemoves) {
  ASSERT_TRUE(store_->Set("k", "first").ok());
  ASSERT_TRUE(store_->Set("k", "second").ok());
  EXPECT_EQ(*store_->Get("k", absl::Seconds(1)), "second");
  ASSERT_TRUE(store_->Delete("k").ok());
  EXPECT_TRUE(store_->Delete("k").ok()) << "deleting a missing key is not an error";
  EXPECT_EQ(store_->Get("k", absl::Milliseconds(20)).status().code(),
            absl::StatusCode::kDeadlineExceeded);
}

TEST_P(RendezvousStoreTest, GetOfAMissingKeyTimesOutNamingTheKey) {
  const absl::Time start = absl::Now();
  absl::StatusOr<std::string> value = store_->Get("never/set", absl::Milliseconds(100));
  const absl::Duration waited = absl::Now() - start;
  EXPECT_EQ(value.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_NE(value.status().message().find("never/set"), std::string::npos) << value.status();
  EXPECT_GE(waited, absl::Milliseconds(100));
  EXPECT_LT(waited, absl::Seconds(5));
}

TEST_P(RendezvousStoreTest, GetWaitsForALaterSet) {
  std::thread setter([this] {
    absl::SleepFor(absl::Milliseconds(100));
    ASSERT_TRUE(store_->Set("late", "value").ok());
  });
  absl::StatusOr<std::string> value = store_->Get("late", absl::Seconds(10));
  setter.join();
  ASSERT_TRUE(value.ok()) << value.status();
  EXPECT_EQ(*value, "value");
}

TEST_P(RendezvousStoreTest, KeysThatDifferOnlyInEscapedCharactersStayApart) {
  ASSERT_TRUE(store_->Set("a/b", "slash").ok());
  ASSERT_TRUE(store_->Set("a%2Fb", "percent").ok());
  ASSERT_TRUE(store_->Set("a_b", "underscore").ok());
  EXPECT_EQ(*store_->Get("a/b", absl::Seconds(1)), "slash");
  EXPECT_EQ(*store_->Get("a%2Fb", absl::Seconds(1)), "percent");
  EXPECT_EQ(*store_->Get("a_b", absl::Seconds(1)), "underscore");
}

TEST_P(RendezvousStoreTest, VeryLongKeysWork) {
  const std::string long_a = std::string(400, 'k') + "a";
  const std::string long_b = std::string(400, 'k') + "b";
  ASSERT_TRUE(store_->Set(long_a, "A").ok());
  ASSERT_TRUE(store_->Set(long_b, "B").ok());
  EXPECT_EQ(*store_->Get(long_a, absl::Seconds(1)), "A");
  EXPECT_EQ(*store_->Get(long_b, absl::Seconds(1)), "B");
}

INSTANTIATE_TEST_SUITE_P(Implementations, RendezvousStoreTest,
                         ::testing::Values("memory", "file"),
                         [](const auto& info) { return info.param; });

TEST(FileRendezvousStoreTest, AnotherProcessSeesTheValue) {
  TempDir dir;
  ASSERT_FALSE(dir.path().empty());
  ChildProcess child = ChildProcess::Fork([&] {
    auto store = FileRendezvousStore::Open(dir.path());
    CHILD_CHECK(store.ok(), store.status().ToString());
    absl::StatusOr<std::string> question = (*store)->Get("question", absl::Seconds(20));
    CHILD_CHECK(question.ok(), question.status().ToString());
    CHILD_CHECK(*question == "ping", *question);
    CHILD_CHECK((*store)->Set("answer", "pong").ok(), "set answer");
    return 0;
  });
  auto store = FileRendezvousStore::Open(dir.path());
  ASSERT_TRUE(store.ok()) << store.status();
  absl::SleepFor(absl::Milliseconds(50));
  ASSERT_TRUE((*store)->Set("question", "ping").ok());
  absl::StatusOr<std::string> answer = (*store)->Get("answer", absl::Seconds(20));
  ASSERT_TRUE(answer.ok()) << answer.status();
  EXPECT_EQ(*answer, "pong");
  EXPECT_EQ(child.Wait(), 0);
}

TEST(FileRendezvousStoreTest, OpenRefusesAPathThatIsAFile) {
  TempDir dir;
  ASSERT_FALSE(dir.path().empty());
  auto store = FileRendezvousStore::Open(dir.path());
  ASSERT_TRUE(store.ok());
  ASSERT_TRUE((*store)->Set("file", "x").ok());
  auto bad = FileRendezvousStore::Open((*store)->PathForKey("file"));
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ChannelKeyTest, PrefixNamesChannelAndEpoch) {
  EXPECT_EQ(ChannelKeyPrefix("decode-0:selector-1", 3), "asyncspade/data_plane/decode-0:selector-1/epoch-3/");
  EXPECT_NE(ChannelKeyPrefix("c", 1), ChannelKeyPrefix("c", 2));
}

TEST(ChannelKeyTest, ChannelIdsAreValidated) {
  EXPECT_TRUE(ValidateChannelId("decode-0:selector-1").ok());
  EXPECT_TRUE(ValidateChannelId("a/b.c_d").ok());
  EXPECT_EQ(ValidateChannelId("").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidateChannelId("has space").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidateChannelId(std::string(201, 'x')).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace asyncspade::data_plane
