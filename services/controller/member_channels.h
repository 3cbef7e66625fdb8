// gRPC channels from the controller to its members (decode workers and selectors), one per address
// and shared by the request path and the reconcile loop, so a member is reached over one HTTP/2
// connection.
#pragma once

#include <map>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpcpp/channel.h"

namespace asyncspade::controller {

class MemberChannels {
 public:
  std::shared_ptr<grpc::Channel> Get(const std::string& address);

 private:
  absl::Mutex mutex_;
  std::map<std::string, std::shared_ptr<grpc::Channel>> channels_ ABSL_GUARDED_BY(mutex_);
};

// Whether a gRPC server answers at `address` within `timeout` (a connection and HTTP/2 handshake
// on a fresh channel). A connection that neither succeeds nor fails in time counts as answering: a
// process that hangs is not proof that it is gone.
bool AddressAnswers(const std::string& address, absl::Duration timeout);

}  // namespace asyncspade::controller
