// The project's status-propagation macros (one definition for every layer).
//
//   SP_RETURN_IF_ERROR(expr);          // expr is an absl::Status; returns it when not OK
//   SP_ASSIGN_OR_RETURN(lhs, expr);    // expr is an absl::StatusOr<T>; returns its status when
//                                      // not OK, else moves the value into lhs (a declaration
//                                      // such as `auto x` or an existing variable)
//
// Both evaluate `expr` once. Abseil has no public equivalent (absl/status/status_macros.h is
// internal to Google), hence these few lines.
#pragma once

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define SP_RETURN_IF_ERROR(expr)                               \
  do {                                                         \
    ::absl::Status sp_status_internal_ = (expr);               \
    if (!sp_status_internal_.ok()) return sp_status_internal_; \
  } while (0)

#define SP_STATUS_MACROS_CONCAT_INNER_(x, y) x##y
#define SP_STATUS_MACROS_CONCAT_(x, y) SP_STATUS_MACROS_CONCAT_INNER_(x, y)

#define SP_ASSIGN_OR_RETURN(lhs, expr) \
  SP_ASSIGN_OR_RETURN_IMPL_(SP_STATUS_MACROS_CONCAT_(sp_statusor_, __LINE__), lhs, expr)

#define SP_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, expr)     \
  auto statusor = (expr);                                  \
  if (!statusor.ok()) return std::move(statusor).status(); \
  lhs = std::move(statusor).value()
