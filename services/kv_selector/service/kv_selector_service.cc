#include "services/kv_selector/service/kv_selector_service.h"

#include "common/control/grpc_status.h"

namespace asyncspade {

grpc::Status KvSelectorServiceImpl::ApplyLinks(grpc::ServerContext*, const selector::v1::ApplyLinksRequest* request,
                                               selector::v1::ApplyLinksResponse*) {
  return ToGrpcStatus(hooks_.apply_links(request->assignment()));
}

grpc::Status KvSelectorServiceImpl::Drain(grpc::ServerContext*, const control::v1::DrainRequest*,
                                          control::v1::DrainResponse*) {
  hooks_.drain();
  return grpc::Status::OK;
}

grpc::Status KvSelectorServiceImpl::GetStats(grpc::ServerContext*, const selector::v1::SelectorStatsRequest*,
                                             selector::v1::SelectorStatsResponse* response) {
  *response = hooks_.stats();
  return grpc::Status::OK;
}

}  // namespace asyncspade
