#include "tools/launcher/controller_client.h"

#include <chrono>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/control/grpc_status.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"

namespace asyncspade::launcher {
namespace {

void SetTimeout(grpc::ClientContext& context, absl::Duration timeout) {
  if (timeout == absl::InfiniteDuration()) return;
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::milliseconds(absl::ToInt64Milliseconds(timeout)));
}

}  // namespace

ControllerClient::ControllerClient(const std::string& endpoint)
    : endpoint_(endpoint),
      channel_(grpc::CreateChannel(endpoint, grpc::InsecureChannelCredentials())),
      control_(control::ControlService::NewStub(channel_)),
      generation_(serving::GenerationService::NewStub(channel_)) {}

absl::StatusOr<control::ListMembersResponse> ControllerClient::ListMembers(absl::Duration timeout) {
  grpc::ClientContext context;
  SetTimeout(context, timeout);
  control::ListMembersResponse response;
  grpc::Status status = control_->ListMembers(&context, control::ListMembersRequest(), &response);
  if (!status.ok()) return FromGrpcStatus(status, absl::StrCat("controller ", endpoint_, ": ListMembers"));
  return response;
}

absl::StatusOr<control::GetDesiredStateResponse> ControllerClient::GetDesiredState(absl::Duration timeout) {
  grpc::ClientContext context;
  SetTimeout(context, timeout);
  control::GetDesiredStateResponse response;
  grpc::Status status = control_->GetDesiredState(&context, control::GetDesiredStateRequest(), &response);
  if (!status.ok()) return FromGrpcStatus(status, absl::StrCat("controller ", endpoint_, ": GetDesiredState"));
  return response;
}

absl::Status ControllerClient::Drain(const std::string& member_id, absl::Duration timeout) {
  grpc::ClientContext context;
  SetTimeout(context, timeout);
  control::DrainRequest request;
  request.set_member_id(member_id);
  control::DrainResponse response;
  grpc::Status status = control_->Drain(&context, request, &response);
  if (!status.ok()) return FromGrpcStatus(status, absl::StrCat("controller ", endpoint_, ": Drain"));
  return absl::OkStatus();
}

absl::StatusOr<int> ControllerClient::ScaleSelectors(int replicas, absl::Duration timeout) {
  grpc::ClientContext context;
  SetTimeout(context, timeout);
  control::ScaleSelectorsRequest request;
  request.set_replicas(replicas);
  control::ScaleSelectorsResponse response;
  grpc::Status status = control_->ScaleSelectors(&context, request, &response);
  if (!status.ok()) return FromGrpcStatus(status, absl::StrCat("controller ", endpoint_, ": ScaleSelectors"));
  return response.desired_selectors();
}

absl::Status ControllerClient::Deregister(const std::string& member_id, uint64_t incarnation,
                                          absl::Duration timeout) {
  grpc::ClientContext context;
  SetTimeout(context, timeout);
  control::DeregisterRequest request;
  request.set_member_id(member_id);
  request.set_incarnation(incarnation);
  control::DeregisterResponse response;
  grpc::Status status = control_->Deregister(&context, request, &response);
  if (!status.ok()) return FromGrpcStatus(status, absl::StrCat("controller ", endpoint_, ": Deregister"));
  return absl::OkStatus();
}

absl::StatusOr<serving::ModelInfo> ControllerClient::GetModelInfo(absl::Duration timeout) {
  grpc::ClientContext context;
  SetTimeout(context, timeout);
  serving::ModelInfo response;
  grpc::Status status = generation_->GetModelInfo(&context, serving::GetModelInfoRequest(), &response);
  if (!status.ok()) return FromGrpcStatus(status, absl::StrCat("controller ", endpoint_, ": GetModelInfo"));
  return response;
}

absl::StatusOr<bool> ControllerClient::Abort(const std::string& request_id, absl::Duration timeout) {
  grpc::ClientContext context;
  SetTimeout(context, timeout);
  serving::AbortRequest request;
  request.set_request_id(request_id);
  serving::AbortResponse response;
  grpc::Status status = generation_->Abort(&context, request, &response);
  if (!status.ok()) return FromGrpcStatus(status, absl::StrCat("controller ", endpoint_, ": Abort"));
  return response.found();
}

