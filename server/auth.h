// Who may drive which robot (issue #25; docs/SECURITY.md). A token file maps credentials to the
// robot-id patterns they may drive:
//
//   {"tokens": [{"name": "cell-3", "sha256": "<64 hex digits>", "robots": ["cell3-*"]}],
//    "identities": [{"name": "arm-7", "identity": "arm-7.robots.example", "robots": ["arm-7"]}]}
//
// - A token is presented as gRPC metadata `authorization: Bearer <token>`; the file holds only its
//   SHA-256 digest (`printf %s "$TOKEN" | sha256sum`), never the token itself. Digests are compared
//   in constant time against every entry (no early exit, so timing says nothing about which
//   entry or prefix matched).
// - With mTLS, the verified client certificate's identities (subject CN and SANs, as gRPC's auth
//   context reports them) may match an "identities" entry instead of a token.
// - Patterns are shell globs (fnmatch(3): `*`, `?`, `[...]`) over the whole robot id.
//
// Outcomes: no credential or an unknown one -> UNAUTHENTICATED; a robot outside the grant's
// patterns -> PERMISSION_DENIED. Error messages name the entry (its "name"), never a token.
//
// Thread safety: immutable after Create; every method may be called concurrently.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"

namespace specprune {

// What one credential may do.
struct AuthGrant {
  std::string name;                         // the entry's name, for logs and errors
  std::vector<std::string> robot_patterns;  // fnmatch globs over robot_id
};

class Authorizer {
 public:
  // Parses a token file's JSON; errors name the field (e.g. `tokens[2].sha256: must be 64 hex
  // digits`). An empty file (no tokens, no identities) is an error: it would lock everyone out.
  static absl::StatusOr<std::unique_ptr<Authorizer>> FromJson(const nlohmann::json& j);
  // Reads and parses `path`; errors are prefixed with the path.
  static absl::StatusOr<std::unique_ptr<Authorizer>> FromFile(const std::string& path);

  // The grant of `bearer_token` (the text after "Bearer ", or nullopt when none was sent), else of
  // the first entry matching one of `peer_identities`. UNAUTHENTICATED when neither matches.
  absl::StatusOr<AuthGrant> Authenticate(const std::optional<std::string>& bearer_token,
                                         const std::vector<std::string>& peer_identities) const;

  // OK when `grant` may drive `robot_id`, else PERMISSION_DENIED naming both.
  static absl::Status Authorize(const AuthGrant& grant, absl::string_view robot_id);

  // The bearer token of an `authorization` metadata value ("Bearer <token>", scheme
  // case-insensitive); nullopt for anything else.
  static std::optional<std::string> BearerToken(absl::string_view authorization);

  // Lowercase hex SHA-256 of `text` (what the token file stores).
  static std::string Sha256Hex(absl::string_view text);

 private:
  struct TokenEntry {
    std::string digest;  // 32 raw bytes
    AuthGrant grant;
  };
  struct IdentityEntry {
    std::string identity;
    AuthGrant grant;
  };
  Authorizer() = default;

  std::vector<TokenEntry> tokens_;
  std::vector<IdentityEntry> identities_;
};

}  // namespace specprune
