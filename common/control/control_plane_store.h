// The rendezvous store of data-plane channels, served by the controller over gRPC: the two ends of
// a channel exchange their addresses through it, so nothing but the controller's address has to be
// configured.
#pragma once

#include <memory>
#include <string>

#include "asyncspade/control/v1/control.grpc.pb.h"
#include "common/data_plane/rendezvous_store.h"

namespace asyncspade {

class ControlPlaneRendezvousStore : public data_plane::RendezvousStore {
 public:
  // `controller_address` is host:port of the controller's gRPC endpoint.
  explicit ControlPlaneRendezvousStore(const std::string& controller_address);

  absl::Status Set(const std::string& key, const std::string& value) override;
  absl::StatusOr<std::string> Get(const std::string& key, absl::Duration timeout) override;
  absl::Status Delete(const std::string& key) override;

 private:
  std::string address_;
  std::unique_ptr<control::v1::ControlService::Stub> stub_;
};

}  // namespace asyncspade
