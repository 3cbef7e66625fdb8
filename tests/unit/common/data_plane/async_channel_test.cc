#include "common/data_plane/async_channel.h"

#include <signal.h>

#include <atomic>
#include <cstring>
#include <functional>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/data_plane/channel_factory.h"
#include "common/data_plane/file_rendezvous_store.h"
#include "gtest/gtest.h"
#include "tests/unit/common/data_plane/child_process.h"

namespace asyncspade::data_plane {
namespace {

using testing::ChildProcess;
using testing::TempDir;

// A Channel whose sends block until the test opens the gate, so that queueing is observable, and
// whose incoming messages and failures the test injects.
class FakeChannel : public Channel {
 public:
  const std::string& id() const override { return id_; }
  uint64_t epoch() const override { return 1; }
  ChannelRole role() const override { return ChannelRole::kDecodeWorker; }
  std::string peer_description() const override { return "fake peer"; }

  absl::Status Send(uint32_t tag, absl::Span<const Buffer> parts) override {
    absl::MutexLock lock(&mutex_);
    mutex_.Await(absl::Condition(
        +[](FakeChannel* self) ABSL_NO_THREAD_SAFETY_ANALYSIS {
          return self->gate_open_ || self->closed_ || !self->failure_.ok();
        },
        this));
    if (closed_) return absl::CancelledError("fake closed");
    if (!failure_.ok()) return failure_;
    Message message;
    message.tag = tag;
    for (const Buffer& part : parts) {
      const auto* bytes = static_cast<const uint8_t*>(part.data);
      message.parts.emplace_back(bytes, bytes + part.bytes);
    }
    sent_.push_back(std::move(message));
    return absl::OkStatus();
  }

  absl::StatusOr<Message> Recv(absl::Duration timeout) override {
    absl::MutexLock lock(&mutex_);
    mutex_.AwaitWithTimeout(absl::Condition(
                                +[](FakeChannel* self) ABSL_NO_THREAD_SAFETY_ANALYSIS {
                                  return !self->incoming_.empty() || self->closed_ ||
                                         !self->failure_.ok();
                                },
                                this),
                            timeout);
    if (closed_) return absl::CancelledError("fake closed");
    if (!incoming_.empty()) {
      Message message = std::move(incoming_.front());
      incoming_.pop_front();
      return message;
    }
    if (!failure_.ok()) return failure_;
    return absl::DeadlineExceededError("fake timeout");
  }

  void Close() override {
    absl::MutexLock lock(&mutex_);
    closed_ = true;
  }
  absl::Status health() const override {
    absl::MutexLock lock(&mutex_);
    return failure_;
  }
  ChannelStats stats() const override { return {}; }

  void OpenGate() {
    absl::MutexLock lock(&mutex_);
    gate_open_ = true;
  }
  void Inject(uint32_t tag, std::string text) {
    absl::MutexLock lock(&mutex_);
    Message message;
    message.tag = tag;
    message.parts.emplace_back(text.begin(), text.end());
    incoming_.push_back(std::move(message));
  }
  void FailWith(absl::Status status) {
    absl::MutexLock lock(&mutex_);
    failure_ = std::move(status);
  }
  std::vector<Message> sent() {
    absl::MutexLock lock(&mutex_);
    return sent_;
  }
  size_t sent_count() {
    absl::MutexLock lock(&mutex_);
    return sent_.size();
  }

