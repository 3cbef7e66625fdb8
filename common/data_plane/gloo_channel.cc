#include "common/data_plane/gloo_channel.h"

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <exception>
#include <mutex>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/data_plane/channel_factory.h"
#include "common/data_plane/gloo_store_adapter.h"
#include "common/data_plane/message_header.h"
#include "common/status.h"
#include "gloo/common/error.h"
#include "gloo/rendezvous/context.h"
#include "gloo/transport/tcp/device.h"
#include "gloo/transport/unbound_buffer.h"
#include "glog/logging.h"

namespace asyncspade::data_plane {
namespace {

// Waits are never bounded by Gloo (a Gloo wait that times out fails the whole context); this is
// merely "for ever" in a form that cannot overflow a steady_clock deadline.
constexpr std::chrono::milliseconds kWaitForever = std::chrono::hours(24 * 365 * 10);
// How long Close() lets the goodbye message take before it tears the connection down anyway.
constexpr absl::Duration kGoodbyeTimeout = absl::Seconds(1);
// Slots separate the kinds of transfer so that each is matched in order on its own.
constexpr uint64_t kSlotBase = 0x4153;
uint64_t HeadSlot(int sender_rank) { return kSlotBase + 2 * sender_rank; }
uint64_t PayloadSlot(int sender_rank) { return kSlotBase + 2 * sender_rank + 1; }

int64_t SteadyNowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

void IgnoreSigpipeOnce() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction current {};
    if (sigaction(SIGPIPE, nullptr, &current) == 0 && current.sa_handler == SIG_DFL) {
      signal(SIGPIPE, SIG_IGN);
    }
  });
}

std::string LocalHostName() {
  char name[256] = {};
  if (gethostname(name, sizeof(name) - 1) != 0) return "unknown-host";
  return name;
}

