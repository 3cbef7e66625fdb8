#include "common/data_plane/async_channel.h"

#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "glog/logging.h"

namespace asyncspade::data_plane {

AsyncChannel::AsyncChannel(std::unique_ptr<Channel> channel, AsyncChannelOptions options)
    : channel_(std::move(channel)), options_(std::move(options)) {
  CHECK(channel_ != nullptr) << "AsyncChannel needs a channel";
  sender_ = std::thread(&AsyncChannel::SendLoop, this);
  receiver_ = std::thread(&AsyncChannel::ReceiveLoop, this);
}

AsyncChannel::~AsyncChannel() { Close(); }

void AsyncChannel::RecordFailure(const absl::Status& status) {
  if (failure_.ok()) failure_ = status;
}

absl::Status AsyncChannel::health() const {
  absl::MutexLock lock(&mutex_);
  if (!failure_.ok()) return failure_;
  if (closing_) {
    return absl::CancelledError(absl::StrCat("data-plane channel '", channel_->id(),
                                              "' was closed by this process"));
  }
  return absl::OkStatus();
}

absl::Status AsyncChannel::Send(uint32_t tag, absl::Span<const Buffer> parts) {
  std::vector<std::vector<uint8_t>> copies;
  copies.reserve(parts.size());
  for (const Buffer& part : parts) {
    if (part.memory != MemoryKind::kHost) {
      return absl::InvalidArgumentError(absl::StrCat(
          "data-plane channel '", channel_->id(),
          "': AsyncChannel copies parts and can only read host memory; copy the part to the host "
          "or send it with Channel::Send on a transport that reads device memory"));
    }
    if (part.bytes > 0 && part.data == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("data-plane channel '", channel_->id(),
                                                     "': a part has ", part.bytes,
                                                     " bytes but no data"));
    }
    const auto* bytes = static_cast<const uint8_t*>(part.data);
    copies.emplace_back(bytes, bytes + part.bytes);
  }
  return Send(tag, std::move(copies));
}

absl::Status AsyncChannel::Send(uint32_t tag, std::vector<std::vector<uint8_t>> parts) {
  Outgoing message;
  message.tag = tag;
  for (const auto& part : parts) message.bytes += part.size();
  message.parts = std::move(parts);
  absl::MutexLock lock(&mutex_);
  if (!failure_.ok()) return failure_;
  if (closing_) {
    return absl::CancelledError(absl::StrCat("data-plane channel '", channel_->id(),
                                              "' was closed by this process"));
  }
  if (!outgoing_.empty() && outgoing_bytes_ + message.bytes > options_.max_queued_send_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "data-plane channel '", channel_->id(), "': ", outgoing_bytes_, " bytes in ",
        outgoing_.size(), " messages are already waiting to be sent (limit ",
        options_.max_queued_send_bytes, "); the peer or the network is not keeping up"));
  }
  outgoing_bytes_ += message.bytes;
  outgoing_.push_back(std::move(message));
  return absl::OkStatus();
}

void AsyncChannel::SendLoop() {
  for (;;) {
    Outgoing message;
    {
      absl::MutexLock lock(&mutex_);
      mutex_.Await(absl::Condition(
          +[](AsyncChannel* self) ABSL_NO_THREAD_SAFETY_ANALYSIS {
            return !self->outgoing_.empty() || self->closing_ || !self->failure_.ok();
          },
          this));
      if (!failure_.ok() || outgoing_.empty()) return;
      message = std::move(outgoing_.front());
      outgoing_.pop_front();
      sender_busy_ = true;
    }
    std::vector<Buffer> parts;
    parts.reserve(message.parts.size());
    for (const auto& part : message.parts) parts.push_back(Buffer{part.data(), part.size()});
    const absl::Status sent = channel_->Send(message.tag, parts);
    absl::MutexLock lock(&mutex_);
    sender_busy_ = false;
    outgoing_bytes_ -= message.bytes;
    if (!sent.ok()) {
      if (!(closing_ && absl::IsCancelled(sent))) RecordFailure(sent);
      // Nothing queued after a failed message may go out: the peer would see a gap.
      outgoing_.clear();
      outgoing_bytes_ = 0;
      return;
    }
  }
}

