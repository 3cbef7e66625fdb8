// A data-plane channel over TCP through Gloo: a 2-rank Gloo context per (decode worker, selector)
// pair, connected through the rendezvous store. The CPU transport; see channel.h for the contract
// and message_header.h for the wire format.
//
// Threads (all joined by Close()): Gloo's own event loop; a receiver that always has the next head
// transfer posted, so the peer's sends never wait for this process's callers, and that queues
// complete messages in an inbox for Recv(); a monitor that enforces the handshake deadline, the
// goodbye deadline and the peer timeout; and, when the peer timeout is on, a heartbeat that sends
// a keepalive whenever nothing else was sent for keepalive_interval.
//
// Gloo signals errors by throwing and fails a whole context when any wait times out, so every Gloo
// call here is wrapped in try/catch and every wait is unbounded but abortable: deadlines are
// enforced by the monitor, which aborts the waits, never by Gloo timeouts.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/synchronization/mutex.h"
#include "common/data_plane/channel.h"
#include "common/data_plane/channel_spec.h"

namespace gloo {
namespace rendezvous {
class Context;
}  // namespace rendezvous
namespace transport {
class Device;
class UnboundBuffer;
}  // namespace transport
}  // namespace gloo

namespace asyncspade::data_plane {

class GlooChannel final : public Channel {
 public:
  // Connects to the peer and completes the handshake (see CreateChannel()). Sets SIGPIPE to
  // ignored when it still has its default action: a write to a socket the peer reset must become
  // an error, not kill the process.
  static absl::StatusOr<std::unique_ptr<GlooChannel>> Create(const ChannelSpec& spec);
  ~GlooChannel() override;
  GlooChannel(const GlooChannel&) = delete;
  GlooChannel& operator=(const GlooChannel&) = delete;

  const std::string& id() const override { return spec_.channel_id; }
  uint64_t epoch() const override { return spec_.epoch; }
  ChannelRole role() const override { return spec_.role; }
  std::string peer_description() const override;

  absl::Status Send(uint32_t tag, absl::Span<const Buffer> parts) override;
  absl::StatusOr<Message> Recv(absl::Duration timeout) override;
  void Close() override;
  absl::Status health() const override;
  ChannelStats stats() const override;

  // Sends a user message whose header carries `epoch` instead of the channel's, as a replaced
  // peer's leftover traffic would: lets tests prove that such traffic is dropped, not delivered.
  absl::Status SendWithEpochForTesting(uint32_t tag, absl::Span<const Buffer> parts,
                                       uint64_t epoch);

 private:
  explicit GlooChannel(const ChannelSpec& spec);

  // Creation steps.
  absl::Status Connect();
  absl::Status Handshake();
  std::string HelloPayload() const;
  absl::Status AcceptHello(const Message& hello) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  // Sending.
  absl::Status CheckOutgoing(absl::Span<const Buffer> parts) const;
  absl::Status SendMessage(uint32_t tag, absl::Span<const Buffer> parts, uint64_t epoch)
      ABSL_LOCKS_EXCLUDED(send_mutex_);
  absl::Status SendMessageLocked(uint32_t tag, absl::Span<const Buffer> parts, uint64_t epoch)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(send_mutex_);

  // Receiving (receiver thread only).
  void ReceiveLoop();
  absl::Status ReceivePayload(std::vector<std::vector<uint8_t>>& parts);
  // Returns false when the receiver must stop.
  bool Deliver(Message message);

  void MonitorLoop();
  void HeartbeatLoop();

  // Gloo operations, every exception caught. A transfer is posted, then awaited; the wait ends
  // when it completes, when the connection fails, or when Fail() aborts it.
  enum class Direction { kSend, kRecv };
  absl::Status Post(gloo::transport::UnboundBuffer& buffer, Direction direction, uint64_t slot,
                    size_t bytes);
  absl::Status Await(gloo::transport::UnboundBuffer& buffer, Direction direction);
  absl::Status FailFromGloo(const std::string& what);

  // Records the first failure, stops the threads and aborts every wait in flight. `orderly`
  // failures (the peer said goodbye) are not logged as warnings.
  void Fail(const absl::Status& status) ABSL_LOCKS_EXCLUDED(mutex_);
  void FailLocked(const absl::Status& status, bool orderly = false)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  absl::Status StoppedStatusLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  // "data-plane channel 'x' epoch 3 (decode worker end): "
  std::string Where() const;
  std::string peer_description_locked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  const ChannelSpec spec_;
  const uint64_t fingerprint_;
  const int rank_;
  const int peer_rank_;

  std::shared_ptr<gloo::transport::Device> device_;
  std::shared_ptr<gloo::rendezvous::Context> context_;

  // Serialises whole messages: a message's head and payload transfers are never interleaved with
  // another message's.
  absl::Mutex send_mutex_ ABSL_ACQUIRED_BEFORE(mutex_);
  std::vector<uint8_t> send_head_ ABSL_GUARDED_BY(send_mutex_);
  std::unique_ptr<gloo::transport::UnboundBuffer> send_head_buffer_ ABSL_GUARDED_BY(send_mutex_);
  uint64_t next_send_sequence_ ABSL_GUARDED_BY(send_mutex_) = 0;

  mutable absl::Mutex mutex_;
  absl::Status failure_ ABSL_GUARDED_BY(mutex_);
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
  bool close_started_ ABSL_GUARDED_BY(mutex_) = false;
  bool close_finished_ ABSL_GUARDED_BY(mutex_) = false;
  absl::Time close_deadline_ ABSL_GUARDED_BY(mutex_) = absl::InfiniteFuture();
  bool handshake_done_ ABSL_GUARDED_BY(mutex_) = false;
  absl::Time handshake_deadline_ ABSL_GUARDED_BY(mutex_) = absl::InfiniteFuture();
  std::string peer_details_ ABSL_GUARDED_BY(mutex_);
  // Our rendezvous keys, deleted once the handshake proves the peer has read them.
  std::vector<std::string> keys_to_delete_ ABSL_GUARDED_BY(mutex_);
  std::deque<Message> inbox_ ABSL_GUARDED_BY(mutex_);
  uint64_t inbox_bytes_ ABSL_GUARDED_BY(mutex_) = 0;
  absl::flat_hash_set<gloo::transport::UnboundBuffer*> in_flight_sends_ ABSL_GUARDED_BY(mutex_);
  absl::flat_hash_set<gloo::transport::UnboundBuffer*> in_flight_recvs_ ABSL_GUARDED_BY(mutex_);

  uint64_t next_receive_sequence_ = 0;  // receiver thread only

  // Steady-clock nanoseconds of the last completed transfer in each direction.
  std::atomic<int64_t> last_send_ns_{0};
  std::atomic<int64_t> last_receive_ns_{0};

  std::atomic<uint64_t> messages_sent_{0};
  std::atomic<uint64_t> bytes_sent_{0};
  std::atomic<uint64_t> messages_received_{0};
  std::atomic<uint64_t> bytes_received_{0};
  std::atomic<uint64_t> stale_epoch_messages_dropped_{0};
  std::atomic<uint64_t> keepalives_sent_{0};
  std::atomic<uint64_t> keepalives_received_{0};

  std::thread receiver_;
  std::thread monitor_;
  std::thread heartbeat_;
};

}  // namespace asyncspade::data_plane
