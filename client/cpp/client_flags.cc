#include "client/cpp/client_flags.h"

#include <string>

#include "absl/flags/flag.h"

ABSL_FLAG(std::string, token, "", "bearer token (default: env SPECPRUNE_TOKEN); never printed");
ABSL_FLAG(std::string, tls_ca_file, "",
          "PEM CA bundle that verifies the server; turns TLS on (env SPECPRUNE_TLS_CA_FILE)");
ABSL_FLAG(std::string, tls_cert_file, "",
          "PEM client certificate for mTLS (env SPECPRUNE_TLS_CERT_FILE)");
ABSL_FLAG(std::string, tls_key_file, "",
          "PEM private key of --tls_cert_file (env SPECPRUNE_TLS_KEY_FILE)");
ABSL_FLAG(std::string, tls_server_name, "",
          "server name checked against its certificate (env SPECPRUNE_TLS_SERVER_NAME)");

namespace specprune {

void ApplyClientFlags(ClientOptions& options) {
  options.token = absl::GetFlag(FLAGS_token);
  options.tls_root_certs_file = absl::GetFlag(FLAGS_tls_ca_file);
  options.tls_cert_file = absl::GetFlag(FLAGS_tls_cert_file);
  options.tls_key_file = absl::GetFlag(FLAGS_tls_key_file);
  options.tls_server_name = absl::GetFlag(FLAGS_tls_server_name);
  ApplyEnvironment(options);
}

}  // namespace specprune