std::optional<double> GenerationOutcome::mean_inter_token_seconds() const {
  if (token_ids.size() < 2 || chunk_arrivals.empty()) return std::nullopt;
  return (chunk_arrivals.back().first - chunk_arrivals.front().first) / static_cast<double>(token_ids.size() - 1);
}

absl::StatusOr<GenerationOutcome> StreamGenerate(ControllerClient& client, const serving::GenerateRequest& request,
                                                 const std::function<void(const serving::GenerateChunk&)>& on_chunk,
                                                 absl::Duration timeout,
                                                 const std::function<void(grpc::ClientContext*)>& on_started) {
  using Clock = std::chrono::steady_clock;
  grpc::ClientContext context;
  SetTimeout(context, timeout);
  const Clock::time_point start = Clock::now();
  auto seconds_since_start = [&] { return std::chrono::duration<double>(Clock::now() - start).count(); };
  std::unique_ptr<grpc::ClientReader<serving::GenerateResponse>> reader =
      client.generation_stub().Generate(&context, request);
  if (on_started) on_started(&context);
  GenerationOutcome outcome;
  outcome.request_id = request.request_id();
  serving::GenerateResponse response;
  while (reader->Read(&response)) {
    if (!response.request_id().empty()) outcome.request_id = response.request_id();
    if (response.has_chunk()) {
      const serving::GenerateChunk& chunk = response.chunk();
      if (chunk.token_ids_size() > 0) outcome.chunk_arrivals.emplace_back(seconds_since_start(), chunk.token_ids_size());
      outcome.token_ids.insert(outcome.token_ids.end(), chunk.token_ids().begin(), chunk.token_ids().end());
      outcome.text += chunk.text();
      if (on_chunk) on_chunk(chunk);
    } else if (response.has_final()) {
      outcome.final = response.final();
    }
  }
  grpc::Status status = reader->Finish();
  outcome.total_seconds = seconds_since_start();
  if (!status.ok()) {
    return ExplainUnreachable(FromGrpcStatus(status, absl::StrCat("controller ", client.endpoint(), ": Generate")),
                              client.endpoint());
  }
  return outcome;
}

absl::StatusOr<serving::SparsePolicy> ParseSparsePolicy(const std::string& name) {
  const std::string lower = absl::AsciiStrToLower(name);
  if (lower == "dense") return serving::SPARSE_POLICY_DENSE;
  if (lower == "quest") return serving::SPARSE_POLICY_QUEST;
  if (lower == "oracle") return serving::SPARSE_POLICY_ORACLE;
  if (lower == "asyncspade") return serving::SPARSE_POLICY_ASYNCSPADE;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown sparse policy '", name, "'; use dense, quest, oracle or asyncspade"));
}

std::string SparsePolicyName(serving::SparsePolicy policy) {
  switch (policy) {
    case serving::SPARSE_POLICY_DENSE: return "dense";
    case serving::SPARSE_POLICY_QUEST: return "quest";
    case serving::SPARSE_POLICY_ORACLE: return "oracle";
    case serving::SPARSE_POLICY_ASYNCSPADE: return "asyncspade";
    default: return "default";
  }
}

std::string FinishReasonText(serving::FinishReason reason) {
  switch (reason) {
    case serving::FINISH_REASON_LENGTH: return "length";
    case serving::FINISH_REASON_STOP: return "stop";
    case serving::FINISH_REASON_STOP_STRING: return "stop string";
    case serving::FINISH_REASON_ABORTED: return "aborted";
    case serving::FINISH_REASON_ERROR: return "error";
    default: return "unspecified";
  }
}

absl::Status ExplainUnreachable(const absl::Status& status, const std::string& endpoint) {
  if (status.code() != absl::StatusCode::kUnavailable) return status;
  const std::string message(status.message());
  if (message.find("failed to connect") == std::string::npos &&
      message.find("Connection refused") == std::string::npos &&
      message.find("DNS resolution failed") == std::string::npos) {
    return status;
  }
  return absl::UnavailableError(absl::StrCat(
      "cannot reach the controller at ", endpoint, " (", message,
      "); is the deployment running (`asyncspade launch FILE.yaml` prints its grpc endpoint)? "
      "pass --endpoint HOST:PORT or set ASYNCSPADE_ENDPOINT"));
}

}  // namespace asyncspade::launcher
