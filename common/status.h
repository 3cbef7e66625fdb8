// Status conventions shared by every module: absl::Status / absl::StatusOr at boundaries, and the
// macros that propagate them. glog CHECK is reserved for internal invariants.
#pragma once

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

#define ASYNCSPADE_STATUS_CONCAT_INNER(a, b) a##b
#define ASYNCSPADE_STATUS_CONCAT(a, b) ASYNCSPADE_STATUS_CONCAT_INNER(a, b)

// Evaluates `expr` (an absl::Status); returns it from the enclosing function if it is not OK.
#define RETURN_IF_ERROR(expr)                                                      \
  do {                                                                             \
    ::absl::Status asyncspade_status_ = (expr);                                    \
    if (!asyncspade_status_.ok()) return asyncspade_status_;                       \
  } while (0)

// `ASSIGN_OR_RETURN(auto x, MakeX());` binds the value of an absl::StatusOr or returns its error.
#define ASSIGN_OR_RETURN(lhs, expr) \
  ASYNCSPADE_ASSIGN_OR_RETURN_IMPL(ASYNCSPADE_STATUS_CONCAT(asyncspade_statusor_, __LINE__), lhs, expr)
#define ASYNCSPADE_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                                      \
  if (!tmp.ok()) return std::move(tmp).status();          \
  lhs = std::move(tmp).value()

namespace asyncspade {

// Prepends context ("loading model.safetensors: ") to a non-OK status, keeping its code.
inline absl::Status Annotate(const absl::Status& status, absl::string_view context) {
  if (status.ok()) return status;
  return absl::Status(status.code(), absl::StrCat(context, ": ", status.message()));
}

}  // namespace asyncspade
