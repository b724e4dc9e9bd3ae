#include "server/tls.h"

#include <fstream>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "grpcpp/security/tls_certificate_provider.h"
#include "grpcpp/security/tls_credentials_options.h"

namespace specprune {
namespace {

// OK when `path` reads as a PEM file holding `marker` (e.g. "CERTIFICATE").
absl::Status CheckPem(const std::string& key, const std::string& path, absl::string_view marker) {
  std::ifstream in(path);
  if (!in) {
    return absl::InvalidArgumentError(
        absl::StrCat("config field \"", key, "\": \"", path, "\" cannot be read"));
  }
  std::stringstream text;
  text << in.rdbuf();
  if (!absl::StrContains(text.str(), absl::StrCat("-----BEGIN ")) ||
      !absl::StrContains(text.str(), marker)) {
    return absl::InvalidArgumentError(absl::StrCat("config field \"", key, "\": \"", path,
                                                   "\" is not a PEM file with a ", marker));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const TlsFiles& files) {
  if (files.cert_file.empty()) {
    if (!files.key_file.empty() || !files.client_ca_file.empty() || files.require_client_cert) {
      return absl::InvalidArgumentError(
          "config field \"tls_cert_file\": required when tls_key_file, tls_client_ca_file or "
          "tls_require_client_cert is set");
    }
    return grpc::InsecureServerCredentials();
  }
  if (files.key_file.empty()) {
    return absl::InvalidArgumentError("config field \"tls_key_file\": required with tls_cert_file");
  }
  if (files.require_client_cert && files.client_ca_file.empty()) {
    return absl::InvalidArgumentError(
        "config field \"tls_client_ca_file\": required with tls_require_client_cert");
  }
  if (absl::Status s = CheckPem("tls_cert_file", files.cert_file, "CERTIFICATE"); !s.ok()) return s;
  if (absl::Status s = CheckPem("tls_key_file", files.key_file, "PRIVATE KEY"); !s.ok()) return s;
  if (!files.client_ca_file.empty()) {
    if (absl::Status s = CheckPem("tls_client_ca_file", files.client_ca_file, "CERTIFICATE");
        !s.ok())
      return s;
  }
  auto provider = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
      files.key_file, files.cert_file, files.client_ca_file,
      static_cast<unsigned int>(files.refresh_seconds));
  grpc::experimental::TlsServerCredentialsOptions options(provider);
  options.watch_identity_key_cert_pairs();
  if (!files.client_ca_file.empty()) {
    options.watch_root_certs();
    options.set_cert_request_type(files.require_client_cert
                                      ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                                      : GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_AND_VERIFY);
  }
  return grpc::experimental::TlsServerCredentials(options);
}

}  // namespace specprune
