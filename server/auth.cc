#include "server/auth.h"

#include <fnmatch.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>

#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "util/json_fields.h"
#include "util/status_macros.h"

namespace specprune {
namespace {

using json = nlohmann::json;

std::string Sha256(absl::string_view text) {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(text.data()), text.size(), digest);
  return std::string(reinterpret_cast<const char*>(digest), sizeof digest);
}

absl::Status ReadGrant(const json& entry, const std::string& label, AuthGrant* grant) {
  SP_RETURN_IF_ERROR(
      json_fields::ReadString(entry.value("name", json()), label + ".name", &grant->name));
  if (grant->name.empty()) return json_fields::FieldError(label + ".name", "must not be empty");
  SP_RETURN_IF_ERROR(json_fields::ReadInto(entry.value("robots", json()), label + ".robots",
                                           &grant->robot_patterns));
  if (grant->robot_patterns.empty()) {
    return json_fields::FieldError(label + ".robots", "must list at least one robot-id pattern");
  }
  return absl::OkStatus();
}

absl::Status ReadTokens(const json& list, std::vector<AuthGrant>* grants,
                        std::vector<std::string>* digests) {
  if (!list.is_array()) return json_fields::FieldError("tokens", "must be an array");
  for (size_t i = 0; i < list.size(); ++i) {
    const std::string label = absl::StrCat("tokens[", i, "]");
    SP_RETURN_IF_ERROR(
        json_fields::CheckKnownKeys(list[i], label, label + ".", {"name", "sha256", "robots"}));
    AuthGrant grant;
    SP_RETURN_IF_ERROR(ReadGrant(list[i], label, &grant));
    std::string hex;
    SP_RETURN_IF_ERROR(
        json_fields::ReadString(list[i].value("sha256", json()), label + ".sha256", &hex));
    hex = absl::AsciiStrToLower(hex);
    if (hex.size() != 64 || hex.find_first_not_of("0123456789abcdef") != std::string::npos) {
      return json_fields::FieldError(label + ".sha256",
                                     "must be 64 hex digits (the token's SHA-256, not the token)");
    }
    grants->push_back(std::move(grant));
    digests->push_back(absl::HexStringToBytes(hex));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Authorizer>> Authorizer::FromJson(const json& j) {
  SP_RETURN_IF_ERROR(json_fields::CheckKnownKeys(j, "token file", "", {"tokens", "identities"}));
  std::unique_ptr<Authorizer> auth(new Authorizer());
  if (j.contains("tokens")) {
    std::vector<AuthGrant> grants;
    std::vector<std::string> digests;
    SP_RETURN_IF_ERROR(ReadTokens(j["tokens"], &grants, &digests));
    for (size_t i = 0; i < grants.size(); ++i) {
      auth->tokens_.push_back({std::move(digests[i]), std::move(grants[i])});
    }
  }
  if (j.contains("identities")) {
    const json& list = j["identities"];
    if (!list.is_array()) return json_fields::FieldError("identities", "must be an array");
    for (size_t i = 0; i < list.size(); ++i) {
      const std::string label = absl::StrCat("identities[", i, "]");
      SP_RETURN_IF_ERROR(
          json_fields::CheckKnownKeys(list[i], label, label + ".", {"name", "identity", "robots"}));
      IdentityEntry entry;
      SP_RETURN_IF_ERROR(ReadGrant(list[i], label, &entry.grant));
      SP_RETURN_IF_ERROR(json_fields::ReadString(list[i].value("identity", json()),
                                                 label + ".identity", &entry.identity));
      if (entry.identity.empty()) {
        return json_fields::FieldError(label + ".identity", "must not be empty");
      }
      auth->identities_.push_back(std::move(entry));
    }
  }
  if (auth->tokens_.empty() && auth->identities_.empty()) {
    return absl::InvalidArgumentError(
        "token file: no tokens and no identities (every call would be refused)");
  }
  return auth;
}

absl::StatusOr<std::unique_ptr<Authorizer>> Authorizer::FromFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("token file \"", path, "\": cannot be opened"));
  std::stringstream text;
  text << in.rdbuf();
  const json j = json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": malformed JSON"));
  }
  absl::StatusOr<std::unique_ptr<Authorizer>> auth = FromJson(j);
  if (!auth.ok()) {
    return absl::Status(auth.status().code(), absl::StrCat(path, ": ", auth.status().message()));
  }
  return auth;
}

absl::StatusOr<AuthGrant> Authorizer::Authenticate(
    const std::optional<std::string>& bearer_token,
    const std::vector<std::string>& peer_identities) const {
  if (bearer_token.has_value()) {
    const std::string digest = Sha256(*bearer_token);
    const TokenEntry* match = nullptr;
    for (const TokenEntry& entry : tokens_) {  // every entry, whatever matched before
      const bool equal = CRYPTO_memcmp(digest.data(), entry.digest.data(), digest.size()) == 0;
      if (equal && match == nullptr) match = &entry;
    }
    if (match != nullptr) return match->grant;
    return absl::UnauthenticatedError("unknown token");
  }
  for (const IdentityEntry& entry : identities_) {
    for (const std::string& identity : peer_identities) {
      if (identity == entry.identity) return entry.grant;
    }
  }
  if (!peer_identities.empty()) {
    return absl::UnauthenticatedError(
        "client certificate identity not in the token file, and no token (metadata "
        "\"authorization: Bearer <token>\")");
  }
  return absl::UnauthenticatedError("missing token (metadata \"authorization: Bearer <token>\")");
}

absl::Status Authorizer::Authorize(const AuthGrant& grant, absl::string_view robot_id) {
  const std::string id(robot_id);
  for (const std::string& pattern : grant.robot_patterns) {
    if (fnmatch(pattern.c_str(), id.c_str(), 0) == 0) return absl::OkStatus();
  }
  return absl::PermissionDeniedError(
      absl::StrCat("robot_id \"", robot_id, "\": not allowed for credential \"", grant.name, "\""));
}

std::optional<std::string> Authorizer::BearerToken(absl::string_view authorization) {
  authorization = absl::StripAsciiWhitespace(authorization);
  if (authorization.size() < 7 || !absl::EqualsIgnoreCase(authorization.substr(0, 7), "bearer ")) {
    return std::nullopt;
  }
  absl::string_view token = absl::StripAsciiWhitespace(authorization.substr(7));
  if (token.empty()) return std::nullopt;
  return std::string(token);
}

std::string Authorizer::Sha256Hex(absl::string_view text) {
  return absl::BytesToHexString(Sha256(text));
}

}  // namespace specprune
