// The selector's end of one data-plane link to one decode worker: a thread that opens the channel
// (meeting the worker in the controller's rendezvous store, retrying until the link is withdrawn),
// then serves it message by message:
//   HELLO        geometry and defaults; creates this link's key index
//   APPEND_KEYS  bulk keys of one (sequence, layer) into the index
//   SELECT       appends each sequence's new key, selects top-k with its predicted queries and
//                replies SELECTION (one per SELECT, in order)
//   DETACH       frees sequences
//   GOODBYE      the worker closes the link on purpose
// A problem with one sequence is answered with an ERROR for that sequence (the worker re-attaches
// it); a malformed HELLO with an ERROR for the whole channel. The selector holds no query state:
// when the channel fails (the worker is gone), its index is dropped.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "asyncspade/control/v1/control.pb.h"
#include "asyncspade/selector/v1/selector.pb.h"
#include "common/data_plane/channel.h"
#include "common/data_plane/rendezvous_store.h"
#include "services/kv_selector/selection/key_index.h"
#include "services/kv_selector/selection/top_k_selection.h"

namespace asyncspade {

// Counters shared by every link of one selector process.
struct SelectorCounters {
  std::atomic<int64_t> selections_total{0};      // (sequence, layer) selections answered
  std::atomic<int64_t> select_messages_total{0};
  std::atomic<int64_t> select_nanoseconds_total{0};  // time spent in SELECT handling
  std::atomic<int64_t> errors_sent_total{0};
  std::atomic<int64_t> channel_failures_total{0};
};

struct SelectorChannelOptions {
  std::string selector_id;
  data_plane::RendezvousStore* store = nullptr;  // not owned
  std::string host = "127.0.0.1";
  absl::Duration connect_timeout = absl::Seconds(20);
  absl::Duration keepalive_interval = absl::Seconds(1);
  absl::Duration peer_timeout = absl::Seconds(10);
  size_t max_index_bytes = 0;  // per link; 0: unlimited
  SelectorCounters* counters = nullptr;  // not owned
};

class SelectorChannelServer {
 public:
  SelectorChannelServer(control::v1::SelectorLink link, SelectorChannelOptions options);
  // Stops (GOODBYE to the worker) and joins.
  ~SelectorChannelServer();
  SelectorChannelServer(const SelectorChannelServer&) = delete;
  SelectorChannelServer& operator=(const SelectorChannelServer&) = delete;

  void Start();
  // Says GOODBYE (`why`), closes the channel and joins the thread. Idempotent.
  void Stop(const std::string& why);

  const control::v1::SelectorLink& link() const { return link_; }
  // Connected and configured by HELLO.
  bool serving() const;
  // The thread has ended (channel failed, closed by the worker, or stopped).
  bool ended() const;
  int64_t attached_sequences() const;
  int64_t indexed_keys() const;

 private:
  void Run();
  // Serves one message; a non-OK status ends the link (the channel itself failed).
  absl::Status Handle(data_plane::Message message);
  absl::Status HandleHello(const data_plane::Message& message);
  absl::Status HandleAppendKeys(const data_plane::Message& message);
  absl::Status HandleSelect(const data_plane::Message& message);
  absl::Status HandleDetach(const data_plane::Message& message);
  // Sends ERROR (sequence_id -1: the whole channel). Fails only when the channel did.
  absl::Status SendError(int64_t sequence_id, const std::string& message);
  std::string Where() const;

  const control::v1::SelectorLink link_;
  const SelectorChannelOptions options_;
  absl::Notification stop_;
  std::thread thread_;

  mutable absl::Mutex mutex_;
  std::unique_ptr<data_plane::Channel> channel_ ABSL_GUARDED_BY(mutex_);  // set once connected
  bool said_goodbye_ ABSL_GUARDED_BY(mutex_) = false;
  std::string stop_reason_ ABSL_GUARDED_BY(mutex_);
  std::shared_ptr<selection::KeyIndex> index_ ABSL_GUARDED_BY(mutex_);  // set by HELLO
  std::atomic<bool> ended_{false};

  // Serving thread only.
  data_plane::Channel* serving_channel_ = nullptr;
  selector::v1::Hello hello_;
  selection::SelectionParams params_;
  selection::SelectionScratch scratch_;
};

}  // namespace asyncspade
