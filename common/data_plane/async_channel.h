// A Channel wrapper for callers that must never wait on the network, such as the decode loop:
// Send() only enqueues (a sender thread hands messages to the channel in order), and received
// messages are collected by a receiver thread, to be polled with TryRecv()/DrainReceived() or
// handed to a callback.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "common/data_plane/channel.h"

namespace asyncspade::data_plane {

struct AsyncChannelOptions {
  // Send() refuses (RESOURCE_EXHAUSTED) a message that would take the bytes queued for sending
  // beyond this: the peer or the network is not keeping up.
  uint64_t max_queued_send_bytes = uint64_t{1} << 30;
  // When set, each received message is passed to it on the receiver thread (in order) instead of
  // being queued for TryRecv(). It must not block for long: it holds up later messages.
  std::function<void(Message)> on_message;
};

struct AsyncChannelStats {
  ChannelStats channel;            // of the wrapped channel (sent = handed to the transport)
  uint64_t queued_send_messages = 0;  // accepted by Send(), not yet handed to the channel
  uint64_t queued_send_bytes = 0;
  uint64_t queued_received_messages = 0;  // received, not yet taken by TryRecv()/Recv()
  uint64_t queued_received_bytes = 0;
};

class AsyncChannel {
 public:
  explicit AsyncChannel(std::unique_ptr<Channel> channel, AsyncChannelOptions options = {});
  ~AsyncChannel();
  AsyncChannel(const AsyncChannel&) = delete;
  AsyncChannel& operator=(const AsyncChannel&) = delete;

  // Copies the parts and queues the message. Never waits on the network. Returns the channel's
  // error once it failed, CANCELLED after Close(), RESOURCE_EXHAUSTED when the queue is full.
  absl::Status Send(uint32_t tag, absl::Span<const Buffer> parts);
  // Same without the copy: the message takes ownership of `parts`.
  absl::Status Send(uint32_t tag, std::vector<std::vector<uint8_t>> parts);

  // The next received message, if one is there. Never waits. An empty result says nothing about
  // the channel's health: check health().
  std::optional<Message> TryRecv();
  // Every message received so far, in order. Never waits.
  std::vector<Message> DrainReceived();
  // Waits up to `timeout` for a message. Messages received before a failure come first; then the
  // failure. DEADLINE_EXCEEDED when none came in time.
  absl::StatusOr<Message> Recv(absl::Duration timeout);

  // Waits until every queued message has been handed to the channel. DEADLINE_EXCEEDED on
  // timeout; the channel's error if it failed first.
  absl::Status Flush(absl::Duration timeout);

  // Gives queued messages up to `flush_timeout` to go out, then closes the channel and joins the
  // threads. Idempotent; the destructor calls it with the default. Never call it from
  // `on_message`: it joins the thread that runs the callback.
  void Close(absl::Duration flush_timeout = absl::Seconds(1));

  // OK while both directions work; otherwise the first error either thread met.
  absl::Status health() const;
  AsyncChannelStats stats() const;
  const Channel& channel() const { return *channel_; }

 private:
  struct Outgoing {
    uint32_t tag = 0;
    std::vector<std::vector<uint8_t>> parts;
    uint64_t bytes = 0;
  };

  void SendLoop();
  void ReceiveLoop();
  void RecordFailure(const absl::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  const std::unique_ptr<Channel> channel_;
  const AsyncChannelOptions options_;

  mutable absl::Mutex mutex_;
  absl::Status failure_ ABSL_GUARDED_BY(mutex_);
  bool closing_ ABSL_GUARDED_BY(mutex_) = false;
  bool closed_ ABSL_GUARDED_BY(mutex_) = false;
  bool sender_busy_ ABSL_GUARDED_BY(mutex_) = false;
  std::deque<Outgoing> outgoing_ ABSL_GUARDED_BY(mutex_);
  uint64_t outgoing_bytes_ ABSL_GUARDED_BY(mutex_) = 0;
  std::deque<Message> incoming_ ABSL_GUARDED_BY(mutex_);
  uint64_t incoming_bytes_ ABSL_GUARDED_BY(mutex_) = 0;
  bool receiver_done_ ABSL_GUARDED_BY(mutex_) = false;

  std::thread sender_;
  std::thread receiver_;
};

}  // namespace asyncspade::data_plane
