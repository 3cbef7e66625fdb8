#include "common/control/control_plane_store.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/control/grpc_status.h"
#include "grpcpp/create_channel.h"

namespace asyncspade {

namespace {
// One StoreGet waits at most this long on the server; longer waits are a loop of such calls, so a
// controller restart or a dropped connection costs at most one slice.
constexpr absl::Duration kGetSlice = absl::Seconds(5);
}  // namespace

ControlPlaneRendezvousStore::ControlPlaneRendezvousStore(const std::string& controller_address)
    : address_(controller_address),
      stub_(control::v1::ControlService::NewStub(
          grpc::CreateChannel(controller_address, grpc::InsecureChannelCredentials()))) {}

absl::Status ControlPlaneRendezvousStore::Set(const std::string& key, const std::string& value) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  control::v1::StoreSetRequest request;
  request.set_key(key);
  request.set_value(value);
  control::v1::StoreSetResponse response;
  return FromGrpcStatus(stub_->StoreSet(&ctx, request, &response),
                        absl::StrCat("controller ", address_, ": StoreSet ", key));
}

absl::StatusOr<std::string> ControlPlaneRendezvousStore::Get(const std::string& key,
                                                             absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    const absl::Duration left = deadline - absl::Now();
    const absl::Duration slice = std::max(absl::ZeroDuration(), std::min(left, kGetSlice));
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + slice + absl::Seconds(5)));
    control::v1::StoreGetRequest request;
    request.set_key(key);
    request.set_timeout_ms(static_cast<int32_t>(absl::ToInt64Milliseconds(slice)));
    control::v1::StoreGetResponse response;
    grpc::Status status = stub_->StoreGet(&ctx, request, &response);
    if (status.ok()) return response.value();
    const bool retry = status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED ||
                       status.error_code() == grpc::StatusCode::NOT_FOUND ||
                       status.error_code() == grpc::StatusCode::UNAVAILABLE;
    if (!retry) return FromGrpcStatus(status, absl::StrCat("controller ", address_, ": StoreGet ", key));
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(absl::StrCat(
          "rendezvous key '", key, "' did not appear on controller ", address_, " within ",
          absl::FormatDuration(timeout), " (is the peer process running?)"));
    }
    if (status.error_code() == grpc::StatusCode::UNAVAILABLE) absl::SleepFor(absl::Milliseconds(100));
  }
}

absl::Status ControlPlaneRendezvousStore::Delete(const std::string& key) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  control::v1::StoreDeleteRequest request;
  request.set_key(key);
  control::v1::StoreDeleteResponse response;
  return FromGrpcStatus(stub_->StoreDelete(&ctx, request, &response),
                        absl::StrCat("controller ", address_, ": StoreDelete ", key));
}

}  // namespace asyncspade