void AsyncChannel::ReceiveLoop() {
  for (;;) {
    absl::StatusOr<Message> message = channel_->Recv(absl::InfiniteDuration());
    if (!message.ok()) {
      absl::MutexLock lock(&mutex_);
      if (!(closing_ && absl::IsCancelled(message.status()))) RecordFailure(message.status());
      receiver_done_ = true;
      return;
    }
    if (options_.on_message) {
      options_.on_message(*std::move(message));
      continue;
    }
    absl::MutexLock lock(&mutex_);
    incoming_bytes_ += message->payload_bytes();
    incoming_.push_back(*std::move(message));
  }
}

std::optional<Message> AsyncChannel::TryRecv() {
  absl::MutexLock lock(&mutex_);
  if (incoming_.empty()) return std::nullopt;
  Message message = std::move(incoming_.front());
  incoming_.pop_front();
  incoming_bytes_ -= message.payload_bytes();
  return message;
}

std::vector<Message> AsyncChannel::DrainReceived() {
  absl::MutexLock lock(&mutex_);
  std::vector<Message> messages(std::make_move_iterator(incoming_.begin()),
                                std::make_move_iterator(incoming_.end()));
  incoming_.clear();
  incoming_bytes_ = 0;
  return messages;
}

absl::StatusOr<Message> AsyncChannel::Recv(absl::Duration timeout) {
  absl::MutexLock lock(&mutex_);
  mutex_.AwaitWithTimeout(absl::Condition(
                              +[](AsyncChannel* self) ABSL_NO_THREAD_SAFETY_ANALYSIS {
                                return !self->incoming_.empty() || self->receiver_done_;
                              },
                              this),
                          timeout);
  if (!incoming_.empty()) {
    Message message = std::move(incoming_.front());
    incoming_.pop_front();
    incoming_bytes_ -= message.payload_bytes();
    return message;
  }
  if (receiver_done_) {
    if (!failure_.ok()) return failure_;
    return absl::CancelledError(absl::StrCat("data-plane channel '", channel_->id(),
                                              "' was closed by this process"));
  }
  return absl::DeadlineExceededError(absl::StrCat("data-plane channel '", channel_->id(),
                                                  "': no message within ",
                                                  absl::FormatDuration(timeout)));
}

absl::Status AsyncChannel::Flush(absl::Duration timeout) {
  absl::MutexLock lock(&mutex_);
  const bool done = mutex_.AwaitWithTimeout(
      absl::Condition(
          +[](AsyncChannel* self) ABSL_NO_THREAD_SAFETY_ANALYSIS {
            return (self->outgoing_.empty() && !self->sender_busy_) || !self->failure_.ok();
          },
          this),
      timeout);
  if (!failure_.ok()) return failure_;
  if (!done) {
    return absl::DeadlineExceededError(absl::StrCat(
        "data-plane channel '", channel_->id(), "': ", outgoing_.size() + (sender_busy_ ? 1 : 0),
        " messages still unsent after ", absl::FormatDuration(timeout)));
  }
  return absl::OkStatus();
}

void AsyncChannel::Close(absl::Duration flush_timeout) {
  {
    absl::MutexLock lock(&mutex_);
    if (closing_) {
      mutex_.Await(absl::Condition(&closed_));
      return;
    }
    // New sends are refused before the flush: a busy producer must not keep Close() waiting.
    closing_ = true;
  }
  const absl::Status flushed = Flush(flush_timeout);
  {
    absl::MutexLock lock(&mutex_);
    const size_t unsent = outgoing_.size() + (sender_busy_ ? 1 : 0);
    LOG_IF(WARNING, unsent > 0) << "closing data-plane channel '" << channel_->id() << "' with "
                                << unsent << " messages unsent: " << flushed;
  }
  channel_->Close();
  if (sender_.joinable()) sender_.join();
  if (receiver_.joinable()) receiver_.join();
  absl::MutexLock lock(&mutex_);
  closed_ = true;
}

AsyncChannelStats AsyncChannel::stats() const {
  AsyncChannelStats stats;
  stats.channel = channel_->stats();
  absl::MutexLock lock(&mutex_);
  stats.queued_send_messages = outgoing_.size() + (sender_busy_ ? 1 : 0);
  stats.queued_send_bytes = outgoing_bytes_;
  stats.queued_received_messages = incoming_.size();
  stats.queued_received_bytes = incoming_bytes_;
  return stats;
}

}  // namespace asyncspade::data_plane
