// The SelectorPool of a decode-worker process: the KV selectors are other processes, reached over
// one data-plane channel per (worker, selector) link that the controller assigns.
//
// Threads:
//   - the decode loop thread calls the SelectorPool methods (inside forwards) and the tasks this
//     pool posts to it (between steps). Nothing there waits on the network: sends only enqueue
//     (AsyncChannel).
//   - ApplyAssignment runs on a gRPC thread and returns at once; each new link gets a connector
//     thread that opens the channel (both ends meet in the controller's rendezvous store), sends
//     HELLO, then posts the link's activation to the decode loop.
//   - each channel's receiver thread delivers SELECTION replies into the freshest-selection table.
//
// Keeping a selector's key index right: the pool tracks, per (layer, sequence), how many keys the
// selector serving that layer has indexed. Before a SELECT or APPEND_KEYS that would leave a gap
// (a new selector, a sequence that started while the layer had none, a selector that reported an
// error for the sequence) it bulk-copies the missing keys from the worker's own KV cache; so a new
// or replacement selector is brought up from the worker's cache alone. When a link comes up, every
// sequence the pool knows is re-attached right away (between two steps).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "asyncspade/control/v1/control.pb.h"
#include "asyncspade/selector/v1/selector.pb.h"
#include "common/data_plane/async_channel.h"
#include "common/data_plane/rendezvous_store.h"
#include "services/decode_worker/policy/selector_pool.h"
#include "services/kv_selector/service/selector_wire.h"

namespace asyncspade {

// Reads keys back from the worker's paged KV cache. Called on the decode loop thread only.
class KvKeyReader {
 public:
  virtual ~KvKeyReader() = default;
  // Keys of positions [start, start + num_tokens) of one layer into out[num_tokens][kv_heads][d].
  // False when the cache does not hold them (sequence unknown or shorter).
  virtual bool ReadKeys(int64_t sequence_id, int layer, int32_t start, int32_t num_tokens, float* out) const = 0;
};

struct RemoteSelectorPoolOptions {
  std::string worker_id;
  int num_layers = 0;
  // Geometry and default budget/sinks/recent, sent as HELLO (its `layers` is filled per link).
  selector::v1::Hello hello;
  // The rendezvous store both ends of a channel use (the controller's). Not owned.
  data_plane::RendezvousStore* store = nullptr;
  std::string host = "127.0.0.1";  // this end's data-plane interface
  absl::Duration connect_timeout = absl::Seconds(20);
  absl::Duration keepalive_interval = absl::Seconds(1);
  absl::Duration peer_timeout = absl::Seconds(10);
  // Bulk key copies are split into messages of at most this many bytes of keys.
  uint64_t max_append_bytes = uint64_t{16} << 20;
  // Posts a task to the decode loop thread (runs between two steps). Required.
  std::function<void(std::function<void()>)> run_on_decode_loop;
  // Not owned; used on the decode loop thread only. Required.
  const KvKeyReader* key_reader = nullptr;
};

struct RemoteSelectorPoolStats {
  int links_assigned = 0;
  int links_serving = 0;
  int layers_total = 0;
  int layers_served = 0;
  // SELECTs sent on the serving links that have no SELECTION reply yet.
  int64_t outstanding_selects = 0;
  int64_t link_failures_total = 0;
  int64_t selects_sent_total = 0;          // SELECT messages
  int64_t selections_received_total = 0;   // SELECTION messages
  int64_t selector_errors_total = 0;
  int64_t selects_dropped_total = 0;  // SELECTs not sent (queue full or channel failed)
  int64_t reattached_keys_total = 0;  // keys bulk-copied from the KV cache (attach / re-attach)
};

class RemoteSelectorPool : public SelectorPool {
 public:
  explicit RemoteSelectorPool(RemoteSelectorPoolOptions options);
  ~RemoteSelectorPool() override;
  RemoteSelectorPool(const RemoteSelectorPool&) = delete;
  RemoteSelectorPool& operator=(const RemoteSelectorPool&) = delete;

  // Takes the links of `assignment` that name this worker; opens new ones in the background and
  // closes (GOODBYE) the ones no longer listed or listed with another epoch. Returns at once.
  // INVALID_ARGUMENT for a link whose layers are outside the model.
  absl::Status ApplyAssignment(const control::v1::Assignment& assignment);
  uint64_t applied_assignment_version() const;

  // Closes every link (GOODBYE) and joins the background threads.
  void Shutdown();

  // SelectorPool (decode loop thread).
  bool ServesLayer(int layer) const override;
  void AppendKeys(int layer, int64_t sequence_id, int32_t start_position, int32_t num_tokens,
                  const float* keys) override;
  void Submit(SelectRequest request) override;
  void Detach(int64_t sequence_id) override;
  std::shared_ptr<const Selection> Latest(int64_t sequence_id, int layer) override;
  void BeginStep(uint64_t step) override { current_step_ = step; }

