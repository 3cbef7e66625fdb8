// The KV-selector process as a library (main.cc is a thin wrapper; tests run it in-process): its
// gRPC KvSelectorService, one SelectorChannelServer (a serving thread) per link the controller
// assigns, and its membership in the deployment (register, heartbeat the attached sequences, drain,
// deregister). It holds no query state and needs no model weights: the geometry comes with each
// link's HELLO.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "common/control/member_client.h"
#include "common/data_plane/rendezvous_store.h"
#include "grpcpp/server.h"
#include "services/kv_selector/service/kv_selector_service.h"
#include "services/kv_selector/service/selector_channel_server.h"

namespace asyncspade {

struct KvSelectorOptions {
  std::string controller_address;  // host:port of the controller
  std::string member_id = "selector-0";
  std::string host = "127.0.0.1";  // gRPC and data-plane interface
  int port = 0;                    // 0: any free port
  std::vector<std::string> devices = {"cpu"};
  absl::Duration register_timeout = absl::Seconds(60);
  size_t max_index_bytes_per_link = 0;  // 0: unlimited
  absl::Duration connect_timeout = absl::Seconds(20);
  absl::Duration peer_timeout = absl::Seconds(10);
};

class KvSelector {
 public:
  static absl::StatusOr<std::unique_ptr<KvSelector>> Create(KvSelectorOptions options);
  ~KvSelector();
  KvSelector(const KvSelector&) = delete;
  KvSelector& operator=(const KvSelector&) = delete;

  // Serves gRPC, registers and reports READY.
  absl::Status Start();
  // Closes every link (GOODBYE), stops the server and deregisters. Idempotent.
  void Shutdown();

  // Opens the links of `assignment` that name this selector and closes the others. Returns at once.
  absl::Status ApplyLinks(const control::v1::Assignment& assignment);
  void Drain();

  selector::v1::SelectorStatsResponse Stats() const;
  control::v1::Load CurrentLoad() const;
  std::string address() const;
  const std::string& member_id() const { return options_.member_id; }
  // Links whose channel is up and configured.
  int serving_links() const;

 private:
  explicit KvSelector(KvSelectorOptions options);

  const KvSelectorOptions options_;
  SelectorCounters counters_;
  std::unique_ptr<KvSelectorServiceImpl> service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  std::unique_ptr<data_plane::RendezvousStore> store_;
  std::unique_ptr<MemberClient> member_;

  mutable absl::Mutex mutex_;
  absl::flat_hash_map<std::string, std::unique_ptr<SelectorChannelServer>> links_ ABSL_GUARDED_BY(mutex_);
  // Withdrawn links being closed in the background (closing waits for a connecting link).
  std::vector<std::thread> closers_ ABSL_GUARDED_BY(mutex_);
  uint64_t applied_version_ ABSL_GUARDED_BY(mutex_) = 0;
  bool shut_down_ ABSL_GUARDED_BY(mutex_) = false;
  std::atomic<bool> draining_{false};
  // Applies a drain that arrives with a heartbeat answer (the controller also calls Drain).
  absl::Notification stop_watching_;
  std::thread watcher_;
};

}  // namespace asyncspade
