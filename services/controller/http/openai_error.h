// OpenAI-style errors for the HTTP front end: an absl::Status becomes the HTTP status that matches
// its gRPC code and the body {"error": {"message", "type", "param", "code"}}.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "nlohmann/json.hpp"

namespace asyncspade::controller::http {

// Response bodies keep their keys in insertion order, so they read like OpenAI's ("id" first).
using ResponseJson = nlohmann::ordered_json;

// INVALID_ARGUMENT/OUT_OF_RANGE 400, UNAUTHENTICATED 401, PERMISSION_DENIED 403, NOT_FOUND 404,
// ALREADY_EXISTS/FAILED_PRECONDITION/ABORTED 409, RESOURCE_EXHAUSTED 429, CANCELLED 499,
// UNIMPLEMENTED 501, UNAVAILABLE 503, DEADLINE_EXCEEDED 504, anything else 500.
int HttpStatusFor(absl::StatusCode code);

// Marks which request field was wrong; reported as the error's "param".
absl::Status WithParam(absl::Status status, const std::string& param);
absl::Status InvalidField(const std::string& param, const std::string& message);

// {"error": {"message": ..., "type": ..., "param": ... or null, "code": "invalid_argument"...}}.
ResponseJson ErrorBody(const absl::Status& status);

}  // namespace asyncspade::controller::http
