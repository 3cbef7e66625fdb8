// GlooChannel over real TCP on loopback. Multi-process tests fork the peer; every test uses its own
// temporary store directory and ephemeral ports, so test binaries may run in parallel.
#include "common/data_plane/gloo_channel.h"

#include <signal.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/data_plane/channel_factory.h"
#include "common/data_plane/file_rendezvous_store.h"
#include "common/data_plane/in_memory_rendezvous_store.h"
#include "common/data_plane/message_header.h"
#include "gtest/gtest.h"
#include "tests/unit/common/data_plane/child_process.h"

namespace asyncspade::data_plane {
namespace {

using testing::ChildProcess;
using testing::TempDir;

constexpr ChannelRole kWorker = ChannelRole::kDecodeWorker;
constexpr ChannelRole kSelector = ChannelRole::kSelector;

ChannelSpec Spec(const std::string& id, uint64_t epoch, ChannelRole role, RendezvousStore* store) {
  ChannelSpec spec;
  spec.channel_id = id;
  spec.epoch = epoch;
  spec.role = role;
  spec.store = store;
  spec.connect_timeout = absl::Seconds(20);
  return spec;
}

// Deterministic, never-all-zero content that differs per stream, message and part, so that a
// message delivered to the wrong place or out of order cannot pass for the right one.
void FillPattern(uint64_t stream, uint64_t index, size_t part, std::vector<uint8_t>& out) {
  uint64_t state = (stream * 0x9E3779B97F4A7C15ull) ^ (index * 0xBF58476D1CE4E5B9ull) ^
                   (part * 0x94D049BB133111EBull) ^ 0x5DEECE66Dull;
  for (size_t i = 0; i < out.size(); i += 8) {
    state += 0x9E3779B97F4A7C15ull;
    uint64_t z = state;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    std::memcpy(out.data() + i, &z, std::min<size_t>(8, out.size() - i));
  }
}

// Sizes cover empty parts, one byte, both sides of the inline limit (alone and summed over
// parts), several chunks (4 MB is half a chunk; 20 MB spans three) and multi-part messages.
std::vector<size_t> PartSizes(uint64_t index) {
  static constexpr size_t kSizes[] = {0,     1,     7, 256, 4096, kHeadTransferCapacity / 4,
                                      kHeadTransferCapacity / 2 + 1, kHeadTransferCapacity + 3};
  std::vector<size_t> sizes(1 + index % 3);
  for (size_t p = 0; p < sizes.size(); ++p) sizes[p] = kSizes[(index * 7 + p * 3) % 8];
  if (index % 50 == 13) sizes[0] = 1 << 20;
  if (index % 250 == 17) sizes[0] = 4 << 20;
  if (index == 777) sizes.back() = (20 << 20) + 5;
  return sizes;
}

uint32_t TagFor(uint64_t stream, uint64_t index) {
  return static_cast<uint32_t>((stream << 16) + index % 1000);
}

constexpr uint32_t kDoneTag = 0xD0E;

// Sends `count` messages on one thread while receiving the peer's `count` on this one, checking
// order and content, then exchanges a final message so that neither end closes while the other is
// still reading. Returns 0 on success (usable in the parent and in a child).
int ExchangeMessages(Channel& channel, uint64_t my_stream, uint64_t peer_stream, uint64_t count) {
  std::atomic<bool> send_failed{false};
  std::string send_error;
  std::thread sender([&] {
    for (uint64_t i = 0; i < count; ++i) {
      std::vector<std::vector<uint8_t>> parts;
      std::vector<Buffer> buffers;
      for (size_t bytes : PartSizes(i)) parts.emplace_back(bytes);
      for (size_t p = 0; p < parts.size(); ++p) {
        FillPattern(my_stream, i, p, parts[p]);
        buffers.push_back(Buffer{parts[p].data(), parts[p].size()});
      }
      absl::Status sent = channel.Send(TagFor(my_stream, i), buffers);
      if (!sent.ok()) {
        send_error = sent.ToString();
        send_failed = true;
        return;
      }
    }
  });
  int result = 0;
  std::vector<uint8_t> expected;
  for (uint64_t i = 0; i < count && result == 0; ++i) {
    absl::StatusOr<Message> message = channel.Recv(absl::Seconds(30));
    auto check = [&]() -> int {
      CHILD_CHECK(message.ok(), absl::StrCat("message ", i, ": ", message.status().ToString()));
      CHILD_CHECK(message->tag == TagFor(peer_stream, i), absl::StrCat("tag of message ", i));
      CHILD_CHECK(message->sequence == i, absl::StrCat("sequence ", message->sequence, " for ", i));
      CHILD_CHECK(message->epoch == channel.epoch(), "epoch");
      const std::vector<size_t> sizes = PartSizes(i);
      CHILD_CHECK(message->parts.size() == sizes.size(), absl::StrCat("parts of message ", i));
      for (size_t p = 0; p < sizes.size(); ++p) {
        CHILD_CHECK(message->parts[p].size() == sizes[p], absl::StrCat("size of ", i, "/", p));
        expected.resize(sizes[p]);
        FillPattern(peer_stream, i, p, expected);
        CHILD_CHECK(message->parts[p] == expected, absl::StrCat("content of ", i, "/", p));
      }
      return 0;
    };
    result = check();
  }
  sender.join();
  CHILD_CHECK(!send_failed, send_error);
  if (result != 0) return result;
  // Checked before the final exchange: after it the peer may close at any moment.
  CHILD_CHECK(channel.health().ok(), channel.health().ToString());
  CHILD_CHECK(channel.Send(kDoneTag, {}).ok(), "send done");
  absl::StatusOr<Message> done = channel.Recv(absl::Seconds(30));
  CHILD_CHECK(done.ok() && done->tag == kDoneTag, done.status().ToString());
  const ChannelStats stats = channel.stats();
  CHILD_CHECK(stats.messages_sent == count + 1, absl::StrCat("messages_sent ", stats.messages_sent));
  CHILD_CHECK(stats.messages_received == count + 1,
              absl::StrCat("messages_received ", stats.messages_received));
  CHILD_CHECK(stats.stale_epoch_messages_dropped == 0, "nothing stale");
  return 0;
}

int RunExchangeProcess(const std::string& store_dir, const std::string& id, ChannelRole role,
                       uint64_t count) {
  auto store = FileRendezvousStore::Open(store_dir);
  CHILD_CHECK(store.ok(), store.status().ToString());
  auto channel = CreateChannel(Spec(id, 1, role, store->get()), Transport::kGloo);
  CHILD_CHECK(channel.ok(), channel.status().ToString());
  const uint64_t mine = role == kWorker ? 1 : 2;
  return ExchangeMessages(**channel, mine, 3 - mine, count);
}

TEST(GlooChannelTest, ThousandsOfMessagesFlowBothWaysBetweenTwoProcesses) {
  TempDir dir;
  ASSERT_FALSE(dir.path().empty());
  constexpr uint64_t kMessages = 2000;
  ChildProcess selector = ChildProcess::Fork(
      [&] { return RunExchangeProcess(dir.path(), "exchange", kSelector, kMessages); });
  EXPECT_EQ(RunExchangeProcess(dir.path(), "exchange", kWorker, kMessages), 0);
  EXPECT_EQ(selector.Wait(), 0);
}

TEST(GlooChannelTest, SeveralChannelsBetweenTheSameProcessesAreIndependent) {
  TempDir dir;
  ASSERT_FALSE(dir.path().empty());
  constexpr int kChannels = 3;
  constexpr uint64_t kMessages = 300;
  // Each channel runs on its own thread; the child opens them in the opposite order, which only
  // works if creating one channel never waits for another.
  auto run_all = [&](ChannelRole role) -> int {
    auto store = FileRendezvousStore::Open(dir.path());
    CHILD_CHECK(store.ok(), store.status().ToString());
    std::vector<std::thread> threads;
    std::vector<int> results(kChannels, -1);
    for (int k = 0; k < kChannels; ++k) {
      const int c = role == kWorker ? k : kChannels - 1 - k;
      threads.emplace_back([&, c] {
        auto channel = CreateChannel(Spec(absl::StrCat("multi-", c), 1, role, store->get()),
                                     Transport::kGloo);
        if (!channel.ok()) {
          std::fprintf(stderr, "channel %d: %s\n", c, channel.status().ToString().c_str());
          results[c] = 1;
          return;
        }
        // Streams differ per channel, so a message crossing channels fails the content check.
        const uint64_t mine = 10 * (c + 1) + (role == kWorker ? 1 : 2);
        const uint64_t theirs = 10 * (c + 1) + (role == kWorker ? 2 : 1);
        results[c] = ExchangeMessages(**channel, mine, theirs, kMessages);
      });
      absl::SleepFor(absl::Milliseconds(20));
    }
    for (auto& thread : threads) thread.join();
    for (int c = 0; c < kChannels; ++c) CHILD_CHECK(results[c] == 0, absl::StrCat("channel ", c));
    return 0;
  };
  ChildProcess selector = ChildProcess::Fork([&] { return run_all(kSelector); });
  EXPECT_EQ(run_all(kWorker), 0);
  EXPECT_EQ(selector.Wait(), 0);
}

// The selector process that the next test kills: opens its end, says it is ready, then idles.
int IdleSelector(const std::string& store_dir, const std::string& id, uint64_t epoch,
                 absl::Duration keepalive_interval) {
  auto store = FileRendezvousStore::Open(store_dir);
  CHILD_CHECK(store.ok(), store.status().ToString());
  ChannelSpec spec = Spec(id, epoch, kSelector, store->get());
  spec.keepalive_interval = keepalive_interval;
  spec.peer_timeout = absl::Seconds(60);
  auto channel = CreateChannel(spec, Transport::kGloo);
  CHILD_CHECK(channel.ok(), channel.status().ToString());
  CHILD_CHECK((*channel)->Send(1, {}).ok(), "send ready");
  for (;;) absl::SleepFor(absl::Seconds(1));
}

// Echoes `count` messages back with tag + 1, then waits for the peer to close.
int EchoSelector(const std::string& store_dir, const std::string& id, uint64_t epoch,
                 int count) {
  auto store = FileRendezvousStore::Open(store_dir);
  CHILD_CHECK(store.ok(), store.status().ToString());
  auto channel = CreateChannel(Spec(id, epoch, kSelector, store->get()), Transport::kGloo);
  CHILD_CHECK(channel.ok(), channel.status().ToString());
  for (int i = 0; i < count; ++i) {
    absl::StatusOr<Message> request = (*channel)->Recv(absl::Seconds(20));
    CHILD_CHECK(request.ok(), request.status().ToString());
    std::vector<Buffer> parts;
    for (const auto& part : request->parts) parts.push_back(Buffer{part.data(), part.size()});
    CHILD_CHECK((*channel)->Send(request->tag + 1, parts).ok(), "echo");
  }
  absl::StatusOr<Message> end = (*channel)->Recv(absl::Seconds(20));
  CHILD_CHECK(absl::IsUnavailable(end.status()), end.status().ToString());
  return 0;
}

TEST(GlooChannelTest, KilledPeerTurnsIntoUnavailableAndANewEpochReconnects) {
  TempDir dir;
  ASSERT_FALSE(dir.path().empty());
  auto store = FileRendezvousStore::Open(dir.path());
  ASSERT_TRUE(store.ok()) << store.status();

  ChildProcess first = ChildProcess::Fork([&] { return IdleSelector(dir.path(), "pair", 1, absl::Seconds(1)); });
  ChannelSpec spec = Spec("pair", 1, kWorker, store->get());
  spec.peer_timeout = absl::Seconds(60);  // death must be seen from the connection, not silence
  auto old_channel = CreateChannel(spec, Transport::kGloo);
  ASSERT_TRUE(old_channel.ok()) << old_channel.status();
  ASSERT_TRUE((*old_channel)->Recv(absl::Seconds(20)).ok());

  first.Signal(SIGKILL);
  const absl::Time killed = absl::Now();
  absl::StatusOr<Message> after_death = (*old_channel)->Recv(absl::Seconds(30));
  const absl::Duration noticed = absl::Now() - killed;
  EXPECT_EQ(after_death.status().code(), absl::StatusCode::kUnavailable) << after_death.status();
  EXPECT_NE(after_death.status().message().find("'pair' epoch 1"), std::string::npos)
      << after_death.status();
  EXPECT_LT(noticed, absl::Seconds(5));
  std::printf("killed peer noticed after %.1f ms\n", absl::ToDoubleMilliseconds(noticed));
  const uint8_t byte = 1;
  const Buffer part{&byte, 1};
  EXPECT_EQ((*old_channel)->Send(2, {&part, 1}).code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(first.Wait(), 128 + SIGKILL);
  (*old_channel)->Close();

  // The replacement selector gets a new epoch; the old epoch's channel stays dead.
  ChildProcess second =
      ChildProcess::Fork([&] { return EchoSelector(dir.path(), "pair", 2, 100); });
  auto new_channel = CreateChannel(Spec("pair", 2, kWorker, store->get()), Transport::kGloo);
  ASSERT_TRUE(new_channel.ok()) << new_channel.status();
  for (uint32_t i = 0; i < 100; ++i) {
    std::vector<uint8_t> payload(1 + i * 100);
    FillPattern(7, i, 0, payload);
    const Buffer request{payload.data(), payload.size()};
    ASSERT_TRUE((*new_channel)->Send(2 * i, {&request, 1}).ok());
    absl::StatusOr<Message> reply = (*new_channel)->Recv(absl::Seconds(20));
    ASSERT_TRUE(reply.ok()) << reply.status();
    EXPECT_EQ(reply->tag, 2 * i + 1);
    EXPECT_EQ(reply->epoch, 2u);
    ASSERT_EQ(reply->parts.size(), 1u);
    EXPECT_EQ(reply->parts[0], payload);
  }
  (*new_channel)->Close();
  EXPECT_EQ(second.Wait(), 0);
}

TEST(GlooChannelTest, HungPeerIsDeclaredGoneAfterThePeerTimeout) {
  TempDir dir;
  ASSERT_FALSE(dir.path().empty());
  auto store = FileRendezvousStore::Open(dir.path());
  ASSERT_TRUE(store.ok()) << store.status();
  ChildProcess peer = ChildProcess::Fork([&] {
    return IdleSelector(dir.path(), "hung", 1, absl::Milliseconds(100));
  });
  ChannelSpec spec = Spec("hung", 1, kWorker, store->get());
  spec.keepalive_interval = absl::Milliseconds(200);
  spec.peer_timeout = absl::Milliseconds(1500);
  auto channel = CreateChannel(spec, Transport::kGloo);
  ASSERT_TRUE(channel.ok()) << channel.status();
  ASSERT_TRUE((*channel)->Recv(absl::Seconds(20)).ok());

  // A stopped process keeps its connection open (the kernel still acknowledges), so only the
  // missing keepalives can reveal it.
  peer.Signal(SIGSTOP);
  const absl::Time stopped = absl::Now();
  absl::StatusOr<Message> result = (*channel)->Recv(absl::Seconds(30));
  const absl::Duration noticed = absl::Now() - stopped;
  EXPECT_EQ(result.status().code(), absl::StatusCode::kUnavailable) << result.status();
  EXPECT_NE(result.status().message().find("sent nothing"), std::string::npos) << result.status();
  EXPECT_GE(noticed, absl::Milliseconds(1000));
  EXPECT_LT(noticed, absl::Seconds(5));
  std::printf("stopped peer declared gone after %.1f ms (peer_timeout 1500 ms)\n",
              absl::ToDoubleMilliseconds(noticed));
  peer.Signal(SIGKILL);
  peer.Signal(SIGCONT);
  EXPECT_EQ(peer.Wait(), 128 + SIGKILL);
}

// Both ends in this process: each Create blocks until the other end exists.
struct ChannelPair {
  std::unique_ptr<Channel> worker;
  std::unique_ptr<Channel> selector;
};

ChannelPair OpenPair(const ChannelSpec& worker_spec, const ChannelSpec& selector_spec) {
  auto selector = std::async(std::launch::async,
                             [&] { return CreateChannel(selector_spec, Transport::kGloo); });
  auto worker = CreateChannel(worker_spec, Transport::kGloo);
  auto selector_result = selector.get();
  EXPECT_TRUE(worker.ok()) << worker.status();
  EXPECT_TRUE(selector_result.ok()) << selector_result.status();
  ChannelPair pair;
  if (worker.ok()) pair.worker = *std::move(worker);
  if (selector_result.ok()) pair.selector = *std::move(selector_result);
  return pair;
}

ChannelPair OpenPair(RendezvousStore& store, const std::string& id, uint64_t epoch) {
  return OpenPair(Spec(id, epoch, kWorker, &store), Spec(id, epoch, kSelector, &store));
}

TEST(GlooChannelTest, RecvTimeoutIsDeadlineExceededAndTheChannelStaysUsable) {
  InMemoryRendezvousStore store;
  ChannelPair pair = OpenPair(store, "timeout", 1);
  ASSERT_TRUE(pair.worker && pair.selector);
  const absl::Time start = absl::Now();
  absl::StatusOr<Message> nothing = pair.worker->Recv(absl::Milliseconds(100));
  EXPECT_EQ(nothing.status().code(), absl::StatusCode::kDeadlineExceeded) << nothing.status();
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(100));
  EXPECT_EQ(pair.worker->Recv(absl::ZeroDuration()).status().code(),
            absl::StatusCode::kDeadlineExceeded);

  const uint32_t value = 0xC0FFEE;
  const Buffer part{&value, sizeof(value)};
  ASSERT_TRUE(pair.selector->Send(5, {&part, 1}).ok());
  absl::StatusOr<Message> message = pair.worker->Recv(absl::Seconds(10));
  ASSERT_TRUE(message.ok()) << message.status();
  EXPECT_EQ(message->tag, 5u);
  ASSERT_EQ(message->parts.size(), 1u);
  uint32_t received = 0;
  ASSERT_EQ(message->parts[0].size(), sizeof(received));
  std::memcpy(&received, message->parts[0].data(), sizeof(received));
  EXPECT_EQ(received, value);
  EXPECT_TRUE(pair.worker->health().ok());
  EXPECT_EQ(store.size(), 0u) << "rendezvous keys are removed after the handshake";
}

TEST(GlooChannelTest, CloseDeliversWhatWasSentThenTheOtherEndIsUnavailable) {
  InMemoryRendezvousStore store;
  ChannelPair pair = OpenPair(store, "close", 1);
  ASSERT_TRUE(pair.worker && pair.selector);
  for (uint32_t i = 0; i < 3; ++i) {
    const Buffer part{&i, sizeof(i)};
    ASSERT_TRUE(pair.worker->Send(i, {&part, 1}).ok());
  }
  pair.worker->Close();
  EXPECT_EQ(pair.worker->Send(9, {}).code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(pair.worker->Recv(absl::ZeroDuration()).status().code(), absl::StatusCode::kCancelled);
  pair.worker->Close();  // idempotent

  for (uint32_t i = 0; i < 3; ++i) {
    absl::StatusOr<Message> message = pair.selector->Recv(absl::Seconds(10));
    ASSERT_TRUE(message.ok()) << message.status();
    EXPECT_EQ(message->tag, i);
  }
  absl::StatusOr<Message> end = pair.selector->Recv(absl::Seconds(10));
  EXPECT_EQ(end.status().code(), absl::StatusCode::kUnavailable) << end.status();
  EXPECT_NE(end.status().message().find("closed the channel"), std::string::npos) << end.status();
  EXPECT_EQ(pair.selector->Send(1, {}).code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(pair.selector->health().code(), absl::StatusCode::kUnavailable);
}

TEST(GlooChannelTest, CloseUnblocksAWaitingRecv) {
  InMemoryRendezvousStore store;
  ChannelPair pair = OpenPair(store, "unblock", 1);
  ASSERT_TRUE(pair.worker && pair.selector);
  auto waiting = std::async(std::launch::async,
                            [&] { return pair.worker->Recv(absl::InfiniteDuration()); });
  absl::SleepFor(absl::Milliseconds(100));
  pair.worker->Close();
  EXPECT_EQ(waiting.get().status().code(), absl::StatusCode::kCancelled);
}

// Records every key the channels touch, to show which epoch's keys they use.
class RecordingStore : public RendezvousStore {
 public:
  absl::Status Set(const std::string& key, const std::string& value) override {
    Record(key);
    return inner_.Set(key, value);
  }
  absl::StatusOr<std::string> Get(const std::string& key, absl::Duration timeout) override {
    Record(key);
    return inner_.Get(key, timeout);
  }
  absl::Status Delete(const std::string& key) override { return inner_.Delete(key); }
  std::vector<std::string> TakeKeys() {
    absl::MutexLock lock(&mutex_);
    return std::move(keys_);
  }
  InMemoryRendezvousStore& inner() { return inner_; }

 private:
  void Record(const std::string& key) {
    absl::MutexLock lock(&mutex_);
    keys_.push_back(key);
  }
  InMemoryRendezvousStore inner_;
  absl::Mutex mutex_;
  std::vector<std::string> keys_;
};

TEST(GlooChannelTest, ANewEpochUsesOnlyItsOwnKeysAndDropsOtherEpochsTraffic) {
  RecordingStore store;
  ChannelPair first = OpenPair(store, "epochs", 1);
  ASSERT_TRUE(first.worker && first.selector);
  for (const std::string& key : store.TakeKeys()) {
    EXPECT_EQ(key.rfind("asyncspade/data_plane/epochs/epoch-1/", 0), 0u) << key;
  }
  // The selector is replaced: its old end goes away, the worker's old end notices.
  first.selector->Close();
  EXPECT_EQ(first.worker->Recv(absl::Seconds(10)).status().code(),
            absl::StatusCode::kUnavailable);

  // A leftover process still at epoch 1 finds nobody: epoch 1 is never reused.
  ChannelSpec stale = Spec("epochs", 1, kSelector, &store);
  stale.connect_timeout = absl::Milliseconds(300);
  auto stale_channel = std::async(std::launch::async,
                                  [&] { return CreateChannel(stale, Transport::kGloo); });

  ChannelPair second = OpenPair(store, "epochs", 2);
  ASSERT_TRUE(second.worker && second.selector);
  EXPECT_EQ(stale_channel.get().status().code(), absl::StatusCode::kDeadlineExceeded);
  for (const std::string& key : store.TakeKeys()) {
    const bool epoch2 = key.rfind("asyncspade/data_plane/epochs/epoch-2/", 0) == 0;
    const bool stale_attempt = key.rfind("asyncspade/data_plane/epochs/epoch-1/", 0) == 0;
    EXPECT_TRUE(epoch2 || stale_attempt) << key;
  }

  // Traffic that carries epoch 1 (as a replaced peer's would) is counted and dropped; the
  // sequence of the current epoch is unaffected.
  const uint32_t stale_value = 111, fresh_value = 222;
  const Buffer stale_part{&stale_value, sizeof(stale_value)};
  const Buffer fresh_part{&fresh_value, sizeof(fresh_value)};
  auto* selector = dynamic_cast<GlooChannel*>(second.selector.get());
  ASSERT_NE(selector, nullptr);
  ASSERT_TRUE(selector->SendWithEpochForTesting(7, {&stale_part, 1}, /*epoch=*/1).ok());
  ASSERT_TRUE(selector->Send(8, {&fresh_part, 1}).ok());
  absl::StatusOr<Message> message = second.worker->Recv(absl::Seconds(10));
  ASSERT_TRUE(message.ok()) << message.status();
  EXPECT_EQ(message->tag, 8u);
  EXPECT_EQ(message->epoch, 2u);
  EXPECT_EQ(message->sequence, 0u);
  EXPECT_EQ(second.worker->stats().stale_epoch_messages_dropped, 1u);
  EXPECT_EQ(second.worker->stats().messages_received, 1u);
  EXPECT_EQ(second.worker->Recv(absl::Milliseconds(50)).status().code(),
            absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(store.inner().size(), 0u) << "the failed stale attempt removed its keys too";
}

TEST(GlooChannelTest, IdleChannelsStayUpOnKeepalives) {
  InMemoryRendezvousStore store;
  ChannelSpec worker = Spec("idle", 1, kWorker, &store);
  ChannelSpec selector = Spec("idle", 1, kSelector, &store);
  for (ChannelSpec* spec : {&worker, &selector}) {
    spec->keepalive_interval = absl::Milliseconds(50);
    spec->peer_timeout = absl::Milliseconds(1000);
  }
  ChannelPair pair = OpenPair(worker, selector);
  ASSERT_TRUE(pair.worker && pair.selector);
  absl::SleepFor(absl::Milliseconds(1500));  // idle for longer than the peer timeout
  EXPECT_TRUE(pair.worker->health().ok()) << pair.worker->health();
  EXPECT_TRUE(pair.selector->health().ok()) << pair.selector->health();
  EXPECT_GT(pair.worker->stats().keepalives_received, 5u);
  EXPECT_GT(pair.selector->stats().keepalives_sent, 5u);
  EXPECT_EQ(pair.worker->stats().messages_received, 0u) << "keepalives are not user messages";
  EXPECT_EQ(pair.worker->Recv(absl::ZeroDuration()).status().code(),
            absl::StatusCode::kDeadlineExceeded);
}

TEST(GlooChannelTest, InvalidSendsAreRefusedWithoutHarmingTheChannel) {
  InMemoryRendezvousStore store;
  ChannelSpec worker = Spec("invalid", 1, kWorker, &store);
  worker.max_message_bytes = 1000;
  ChannelPair pair = OpenPair(worker, Spec("invalid", 1, kSelector, &store));
  ASSERT_TRUE(pair.worker && pair.selector);
  EXPECT_EQ(pair.worker->Send(kFirstReservedTag, {}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(pair.worker->Send(kKeepaliveTag, {}).code(), absl::StatusCode::kInvalidArgument);
  std::vector<uint8_t> big(1001, 1);
  const Buffer big_part{big.data(), big.size()};
  EXPECT_EQ(pair.worker->Send(1, {&big_part, 1}).code(), absl::StatusCode::kInvalidArgument);
  const Buffer no_data{nullptr, 10};
  EXPECT_EQ(pair.worker->Send(1, {&no_data, 1}).code(), absl::StatusCode::kInvalidArgument);
  std::vector<Buffer> too_many(kMaxPartsPerMessage + 1);
  EXPECT_EQ(pair.worker->Send(1, too_many).code(), absl::StatusCode::kInvalidArgument);

  ASSERT_TRUE(pair.worker->Send(3, {}).ok());
  absl::StatusOr<Message> message = pair.selector->Recv(absl::Seconds(10));
  ASSERT_TRUE(message.ok()) << message.status();
  EXPECT_EQ(message->tag, 3u);
  EXPECT_EQ(message->sequence, 0u) << "refused sends take no sequence number";
  EXPECT_TRUE(message->parts.empty());
}

TEST(GlooChannelTest, CreateWithoutAPeerTimesOut) {
  InMemoryRendezvousStore store;
  ChannelSpec spec = Spec("lonely", 1, kWorker, &store);
  spec.connect_timeout = absl::Milliseconds(300);
  const absl::Time start = absl::Now();
  auto channel = CreateChannel(spec, Transport::kGloo);
  EXPECT_EQ(channel.status().code(), absl::StatusCode::kDeadlineExceeded) << channel.status();
  EXPECT_NE(channel.status().message().find("'lonely' epoch 1"), std::string::npos)
      << channel.status();
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
}

TEST(GlooChannelTest, BadSpecsAreInvalidArguments) {
  InMemoryRendezvousStore store;
  ChannelSpec no_store = Spec("x", 1, kWorker, nullptr);
  EXPECT_EQ(CreateChannel(no_store, Transport::kGloo).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CreateChannel(Spec("bad id", 1, kWorker, &store), Transport::kGloo).status().code(),
            absl::StatusCode::kInvalidArgument);
  ChannelSpec bad_timeouts = Spec("x", 1, kWorker, &store);
  bad_timeouts.keepalive_interval = absl::Seconds(5);
  bad_timeouts.peer_timeout = absl::Seconds(6);
  EXPECT_EQ(CreateChannel(bad_timeouts, Transport::kGloo).status().code(),
            absl::StatusCode::kInvalidArgument);
  ChannelSpec bad_host = Spec("x", 1, kWorker, &store);
  bad_host.host = "192.0.2.1";  // TEST-NET-1: an address of no local interface
  EXPECT_EQ(CreateChannel(bad_host, Transport::kGloo).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store.size(), 0u);
}

TEST(ChannelFactoryTest, NcclIsNotBuiltYet) {
  InMemoryRendezvousStore store;
  EXPECT_EQ(CreateChannel(Spec("x", 1, kWorker, &store), Transport::kNccl).status().code(),
            absl::StatusCode::kUnimplemented);
}

TEST(ChannelFactoryTest, TransportNamesParse) {
  EXPECT_EQ(*ParseTransport("gloo"), Transport::kGloo);
  EXPECT_EQ(*ParseTransport("nccl"), Transport::kNccl);
  EXPECT_EQ(ParseTransport("tcp").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_STREQ(TransportName(Transport::kGloo), "gloo");
}

}  // namespace
}  // namespace asyncspade::data_plane