std::string ExceptionText() {
  try {
    throw;
  } catch (const std::exception& e) {
    return e.what();
  } catch (...) {
    return "unknown exception";
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<GlooChannel>> GlooChannel::Create(const ChannelSpec& spec) {
  RETURN_IF_ERROR(ValidateChannelSpec(spec));
  IgnoreSigpipeOnce();
  std::unique_ptr<GlooChannel> channel(new GlooChannel(spec));
  absl::Status status = channel->Connect();
  if (status.ok()) status = channel->Handshake();
  if (!status.ok()) {
    channel->Close();
    // Nobody will connect to this attempt: its published address must not linger in the store.
    std::vector<std::string> keys;
    {
      absl::MutexLock lock(&channel->mutex_);
      keys.swap(channel->keys_to_delete_);
    }
    for (const std::string& key : keys) (void)spec.store->Delete(key);
    return status;
  }
  VLOG(1) << channel->Where() << "connected to " << channel->peer_description();
  return channel;
}

GlooChannel::GlooChannel(const ChannelSpec& spec)
    : spec_(spec),
      fingerprint_(ChannelFingerprint(spec.channel_id)),
      rank_(static_cast<int>(spec.role)),
      peer_rank_(static_cast<int>(PeerRole(spec.role))) {}

GlooChannel::~GlooChannel() { Close(); }

std::string GlooChannel::Where() const {
  return absl::StrCat("data-plane channel '", spec_.channel_id, "' epoch ", spec_.epoch, " (",
                      ChannelRoleName(spec_.role), " end): ");
}

std::string GlooChannel::peer_description() const {
  absl::MutexLock lock(&mutex_);
  return peer_description_locked();
}

std::string GlooChannel::peer_description_locked() const {
  return absl::StrCat("peer rank ", peer_rank_, " (", ChannelRoleName(PeerRole(spec_.role)),
                      peer_details_.empty() ? "" : ", ", peer_details_, ")");
}

absl::Status GlooChannel::Connect() {
  try {
    gloo::transport::tcp::attr attr;
    attr.hostname = spec_.host;
    device_ = gloo::transport::tcp::CreateDevice(attr);
  } catch (...) {
    return absl::InvalidArgumentError(
        absl::StrCat(Where(), "cannot listen on host '", spec_.host, "': ", ExceptionText(),
                     ". Set the channel host to an IP address or name of this machine"));
  }
  GlooStoreAdapter store(*spec_.store, ChannelKeyPrefix(spec_.channel_id, spec_.epoch),
                         spec_.connect_timeout);
  try {
    auto context = std::make_shared<gloo::rendezvous::Context>(rank_, 2);
    context->setTimeout(std::chrono::milliseconds(absl::ToInt64Milliseconds(spec_.connect_timeout)));
    context->connectFullMesh(store, device_);
    context_ = std::move(context);
  } catch (...) {
    const std::string what = ExceptionText();
    {
      absl::MutexLock lock(&mutex_);
      keys_to_delete_ = store.keys_set();
    }
    if (!store.first_error().ok()) {
      return Annotate(store.first_error(),
                      absl::StrCat(Where(), "waiting for ", peer_description(), " to publish its "
                                   "address"));
    }
    const bool timed_out = what.find("imeout") != std::string::npos;
    const std::string message =
        absl::StrCat(Where(), "could not connect to ", peer_description(), ": ", what);
    return timed_out ? absl::DeadlineExceededError(message) : absl::UnavailableError(message);
  }
  // The peer has read our address once it can send its hello (it connected first); only then is it
  // safe to remove our keys. Until then they stay for the peer to read.
  absl::MutexLock lock(&mutex_);
  handshake_deadline_ = absl::Now() + spec_.connect_timeout;
  keys_to_delete_ = store.keys_set();
  return absl::OkStatus();
}

std::string GlooChannel::HelloPayload() const {
  return absl::StrCat("channel=", spec_.channel_id, "\nepoch=", spec_.epoch, "\nrank=", rank_,
                      "\npid=", getpid(), "\nhostname=", LocalHostName(), "\nhost=", spec_.host,
                      "\n");
}

absl::Status GlooChannel::Handshake() {
  try {
    absl::MutexLock send_lock(&send_mutex_);
    send_head_.assign(kHeadTransferCapacity, 0);
    send_head_buffer_ = context_->createUnboundBuffer(send_head_.data(), send_head_.size());
  } catch (...) {
    return absl::InternalError(absl::StrCat(Where(), "Gloo refused a buffer: ", ExceptionText()));
  }
  last_send_ns_ = last_receive_ns_ = SteadyNowNs();
  receiver_ = std::thread(&GlooChannel::ReceiveLoop, this);
  monitor_ = std::thread(&GlooChannel::MonitorLoop, this);

  const std::string hello = HelloPayload();
  const Buffer hello_part{hello.data(), hello.size()};
  RETURN_IF_ERROR(SendMessage(kHelloTag, {&hello_part, 1}, spec_.epoch));
  std::vector<std::string> keys;
  {
    absl::MutexLock lock(&mutex_);
    mutex_.Await(absl::Condition(
        +[](GlooChannel* self) ABSL_NO_THREAD_SAFETY_ANALYSIS {
          return self->handshake_done_ || self->stopping_;
        },
        this));
    if (!handshake_done_) return StoppedStatusLocked();
    keys.swap(keys_to_delete_);
  }
  for (const std::string& key : keys) {
    absl::Status deleted = spec_.store->Delete(key);
    LOG_IF(WARNING, !deleted.ok()) << Where() << "could not delete rendezvous key: " << deleted;
  }
  if (spec_.peer_timeout > absl::ZeroDuration()) {
    heartbeat_ = std::thread(&GlooChannel::HeartbeatLoop, this);
  }
  return absl::OkStatus();
}

absl::Status GlooChannel::AcceptHello(const Message& hello) {
  std::string text;
  for (const auto& part : hello.parts) text.append(part.begin(), part.end());
  std::string channel, hostname, host, pid;
  uint64_t epoch = 0;
  int rank = -1;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    std::pair<std::string, std::string> kv = absl::StrSplit(line, absl::MaxSplits('=', 1));
    if (kv.first == "channel") channel = kv.second;
    if (kv.first == "epoch" && !absl::SimpleAtoi(kv.second, &epoch)) epoch = 0;
    if (kv.first == "rank" && !absl::SimpleAtoi(kv.second, &rank)) rank = -1;
    if (kv.first == "pid") pid = kv.second;
    if (kv.first == "hostname") hostname = kv.second;
    if (kv.first == "host") host = kv.second;
  }
  if (channel != spec_.channel_id || epoch != spec_.epoch || hello.epoch != spec_.epoch ||
      rank != peer_rank_) {
    return absl::FailedPreconditionError(absl::StrCat(
        Where(), "the process that connected (pid ", pid, " on ", hostname,
        ") is channel '", channel, "' epoch ", epoch, " rank ", rank, "; expected '",
        spec_.channel_id, "' epoch ", spec_.epoch, " rank ", peer_rank_,
        ". Both ends must be given the same channel id and epoch by the controller"));
  }
  peer_details_ = absl::StrCat("pid ", pid, " on host ", hostname, ", listening on ", host);
  handshake_done_ = true;
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------
// Gloo operations
// ---------------------------------------------------------------------------------------------

absl::Status GlooChannel::Post(gloo::transport::UnboundBuffer& buffer, Direction direction,
                               uint64_t slot, size_t bytes) {
  try {
    if (direction == Direction::kSend) {
      buffer.send(peer_rank_, slot, 0, bytes);
    } else {
      buffer.recv(peer_rank_, slot, 0, bytes);
    }
    return absl::OkStatus();
  } catch (...) {
    return FailFromGloo(ExceptionText());
  }
}

absl::Status GlooChannel::Await(gloo::transport::UnboundBuffer& buffer, Direction direction) {
  auto& in_flight = direction == Direction::kSend ? in_flight_sends_ : in_flight_recvs_;
  {
    absl::MutexLock lock(&mutex_);
    if (stopping_) return StoppedStatusLocked();
    in_flight.insert(&buffer);
  }
  bool completed = false;
  std::string error;
  try {
    completed = direction == Direction::kSend ? buffer.waitSend(kWaitForever)
                                              : buffer.waitRecv(kWaitForever);
  } catch (...) {
    error = ExceptionText();
  }
  absl::MutexLock lock(&mutex_);
  in_flight.erase(&buffer);
  if (!error.empty()) {
    FailLocked(absl::UnavailableError(
        absl::StrCat(Where(), peer_description_locked(), " is gone: ", error,
                     ". Re-create the channel with a new epoch")));
    return StoppedStatusLocked();
  }
  if (!completed) return StoppedStatusLocked();
  return absl::OkStatus();
}

absl::Status GlooChannel::FailFromGloo(const std::string& what) {
  const std::string peer = peer_description();
  absl::MutexLock lock(&mutex_);
  FailLocked(absl::UnavailableError(absl::StrCat(Where(), peer, " is gone: ", what,
                                                 ". Re-create the channel with a new epoch")));
  return StoppedStatusLocked();
}

void GlooChannel::Fail(const absl::Status& status) {
  absl::MutexLock lock(&mutex_);
  FailLocked(status);
}

void GlooChannel::FailLocked(const absl::Status& status, bool orderly) {
  if (failure_.ok()) {
    failure_ = status;
    if (orderly || close_started_) {
      VLOG(1) << status;
    } else {
      LOG(WARNING) << status;
    }
  }
  if (stopping_) return;
  stopping_ = true;
  // The connection is dropped before any wait is released: once Pair::close() returns, Gloo no
  // longer reads into or writes from our buffers (it checks the pair's state under the same lock
  // it holds while copying), so the aborted owners may free them. The waiters cannot return
  // before mutex_ is released, which is after this. It also tells a peer that may still be alive
  // that this end is gone.
  if (context_ != nullptr) {
    try {
      context_->closeConnections();
    } catch (...) {
      LOG(WARNING) << Where() << "error while dropping the connection: " << ExceptionText();
    }
  }
  for (gloo::transport::UnboundBuffer* buffer : in_flight_sends_) buffer->abortWaitSend();
  for (gloo::transport::UnboundBuffer* buffer : in_flight_recvs_) buffer->abortWaitRecv();
}

absl::Status GlooChannel::StoppedStatusLocked() const {
  if (close_started_ || failure_.ok()) {
    return absl::CancelledError(absl::StrCat(Where(), "closed by this process"));
  }
  return failure_;
}

// ---------------------------------------------------------------------------------------------
// Sending
// ---------------------------------------------------------------------------------------------

absl::Status GlooChannel::CheckOutgoing(absl::Span<const Buffer> parts) const {
  if (parts.size() > kMaxPartsPerMessage) {
    return absl::InvalidArgumentError(absl::StrCat(Where(), "message has ", parts.size(),
                                                   " parts; at most ", kMaxPartsPerMessage,
                                                   " are allowed: concatenate small parts"));
  }
  uint64_t total = 0;
  for (size_t i = 0; i < parts.size(); ++i) {
    if (parts[i].memory != MemoryKind::kHost) {
      return absl::InvalidArgumentError(absl::StrCat(
          Where(), "part ", i, " is not in host memory; the Gloo transport reads host memory "
                               "only: copy it to the host or use the NCCL transport"));
    }
    if (parts[i].bytes > 0 && parts[i].data == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat(Where(), "part ", i, " has ", parts[i].bytes, " bytes but no data"));
    }
    total += parts[i].bytes;
  }
  if (total > spec_.max_message_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        Where(), "message of ", total, " bytes exceeds max_message_bytes (",
        spec_.max_message_bytes, "); split it into several messages"));
  }
  return absl::OkStatus();
}

