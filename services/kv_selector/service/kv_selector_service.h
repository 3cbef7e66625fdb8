// KvSelectorService (selector.proto): what the controller calls on a KV selector. ApplyLinks hands
// over the links to decode workers (opened and closed in the background: both ends must meet in
// the rendezvous store, so the RPC cannot wait for them), Drain marks the selector as leaving,
// GetStats reports what it indexes and how fast it selects.
#pragma once

#include <functional>

#include "absl/status/status.h"
#include "asyncspade/selector/v1/selector.grpc.pb.h"

namespace asyncspade {

struct KvSelectorServiceHooks {
  std::function<absl::Status(const control::v1::Assignment&)> apply_links;
  std::function<void()> drain;
  std::function<selector::v1::SelectorStatsResponse()> stats;
};

class KvSelectorServiceImpl final : public selector::v1::KvSelectorService::Service {
 public:
  explicit KvSelectorServiceImpl(KvSelectorServiceHooks hooks) : hooks_(std::move(hooks)) {}

  grpc::Status ApplyLinks(grpc::ServerContext* context, const selector::v1::ApplyLinksRequest* request,
                          selector::v1::ApplyLinksResponse* response) override;
  grpc::Status Drain(grpc::ServerContext* context, const control::v1::DrainRequest* request,
                     control::v1::DrainResponse* response) override;
  grpc::Status GetStats(grpc::ServerContext* context, const selector::v1::SelectorStatsRequest* request,
                        selector::v1::SelectorStatsResponse* response) override;

 private:
  const KvSelectorServiceHooks hooks_;
};

}  // namespace asyncspade