  // Checks the links' health (a selector that died is noticed here when nothing was sent to it).
  // Decode loop thread, e.g. after every step.
  void Poll();

  RemoteSelectorPoolStats stats() const;

 private:
  enum class LinkState { kConnecting, kServing, kFailed, kClosed };
  struct Link {
    control::v1::SelectorLink spec;
    LinkState state = LinkState::kConnecting;  // guarded by the pool's mutex_
    std::unique_ptr<data_plane::AsyncChannel> channel;  // set once connected (under mutex_)
    absl::Notification cancelled;  // the link was withdrawn: stop connecting
    std::thread worker;            // connects, and later closes
    std::atomic<int64_t> selects_sent{0};
    std::atomic<int64_t> selections_received{0};
  };

  void Connect(const std::shared_ptr<Link>& link);
  // Decode loop thread: routes the link's layers to it and re-attaches every known sequence.
  void Activate(const std::shared_ptr<Link>& link);
  void OnMessage(const std::shared_ptr<Link>& link, data_plane::Message message);
  void MarkFailed(const std::shared_ptr<Link>& link, const absl::Status& why) ABSL_LOCKS_EXCLUDED(mutex_);
  void Withdraw(const std::shared_ptr<Link>& link) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // The link serving `layer`, if it is up (decode loop thread).
  std::shared_ptr<Link> ServingLink(int layer) const;
  // Sends on the link; a failure marks the link failed. False if not sent.
  bool Send(const std::shared_ptr<Link>& link, selector::v1::MessageTag tag, selector_wire::Parts parts);
  // Brings (layer, sequence)'s index on the serving link to exactly `position` keys, copying the
  // missing ones from the KV cache (or resetting it when it is ahead). False if it could not.
  bool EnsureIndexed(const std::shared_ptr<Link>& link, int layer, int64_t sequence_id, int32_t position);
  bool SendKeys(const std::shared_ptr<Link>& link, int layer, int64_t sequence_id, int32_t start, int32_t num_tokens,
                const float* keys);
  void NoteKnown(int64_t sequence_id, int32_t length);

  const RemoteSelectorPoolOptions options_;
  const int kv_row_floats_;  // kv_heads * head_dim

  mutable absl::Mutex mutex_;
  uint64_t applied_version_ ABSL_GUARDED_BY(mutex_) = 0;
  absl::flat_hash_map<std::string, std::shared_ptr<Link>> links_ ABSL_GUARDED_BY(mutex_);  // by channel id
  std::vector<std::shared_ptr<Link>> layer_links_ ABSL_GUARDED_BY(mutex_);  // serving link per layer
  std::vector<std::thread> closers_ ABSL_GUARDED_BY(mutex_);
  bool shut_down_ ABSL_GUARDED_BY(mutex_) = false;

  // Decode loop thread only.
  // Keys each sequence is known to have in the cache (from the calls the policy makes).
  absl::flat_hash_map<int64_t, int32_t> known_length_;
  uint64_t current_step_ = 0;
  // Per layer: keys the serving link's selector has indexed per sequence; reset when the link changes.
  std::vector<absl::flat_hash_map<int64_t, int32_t>> indexed_;
  std::vector<const Link*> indexed_for_;  // which link `indexed_[layer]` describes

  // Replies (receiver threads) and Latest() (decode loop).
  mutable absl::Mutex selections_mutex_;
  absl::flat_hash_set<int64_t> attached_ ABSL_GUARDED_BY(selections_mutex_);
  // The step at which a sequence (re)started at position 0: replies to SELECTs of earlier steps
  // describe a previous run (before a preemption) and are dropped.
  absl::flat_hash_map<int64_t, uint64_t> restarted_at_step_ ABSL_GUARDED_BY(selections_mutex_);
  absl::flat_hash_map<std::pair<int64_t, int>, std::shared_ptr<const Selection>> selections_
      ABSL_GUARDED_BY(selections_mutex_);
  // Sequences a selector reported an error for: detached there and re-attached on their next use
  // (by Poll, on the decode loop).
  std::vector<std::pair<std::weak_ptr<Link>, int64_t>> errored_ ABSL_GUARDED_BY(selections_mutex_);

  std::atomic<int64_t> link_failures_total_{0};
  std::atomic<int64_t> selects_sent_total_{0};
  std::atomic<int64_t> selections_received_total_{0};
  std::atomic<int64_t> selector_errors_total_{0};
  std::atomic<int64_t> selects_dropped_total_{0};
  std::atomic<int64_t> reattached_keys_total_{0};
};

}  // namespace asyncspade