absl::Status GlooChannel::Send(uint32_t tag, absl::Span<const Buffer> parts) {
  if (tag >= kFirstReservedTag) {
    return absl::InvalidArgumentError(absl::StrCat(
        Where(), "tag 0x", absl::Hex(tag), " is reserved for the channel's control messages; use "
        "tags below 0x", absl::Hex(kFirstReservedTag)));
  }
  return SendMessage(tag, parts, spec_.epoch);
}

absl::Status GlooChannel::SendWithEpochForTesting(uint32_t tag, absl::Span<const Buffer> parts,
                                                  uint64_t epoch) {
  return SendMessage(tag, parts, epoch);
}

absl::Status GlooChannel::SendMessage(uint32_t tag, absl::Span<const Buffer> parts,
                                      uint64_t epoch) {
  RETURN_IF_ERROR(CheckOutgoing(parts));
  absl::MutexLock send_lock(&send_mutex_);
  return SendMessageLocked(tag, parts, epoch);
}

absl::Status GlooChannel::SendMessageLocked(uint32_t tag, absl::Span<const Buffer> parts,
                                            uint64_t epoch) {
  {
    absl::MutexLock lock(&mutex_);
    if (stopping_) return StoppedStatusLocked();
  }
  const bool user_message = tag < kFirstReservedTag;
  // Only messages of this channel's epoch take part in its sequence; stale ones are dropped
  // before the receiver looks at their numbers.
  const bool in_sequence = user_message && epoch == spec_.epoch;
  MessageHeader header;
  header.tag = tag;
  header.epoch = epoch;
  header.sequence = next_send_sequence_;
  header.channel_fingerprint = fingerprint_;
  ASSIGN_OR_RETURN(const EncodedHead head, EncodeHead(header, parts, absl::MakeSpan(send_head_)));

  RETURN_IF_ERROR(Post(*send_head_buffer_, Direction::kSend, HeadSlot(rank_), head.bytes));
  std::vector<std::unique_ptr<gloo::transport::UnboundBuffer>> chunks;
  absl::Status status;
  if (!head.payload_inline) {
    for (const Buffer& part : parts) {
      for (const auto& [offset, bytes] : PartChunks(part.bytes)) {
        try {
          // Gloo's buffer type is not const-qualified; a send only reads it.
          chunks.push_back(context_->createUnboundBuffer(
              static_cast<uint8_t*>(const_cast<void*>(part.data)) + offset, bytes));
        } catch (...) {
          status = FailFromGloo(ExceptionText());
          break;
        }
        status = Post(*chunks.back(), Direction::kSend, PayloadSlot(rank_), bytes);
        if (!status.ok()) break;
      }
      if (!status.ok()) break;
    }
  }
  // Every posted transfer is awaited (or aborted) before its buffer is destroyed.
  absl::Status head_done = Await(*send_head_buffer_, Direction::kSend);
  if (status.ok()) status = head_done;
  for (auto& chunk : chunks) {
    absl::Status chunk_done = Await(*chunk, Direction::kSend);
    if (status.ok()) status = chunk_done;
  }
  RETURN_IF_ERROR(status);

  last_send_ns_ = SteadyNowNs();
  if (in_sequence) {
    ++next_send_sequence_;
    messages_sent_.fetch_add(1, std::memory_order_relaxed);
    uint64_t payload = 0;
    for (const Buffer& part : parts) payload += part.bytes;
    bytes_sent_.fetch_add(payload, std::memory_order_relaxed);
  } else if (tag == kKeepaliveTag) {
    keepalives_sent_.fetch_add(1, std::memory_order_relaxed);
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------
// Receiving
// ---------------------------------------------------------------------------------------------

void GlooChannel::ReceiveLoop() {
  std::vector<uint8_t> head(kHeadTransferCapacity);
  std::unique_ptr<gloo::transport::UnboundBuffer> head_buffer;
  try {
    head_buffer = context_->createUnboundBuffer(head.data(), head.size());
  } catch (...) {
    (void)FailFromGloo(ExceptionText());
    return;
  }
  for (;;) {
    // Posting the receive before anything else keeps a head receive outstanding at all times
    // except while a payload is being read, so small messages arrive in one transfer.
    if (!Post(*head_buffer, Direction::kRecv, HeadSlot(peer_rank_), head.size()).ok()) return;
    if (!Await(*head_buffer, Direction::kRecv).ok()) return;
    last_receive_ns_ = SteadyNowNs();

    absl::StatusOr<MessageHeader> header = DecodeHead(head);
    if (!header.ok()) {
      Fail(Annotate(header.status(), absl::StrCat(Where(), "from ", peer_description())));
      return;
    }
    if (header->channel_fingerprint != fingerprint_) {
      Fail(absl::DataLossError(absl::StrCat(
          Where(), peer_description(), " sent a message of another channel (fingerprint ",
          absl::Hex(header->channel_fingerprint), ", expected ", absl::Hex(fingerprint_), ")")));
      return;
    }
    if (header->payload_bytes() > spec_.max_message_bytes) {
      Fail(absl::DataLossError(absl::StrCat(
          Where(), peer_description(), " sent a message of ", header->payload_bytes(),
          " bytes, over max_message_bytes (", spec_.max_message_bytes,
          "); both ends must use the same limit")));
      return;
    }

    Message message;
    message.tag = header->tag;
    message.epoch = header->epoch;
    message.sequence = header->sequence;
    message.parts.resize(header->part_bytes.size());
    size_t inline_offset = kFixedHeaderBytes + 8 * header->part_bytes.size();
    for (size_t i = 0; i < message.parts.size(); ++i) {
      message.parts[i].resize(header->part_bytes[i]);
      if (header->payload_inline() && header->part_bytes[i] > 0) {
        std::memcpy(message.parts[i].data(), head.data() + inline_offset, header->part_bytes[i]);
        inline_offset += header->part_bytes[i];
      }
    }
    if (!header->payload_inline() && !ReceivePayload(message.parts).ok()) return;
    if (!Deliver(std::move(message))) return;
  }
}

absl::Status GlooChannel::ReceivePayload(std::vector<std::vector<uint8_t>>& parts) {
  std::vector<std::unique_ptr<gloo::transport::UnboundBuffer>> chunks;
  absl::Status status;
  for (auto& part : parts) {
    for (const auto& [offset, bytes] : PartChunks(part.size())) {
      try {
        chunks.push_back(context_->createUnboundBuffer(part.data() + offset, bytes));
      } catch (...) {
        status = FailFromGloo(ExceptionText());
        break;
      }
      status = Post(*chunks.back(), Direction::kRecv, PayloadSlot(peer_rank_), bytes);
      if (!status.ok()) break;
    }
    if (!status.ok()) break;
  }
  for (auto& chunk : chunks) {
    absl::Status chunk_done = Await(*chunk, Direction::kRecv);
    if (status.ok()) status = chunk_done;
    if (chunk_done.ok()) last_receive_ns_ = SteadyNowNs();
  }
  return status;
}

bool GlooChannel::Deliver(Message message) {
  absl::MutexLock lock(&mutex_);
  if (!handshake_done_) {
    absl::Status status =
        message.tag == kHelloTag
            ? AcceptHello(message)
            : absl::DataLossError(absl::StrCat(Where(), "the first message from ",
                                               peer_description_locked(), " has tag 0x",
                                               absl::Hex(message.tag), ", not the handshake"));
    if (!status.ok()) FailLocked(status);
    return status.ok();
  }
  if (message.epoch != spec_.epoch) {
    const uint64_t dropped = stale_epoch_messages_dropped_.fetch_add(1) + 1;
    // Traffic of a replaced peer must never pass for the current one's.
    LOG_EVERY_N(WARNING, 1000) << Where() << "dropped a message of epoch " << message.epoch
                               << " (tag " << message.tag << "); " << dropped
                               << " stale messages dropped so far";
    return true;
  }
  switch (message.tag) {
    case kHelloTag:
      FailLocked(absl::DataLossError(
          absl::StrCat(Where(), peer_description_locked(), " repeated the handshake")));
      return false;
    case kKeepaliveTag:
      keepalives_received_.fetch_add(1, std::memory_order_relaxed);
      return true;
    case kGoodbyeTag:
      FailLocked(absl::UnavailableError(
                     absl::StrCat(Where(), peer_description_locked(),
                                  " closed the channel. Re-create it with a new epoch to talk again")),
                 /*orderly=*/true);
      return false;
    default:
      break;
  }
  if (message.tag >= kFirstReservedTag) {
    FailLocked(absl::DataLossError(absl::StrCat(Where(), peer_description_locked(),
                                                " sent unknown control tag 0x",
                                                absl::Hex(message.tag))));
    return false;
  }
  if (message.sequence != next_receive_sequence_) {
    FailLocked(absl::DataLossError(absl::StrCat(
        Where(), "message ", message.sequence, " from ", peer_description_locked(),
        " arrived when ", next_receive_sequence_, " was due: messages were lost or reordered")));
    return false;
  }
  ++next_receive_sequence_;
  const size_t bytes = message.payload_bytes();
  messages_received_.fetch_add(1, std::memory_order_relaxed);
  bytes_received_.fetch_add(bytes, std::memory_order_relaxed);
  inbox_bytes_ += bytes;
  inbox_.push_back(std::move(message));
  return true;
}

absl::StatusOr<Message> GlooChannel::Recv(absl::Duration timeout) {
  absl::MutexLock lock(&mutex_);
  mutex_.AwaitWithTimeout(absl::Condition(
                              +[](GlooChannel* self) ABSL_NO_THREAD_SAFETY_ANALYSIS {
                                return !self->inbox_.empty() || self->stopping_;
                              },
                              this),
                          timeout);
  if (close_started_) return StoppedStatusLocked();
  // Messages that arrived before a failure are still delivered, in order.
  if (!inbox_.empty()) {
    Message message = std::move(inbox_.front());
    inbox_.pop_front();
    inbox_bytes_ -= message.payload_bytes();
    return message;
  }
  if (stopping_) return StoppedStatusLocked();
  return absl::DeadlineExceededError(absl::StrCat(Where(), "no message from ",
                                                  peer_description_locked(), " within ",
                                                  absl::FormatDuration(timeout)));
}

// ---------------------------------------------------------------------------------------------
// Liveness and shutdown
// ---------------------------------------------------------------------------------------------

void GlooChannel::MonitorLoop() {
  const absl::Duration tick =
      spec_.peer_timeout > absl::ZeroDuration()
          ? std::min(absl::Milliseconds(100), spec_.peer_timeout / 10)
          : absl::Milliseconds(100);
  absl::MutexLock lock(&mutex_);
  while (!stopping_) {
    mutex_.AwaitWithTimeout(absl::Condition(&stopping_), tick);
    if (stopping_) break;
    const absl::Time now = absl::Now();
    if (!handshake_done_ && now > handshake_deadline_) {
      FailLocked(absl::DeadlineExceededError(absl::StrCat(
          Where(), "connected, but ", peer_description_locked(),
          " did not complete the handshake within ", absl::FormatDuration(spec_.connect_timeout))));
    } else if (close_started_ && now > close_deadline_) {
      FailLocked(absl::CancelledError(
          absl::StrCat(Where(), "closed by this process (the goodbye was not taken within ",
                       absl::FormatDuration(kGoodbyeTimeout), ")")));
    } else if (handshake_done_ && spec_.peer_timeout > absl::ZeroDuration()) {
      const absl::Duration silence = absl::Nanoseconds(SteadyNowNs() - last_receive_ns_.load());
      if (silence > spec_.peer_timeout) {
        FailLocked(absl::UnavailableError(absl::StrCat(
            Where(), peer_description_locked(), " sent nothing, not even a keepalive, for ",
            absl::FormatDuration(silence), " (peer_timeout ",
            absl::FormatDuration(spec_.peer_timeout),
            "): it hung or its host is unreachable. Re-create the channel with a new epoch")));
      }
    }
  }
}

void GlooChannel::HeartbeatLoop() {
  const int64_t interval_ns = absl::ToInt64Nanoseconds(spec_.keepalive_interval);
  for (;;) {
    {
      absl::MutexLock lock(&mutex_);
      mutex_.AwaitWithTimeout(absl::Condition(&stopping_), spec_.keepalive_interval / 4);
      if (stopping_ || close_started_) return;
    }
    if (SteadyNowNs() - last_send_ns_.load() < interval_ns) continue;
    if (!SendMessage(kKeepaliveTag, {}, spec_.epoch).ok()) return;
  }
}

void GlooChannel::Close() {
  bool say_goodbye = false;
  {
    absl::MutexLock lock(&mutex_);
    if (close_started_) {
      mutex_.Await(absl::Condition(&close_finished_));
      return;
    }
    close_started_ = true;
    close_deadline_ = absl::Now() + kGoodbyeTimeout;
    say_goodbye = handshake_done_ && !stopping_;
  }
  // A Send() in another thread holds send_mutex_; then the peer learns from the dropped
  // connection instead of a goodbye.
  if (say_goodbye && send_mutex_.TryLock()) {
    const absl::Status goodbye = SendMessageLocked(kGoodbyeTag, {}, spec_.epoch);
    send_mutex_.Unlock();
    if (goodbye.ok()) {
      // The peer drops the connection when it reads the goodbye. Waiting for that (briefly)
      // instead of dropping it first ensures the goodbye is not discarded with the connection.
      absl::MutexLock lock(&mutex_);
      mutex_.AwaitWithDeadline(absl::Condition(&stopping_), close_deadline_);
    }
  }
  {
    absl::MutexLock lock(&mutex_);
    FailLocked(absl::CancelledError(absl::StrCat(Where(), "closed by this process")));
  }
  for (std::thread* thread : {&receiver_, &monitor_, &heartbeat_}) {
    if (thread->joinable()) thread->join();
  }
  {
    absl::MutexLock send_lock(&send_mutex_);
    absl::MutexLock lock(&mutex_);
    try {
      send_head_buffer_.reset();
      context_.reset();
      device_.reset();
    } catch (...) {
      LOG(WARNING) << Where() << "error while releasing the Gloo context: " << ExceptionText();
    }
    inbox_.clear();
    inbox_bytes_ = 0;
    close_finished_ = true;
  }
}

absl::Status GlooChannel::health() const {
  absl::MutexLock lock(&mutex_);
  return stopping_ ? StoppedStatusLocked() : absl::OkStatus();
}

ChannelStats GlooChannel::stats() const {
  ChannelStats stats;
  stats.messages_sent = messages_sent_.load();
  stats.bytes_sent = bytes_sent_.load();
  stats.messages_received = messages_received_.load();
  stats.bytes_received = bytes_received_.load();
  stats.stale_epoch_messages_dropped = stale_epoch_messages_dropped_.load();
  stats.keepalives_sent = keepalives_sent_.load();
  stats.keepalives_received = keepalives_received_.load();
  absl::MutexLock lock(&mutex_);
  stats.inbox_messages = inbox_.size();
  stats.inbox_bytes = inbox_bytes_;
  return stats;
}

}  // namespace asyncspade::data_plane
