// The data plane: one ordered, bidirectional message channel per (decode worker, KV selector)
// pair. Tensors between those two processes travel here, never over gRPC. Per-step traffic
// (predicted queries and new keys one way, selected positions the other) and per-sequence
// lifecycle (attach with a bulk copy of prompt keys, detach) share one channel so that they are
// delivered in the order they were sent and can never race.
//
// Implementations: Gloo over TCP (gloo_channel.h) on CPU machines; NCCL on GPU machines (later).
// Code outside common/data_plane/ only sees this interface and CreateChannel() (channel_factory.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"

namespace asyncspade::data_plane {

// Where a buffer lives. Only host memory exists today; a device-memory transport (NCCL) adds
// kDevice and receives into caller-provided device buffers.
enum class MemoryKind : uint8_t { kHost = 0 };

// One blob of a message payload. The bytes are only read during Send(); the caller keeps them
// alive until Send() returns.
struct Buffer {
  const void* data = nullptr;
  size_t bytes = 0;
  MemoryKind memory = MemoryKind::kHost;
};

// Which end of the pair a process is. Ranks are fixed so that both ends agree without talking:
// the decode worker is rank 0 and the selector rank 1.
enum class ChannelRole : int { kDecodeWorker = 0, kSelector = 1 };
const char* ChannelRoleName(ChannelRole role);
inline ChannelRole PeerRole(ChannelRole role) {
  return role == ChannelRole::kDecodeWorker ? ChannelRole::kSelector : ChannelRole::kDecodeWorker;
}

// A received message. `parts` has exactly the blobs the sender passed, in order (a part may be
// empty).
struct Message {
  uint32_t tag = 0;       // message kind, defined by the users of the channel
  uint64_t epoch = 0;     // always the channel's epoch: other epochs are never delivered
  uint64_t sequence = 0;  // 0, 1, 2, ... per direction, counting only user messages
  std::vector<std::vector<uint8_t>> parts;

  size_t payload_bytes() const;
};

// Tags from kFirstReservedTag up are the channel's own control messages (handshake, keepalive,
// goodbye); Send() refuses them.
inline constexpr uint32_t kFirstReservedTag = 0xFFFF0000u;

// Counters since the channel was created. Bytes count payload only (not headers).
struct ChannelStats {
  uint64_t messages_sent = 0;
  uint64_t bytes_sent = 0;
  uint64_t messages_received = 0;
  uint64_t bytes_received = 0;
  // Messages that carried another epoch than the channel's: dropped, never delivered.
  uint64_t stale_epoch_messages_dropped = 0;
  uint64_t keepalives_sent = 0;
  uint64_t keepalives_received = 0;
  // Received but not yet taken by Recv().
  uint64_t inbox_messages = 0;
  uint64_t inbox_bytes = 0;
};

// Thread safety: Send() may be called from any number of threads (they are serialised, each
// message is sent whole); Recv() likewise. One thread sending while another receives is the
// intended use. Close() may be called from any thread, also while Send()/Recv() block.
//
// Errors:
//   UNAVAILABLE        the peer is gone: its process died, the connection was reset, it closed the
//                      channel, or it sent nothing (not even a keepalive) for the peer timeout.
//                      Messages received before that are still returned by Recv() first.
//   DEADLINE_EXCEEDED  Recv() found no message within its timeout; the channel is still usable.
//   CANCELLED          this side called Close().
//   INVALID_ARGUMENT   Send() with a reserved tag, too many parts, a too large message, or a
//                      memory kind the transport cannot read.
//   DATA_LOSS          the peer violated the wire protocol (a bug or a foreign process).
// Every failure is final: once Send() or Recv() reports UNAVAILABLE/DATA_LOSS/CANCELLED the
// channel stays failed and must be replaced (by a new channel with a new epoch).
class Channel {
 public:
  virtual ~Channel() = default;

  // The id the controller gave the pair (also the rendezvous key prefix).
  virtual const std::string& id() const = 0;
  // Incremented by the controller each time the pair's channel is re-created. Traffic and
  // rendezvous keys of any other epoch are never used by this channel.
  virtual uint64_t epoch() const = 0;
  virtual ChannelRole role() const = 0;
  // Human-readable description of the other end, for logs and errors.
  virtual std::string peer_description() const = 0;

  // Sends one message. Blocks until the bytes have been handed to the transport (the parts may be
  // reused when it returns), not until the peer has read them. Use AsyncChannel to never block.
  virtual absl::Status Send(uint32_t tag, absl::Span<const Buffer> parts) = 0;

  // Returns the next message, waiting at most `timeout` (absl::ZeroDuration() polls,
  // absl::InfiniteDuration() waits for ever).
  virtual absl::StatusOr<Message> Recv(absl::Duration timeout) = 0;

  // Tells the peer goodbye (best effort), stops all threads and releases the connection. Blocked
  // Send()/Recv() calls return CANCELLED. Idempotent; the destructor calls it.
  virtual void Close() = 0;

  // OK while the channel works; otherwise the error that ended it.
  virtual absl::Status health() const = 0;

  virtual ChannelStats stats() const = 0;
};

}  // namespace asyncspade::data_plane
