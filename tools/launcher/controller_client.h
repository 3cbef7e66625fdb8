// Clients of a running deployment's controller: the control plane (what the launcher polls and
// `asyncspade ctl` calls) and the generation API (what `asyncspade generate`, `demo`, `bench` and
// the end-to-end tests stream from).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "asyncspade/control/v1/control.grpc.pb.h"
#include "asyncspade/serving/v1/generation.grpc.pb.h"
#include "grpcpp/channel.h"

namespace asyncspade::launcher {

namespace control = ::asyncspade::control::v1;
namespace serving = ::asyncspade::serving::v1;

class ControllerClient {
 public:
  // `endpoint`: the controller's gRPC address, HOST:PORT. Connects lazily.
  explicit ControllerClient(const std::string& endpoint);

  const std::string& endpoint() const { return endpoint_; }

  // Errors name the endpoint and the call; UNAVAILABLE means the controller cannot be reached.
  absl::StatusOr<control::ListMembersResponse> ListMembers(absl::Duration timeout = absl::Seconds(5));
  absl::StatusOr<control::GetDesiredStateResponse> GetDesiredState(absl::Duration timeout = absl::Seconds(5));
  absl::Status Drain(const std::string& member_id, absl::Duration timeout = absl::Seconds(5));
  absl::StatusOr<int> ScaleSelectors(int replicas, absl::Duration timeout = absl::Seconds(5));
  absl::Status Deregister(const std::string& member_id, uint64_t incarnation,
                          absl::Duration timeout = absl::Seconds(5));
  absl::StatusOr<serving::ModelInfo> GetModelInfo(absl::Duration timeout = absl::Seconds(5));
  absl::StatusOr<bool> Abort(const std::string& request_id, absl::Duration timeout = absl::Seconds(5));

  control::ControlService::Stub& control_stub() { return *control_; }
  serving::GenerationService::Stub& generation_stub() { return *generation_; }
  std::shared_ptr<grpc::Channel> channel() const { return channel_; }

 private:
  std::string endpoint_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<control::ControlService::Stub> control_;
  std::unique_ptr<serving::GenerationService::Stub> generation_;
};

// One streamed generation as the client saw it.
struct GenerationOutcome {
  std::vector<int32_t> token_ids;
  std::string text;
  std::optional<serving::GenerateFinal> final;  // absent only when the stream broke
  std::string request_id;
  // Client-side timings, in seconds from the call: when each chunk with tokens arrived and how
  // many tokens it carried.
  std::vector<std::pair<double, int>> chunk_arrivals;
  double total_seconds = 0;

  double first_token_seconds() const { return chunk_arrivals.empty() ? 0 : chunk_arrivals.front().first; }
  // (last token - first token) / (tokens - 1): the client-side mean inter-token latency (TPOT).
  std::optional<double> mean_inter_token_seconds() const;
};

// Streams one Generate call. `on_chunk` (optional) sees every chunk as it arrives. A gRPC error
// (before or during the stream) is returned as an error status that names the endpoint; a stream
// that ends with FINISH_REASON_ERROR returns OK with `final` set (the caller decides). `on_started`
// (optional) receives the call's context, e.g. to cancel it from another thread.
absl::StatusOr<GenerationOutcome> StreamGenerate(
    ControllerClient& client, const serving::GenerateRequest& request,
    const std::function<void(const serving::GenerateChunk&)>& on_chunk = nullptr,
    absl::Duration timeout = absl::InfiniteDuration(),
    const std::function<void(grpc::ClientContext*)>& on_started = nullptr);

// "dense", "quest", "oracle", "asyncspade" (case-insensitive); InvalidArgument listing them otherwise.
absl::StatusOr<serving::SparsePolicy> ParseSparsePolicy(const std::string& name);
// "dense", ... ("default" for UNSPECIFIED).
std::string SparsePolicyName(serving::SparsePolicy policy);
// "length", "stop", "stop string", "aborted", "error".
std::string FinishReasonText(serving::FinishReason reason);

// Turns "failed to connect to all addresses" into what to do: is the deployment running, is the
// endpoint right.
absl::Status ExplainUnreachable(const absl::Status& status, const std::string& endpoint);

}  // namespace asyncspade::launcher
