// absl::Status and grpc::Status map 1:1 (same canonical codes): the service edge converts, nothing
// else needs to know about gRPC's type.
#pragma once

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace asyncspade {

grpc::Status ToGrpcStatus(const absl::Status& status);
// `context` (e.g. "controller 127.0.0.1:5000: Register") is prepended to the message.
absl::Status FromGrpcStatus(const grpc::Status& status, absl::string_view context = "");

}  // namespace asyncspade
