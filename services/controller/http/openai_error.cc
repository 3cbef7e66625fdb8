#include "services/controller/http/openai_error.h"

#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/cord.h"

namespace asyncspade::controller::http {
namespace {

constexpr char kParamPayloadUrl[] = "type.asyncspade/openai.param";

// The `type` values follow OpenAI's (invalid_request_error, ...), whose Python client maps HTTP
// statuses to exception classes on its own; the type is for people reading the body.
std::string ErrorType(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange: return "invalid_request_error";
    case absl::StatusCode::kUnauthenticated: return "authentication_error";
    case absl::StatusCode::kPermissionDenied: return "permission_error";
    case absl::StatusCode::kNotFound: return "not_found_error";
    case absl::StatusCode::kAlreadyExists:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kAborted: return "conflict_error";
    case absl::StatusCode::kResourceExhausted: return "rate_limit_error";
    case absl::StatusCode::kCancelled: return "cancelled_error";
    case absl::StatusCode::kUnimplemented: return "not_implemented_error";
    case absl::StatusCode::kUnavailable: return "service_unavailable_error";
    case absl::StatusCode::kDeadlineExceeded: return "timeout_error";
    default: return "server_error";
  }
}

}  // namespace

int HttpStatusFor(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kOk: return 200;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange: return 400;
    case absl::StatusCode::kUnauthenticated: return 401;
    case absl::StatusCode::kPermissionDenied: return 403;
    case absl::StatusCode::kNotFound: return 404;
    case absl::StatusCode::kAlreadyExists:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kAborted: return 409;
    case absl::StatusCode::kResourceExhausted: return 429;
    case absl::StatusCode::kCancelled: return 499;  // client closed request (nginx's convention)
    case absl::StatusCode::kUnimplemented: return 501;
    case absl::StatusCode::kUnavailable: return 503;
    case absl::StatusCode::kDeadlineExceeded: return 504;
    default: return 500;
  }
}

absl::Status WithParam(absl::Status status, const std::string& param) {
  if (!status.ok()) status.SetPayload(kParamPayloadUrl, absl::Cord(param));
  return status;
}

absl::Status InvalidField(const std::string& param, const std::string& message) {
  return WithParam(absl::InvalidArgumentError(message), param);
}

ResponseJson ErrorBody(const absl::Status& status) {
  ResponseJson param = nullptr;
  if (auto payload = status.GetPayload(kParamPayloadUrl)) param = std::string(*payload);
  return {{"error",
           {{"message", std::string(status.message())},
            {"type", ErrorType(status.code())},
            {"param", std::move(param)},
            {"code", absl::AsciiStrToLower(absl::StatusCodeToString(status.code()))}}}};
}

}  // namespace asyncspade::controller::http