 private:
  const std::string id_ = "fake";
  mutable absl::Mutex mutex_;
  bool gate_open_ = false;
  bool closed_ = false;
  absl::Status failure_;
  std::deque<Message> incoming_;
  std::vector<Message> sent_;
};

std::string Text(const Message& message) {
  std::string text;
  for (const auto& part : message.parts) text.append(part.begin(), part.end());
  return text;
}

bool WaitUntil(const std::function<bool()>& condition, absl::Duration timeout = absl::Seconds(10)) {
  const absl::Time deadline = absl::Now() + timeout;
  while (!condition()) {
    if (absl::Now() > deadline) return false;
    absl::SleepFor(absl::Milliseconds(1));
  }
  return true;
}

TEST(AsyncChannelTest, SendReturnsAtOnceWhileTheTransportIsBlockedAndKeepsOrder) {
  auto fake = std::make_unique<FakeChannel>();
  FakeChannel* transport = fake.get();
  AsyncChannel channel(std::move(fake));
  for (int i = 0; i < 100; ++i) {
    const std::string text = absl::StrCat("message ", i);
    const Buffer part{text.data(), text.size()};
    ASSERT_TRUE(channel.Send(i, {&part, 1}).ok());  // the transport is blocked: only queued
  }
  EXPECT_EQ(transport->sent_count(), 0u);
  EXPECT_EQ(channel.stats().queued_send_messages, 100u);
  EXPECT_EQ(channel.Flush(absl::Milliseconds(20)).code(), absl::StatusCode::kDeadlineExceeded);

  transport->OpenGate();
  ASSERT_TRUE(channel.Flush(absl::Seconds(10)).ok());
  const std::vector<Message> sent = transport->sent();
  ASSERT_EQ(sent.size(), 100u);
  for (int i = 0; i < 100; ++i) {
    EXPECT_EQ(sent[i].tag, static_cast<uint32_t>(i));
    EXPECT_EQ(Text(sent[i]), absl::StrCat("message ", i));
  }
  EXPECT_EQ(channel.stats().queued_send_messages, 0u);
  EXPECT_EQ(channel.stats().queued_send_bytes, 0u);
}

TEST(AsyncChannelTest, SendCopiesSoTheCallerMayReuseItsBuffer) {
  auto fake = std::make_unique<FakeChannel>();
  FakeChannel* transport = fake.get();
  AsyncChannel channel(std::move(fake));
  std::string scratch = "first";
  const Buffer part{scratch.data(), scratch.size()};
  ASSERT_TRUE(channel.Send(1, {&part, 1}).ok());
  scratch = "XXXXX";
  transport->OpenGate();
  ASSERT_TRUE(channel.Flush(absl::Seconds(10)).ok());
  EXPECT_EQ(Text(transport->sent().at(0)), "first");
  const Buffer no_data{nullptr, 4};
  EXPECT_EQ(channel.Send(2, {&no_data, 1}).code(), absl::StatusCode::kInvalidArgument);
}

TEST(AsyncChannelTest, AFullQueueIsResourceExhausted) {
  AsyncChannelOptions options;
  options.max_queued_send_bytes = 1000;
  auto fake = std::make_unique<FakeChannel>();
  FakeChannel* transport = fake.get();
  AsyncChannel channel(std::move(fake), options);
  std::vector<std::vector<uint8_t>> parts;
  parts.emplace_back(600, 7);
  ASSERT_TRUE(channel.Send(1, parts).ok());
  // The sender thread may already hold the first message; fill until refused either way.
  absl::Status status;
  int accepted = 1;
  for (int i = 0; i < 5 && status.ok(); ++i) {
    status = channel.Send(2, parts);
    if (status.ok()) ++accepted;
  }
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted) << status;
  EXPECT_LE(accepted, 3);
  transport->OpenGate();
  ASSERT_TRUE(channel.Flush(absl::Seconds(10)).ok());
  EXPECT_TRUE(channel.Send(3, parts).ok()) << "space frees up once messages go out";
}

TEST(AsyncChannelTest, ReceivedMessagesArePolledWithoutWaiting) {
  auto fake = std::make_unique<FakeChannel>();
  FakeChannel* transport = fake.get();
  AsyncChannel channel(std::move(fake));
  EXPECT_FALSE(channel.TryRecv().has_value());
  EXPECT_TRUE(channel.DrainReceived().empty());
  transport->Inject(1, "a");
  transport->Inject(2, "bb");
  transport->Inject(3, "ccc");
  ASSERT_TRUE(WaitUntil([&] { return channel.stats().queued_received_messages == 3; }));
  EXPECT_EQ(channel.stats().queued_received_bytes, 6u);
  std::optional<Message> first = channel.TryRecv();
  ASSERT_TRUE(first.has_value());
  EXPECT_EQ(first->tag, 1u);
  std::vector<Message> rest = channel.DrainReceived();
  ASSERT_EQ(rest.size(), 2u);
  EXPECT_EQ(Text(rest[0]), "bb");
  EXPECT_EQ(Text(rest[1]), "ccc");
  EXPECT_FALSE(channel.TryRecv().has_value());
  EXPECT_EQ(channel.Recv(absl::Milliseconds(10)).status().code(),
            absl::StatusCode::kDeadlineExceeded);
}

TEST(AsyncChannelTest, CallbackGetsMessagesInOrder) {
  absl::Mutex mutex;
  std::vector<uint32_t> tags;
  AsyncChannelOptions options;
  options.on_message = [&](Message message) {
    absl::MutexLock lock(&mutex);
    tags.push_back(message.tag);
  };
  auto fake = std::make_unique<FakeChannel>();
  FakeChannel* transport = fake.get();
  AsyncChannel channel(std::move(fake), options);
  for (uint32_t i = 0; i < 50; ++i) transport->Inject(i, "x");
  ASSERT_TRUE(WaitUntil([&] {
    absl::MutexLock lock(&mutex);
    return tags.size() == 50;
  }));
  for (uint32_t i = 0; i < 50; ++i) EXPECT_EQ(tags[i], i);
  EXPECT_FALSE(channel.TryRecv().has_value()) << "callback mode queues nothing";
}

TEST(AsyncChannelTest, AFailureIsReportedAfterTheMessagesBeforeIt) {
  auto fake = std::make_unique<FakeChannel>();
  FakeChannel* transport = fake.get();
  AsyncChannel channel(std::move(fake));
  transport->Inject(1, "last words");
  transport->FailWith(absl::UnavailableError("peer died"));
  absl::StatusOr<Message> message = channel.Recv(absl::Seconds(10));
  ASSERT_TRUE(message.ok()) << message.status();
  EXPECT_EQ(Text(*message), "last words");
  EXPECT_EQ(channel.Recv(absl::Seconds(10)).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(channel.health().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(channel.Send(1, std::vector<std::vector<uint8_t>>{}).code(),
            absl::StatusCode::kUnavailable);
}

TEST(AsyncChannelTest, CloseGivesUpOnABlockedTransportAndRefusesLaterSends) {
  auto fake = std::make_unique<FakeChannel>();
  AsyncChannel channel(std::move(fake));
  ASSERT_TRUE(channel.Send(1, std::vector<std::vector<uint8_t>>{}).ok());
  const absl::Time start = absl::Now();
  channel.Close(absl::Milliseconds(50));
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  EXPECT_EQ(channel.Send(2, std::vector<std::vector<uint8_t>>{}).code(),
            absl::StatusCode::kCancelled);
  EXPECT_EQ(channel.health().code(), absl::StatusCode::kCancelled);
  channel.Close();  // idempotent
}

// Over real Gloo between two processes: the worker queues all requests without waiting, the
// selector answers from a callback, and the worker collects the replies by polling.
TEST(AsyncChannelTest, RoundTripsBetweenTwoProcesses) {
  TempDir dir;
  ASSERT_FALSE(dir.path().empty());
  constexpr uint32_t kRequests = 2000;
  ChildProcess selector = ChildProcess::Fork([&]() -> int {
    auto store = FileRendezvousStore::Open(dir.path());
    CHILD_CHECK(store.ok(), store.status().ToString());
    ChannelSpec spec;
    spec.channel_id = "async";
    spec.epoch = 1;
    spec.role = ChannelRole::kSelector;
    spec.store = store->get();
    auto channel = CreateChannel(spec, Transport::kGloo);
    CHILD_CHECK(channel.ok(), channel.status().ToString());
    // The callback may run before the constructor below has returned.
    std::atomic<AsyncChannel*> self{nullptr};
    AsyncChannelOptions options;
    // The reply carries the request's bytes reversed, so it is computed, not echoed.
    options.on_message = [&self](Message request) {
      std::vector<std::vector<uint8_t>> reply;
      for (auto& part : request.parts) reply.emplace_back(part.rbegin(), part.rend());
      while (self.load() == nullptr) absl::SleepFor(absl::Milliseconds(1));
      (void)self.load()->Send(request.tag + 1, std::move(reply));
    };
    AsyncChannel async(*std::move(channel), options);
    self = &async;
    // Serve until the worker closes.
    const absl::Time deadline = absl::Now() + absl::Seconds(60);
    while (async.health().ok() && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(5));
    CHILD_CHECK(absl::IsUnavailable(async.health()), async.health().ToString());
    const AsyncChannelStats stats = async.stats();
    CHILD_CHECK(stats.channel.messages_received == kRequests,
                absl::StrCat(stats.channel.messages_received));
    CHILD_CHECK(stats.channel.messages_sent == kRequests,
                absl::StrCat(stats.channel.messages_sent));
    return 0;
  });

  auto store = FileRendezvousStore::Open(dir.path());
  ASSERT_TRUE(store.ok()) << store.status();
  ChannelSpec spec;
  spec.channel_id = "async";
  spec.epoch = 1;
  spec.role = ChannelRole::kDecodeWorker;
  spec.store = store->get();
  auto created = CreateChannel(spec, Transport::kGloo);
  ASSERT_TRUE(created.ok()) << created.status();
  AsyncChannel channel(*std::move(created));

  uint64_t request_bytes = 0;
  for (uint32_t i = 0; i < kRequests; ++i) {
    std::vector<std::vector<uint8_t>> parts(2);
    parts[0].resize(4 + (i * 37) % 3000);
    parts[1].resize(i % 10 == 0 ? 100000 : 16);
    for (auto& part : parts) {
      for (size_t b = 0; b < part.size(); ++b) part[b] = static_cast<uint8_t>(i * 131 + b * 7 + 1);
      request_bytes += part.size();
    }
    ASSERT_TRUE(channel.Send(2 * i, std::move(parts)).ok());
  }
  uint32_t replies = 0;
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  while (replies < kRequests && absl::Now() < deadline) {
    std::vector<Message> batch = channel.DrainReceived();
    if (batch.empty()) {
      ASSERT_TRUE(channel.health().ok()) << channel.health();
      absl::SleepFor(absl::Microseconds(200));
      continue;
    }
    for (const Message& reply : batch) {
      const uint32_t i = replies++;
      ASSERT_EQ(reply.tag, 2 * i + 1);
      EXPECT_EQ(reply.sequence, i);
      ASSERT_EQ(reply.parts.size(), 2u);
      ASSERT_EQ(reply.parts[0].size(), 4 + (i * 37) % 3000);
      ASSERT_EQ(reply.parts[1].size(), i % 10 == 0 ? 100000u : 16u);
      for (const auto& part : reply.parts) {
        for (size_t b = 0; b < part.size(); ++b) {
          ASSERT_EQ(part[part.size() - 1 - b], static_cast<uint8_t>(i * 131 + b * 7 + 1));
        }
      }
    }
  }
  EXPECT_EQ(replies, kRequests);
  const AsyncChannelStats stats = channel.stats();
  EXPECT_EQ(stats.channel.messages_sent, kRequests);
  EXPECT_EQ(stats.channel.bytes_sent, request_bytes);
  EXPECT_EQ(stats.channel.messages_received, kRequests);
  EXPECT_EQ(stats.channel.bytes_received, request_bytes);
  EXPECT_EQ(stats.queued_send_messages, 0u);
  channel.Close();
  EXPECT_EQ(selector.Wait(), 0);
}

TEST(AsyncChannelTest, KilledPeerSurfacesInHealthAndSend) {
  TempDir dir;
  ASSERT_FALSE(dir.path().empty());
  ChildProcess selector = ChildProcess::Fork([&]() -> int {
    auto store = FileRendezvousStore::Open(dir.path());
    CHILD_CHECK(store.ok(), store.status().ToString());
    ChannelSpec spec;
    spec.channel_id = "async-kill";
    spec.epoch = 1;
    spec.role = ChannelRole::kSelector;
    spec.store = store->get();
    auto channel = CreateChannel(spec, Transport::kGloo);
    CHILD_CHECK(channel.ok(), channel.status().ToString());
    CHILD_CHECK((*channel)->Send(1, {}).ok(), "ready");
    for (;;) absl::SleepFor(absl::Seconds(1));
  });
  auto store = FileRendezvousStore::Open(dir.path());
  ASSERT_TRUE(store.ok()) << store.status();
  ChannelSpec spec;
  spec.channel_id = "async-kill";
  spec.epoch = 1;
  spec.role = ChannelRole::kDecodeWorker;
  spec.store = store->get();
  auto created = CreateChannel(spec, Transport::kGloo);
  ASSERT_TRUE(created.ok()) << created.status();
  AsyncChannel channel(*std::move(created));
  ASSERT_TRUE(channel.Recv(absl::Seconds(20)).ok());
  selector.Signal(SIGKILL);
  ASSERT_TRUE(WaitUntil([&] { return !channel.health().ok(); }, absl::Seconds(5)));
  EXPECT_EQ(channel.health().code(), absl::StatusCode::kUnavailable) << channel.health();
  EXPECT_EQ(channel.Send(2, std::vector<std::vector<uint8_t>>{}).code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(selector.Wait(), 128 + SIGKILL);
}

}  // namespace
}  // namespace asyncspade::data_plane
