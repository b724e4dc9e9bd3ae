// Transport security of the gRPC port (issue #25; docs/SECURITY.md): TLS with a certificate and
// key, optionally mTLS (client certificates verified against a CA bundle, and required).
// Certificates are watched on disk (gRPC's FileWatcherCertificateProvider) and reloaded every
// `refresh_seconds`, so they rotate without a restart; replace the files atomically (write new
// files, then rename over the old ones).
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "grpcpp/security/server_credentials.h"

namespace specprune {

struct TlsFiles {
  std::string cert_file;             // PEM certificate chain; "" = plaintext (no TLS)
  std::string key_file;              // PEM private key of cert_file
  std::string client_ca_file;        // PEM CA bundle for client certificates; "" = none requested
  bool require_client_cert = false;  // mTLS: reject clients without a verified certificate
  int refresh_seconds = 60;          // how often the files are re-read
};

// Insecure credentials when cert_file is empty; else TLS credentials over the watched files.
// InvalidArgument naming the config key when the files are inconsistent (a key without a
// certificate, require_client_cert without a CA) or unreadable / not PEM at startup.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const TlsFiles& files);

}  // namespace specprune
