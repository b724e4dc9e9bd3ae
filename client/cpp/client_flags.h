// The connection flags every client executable shares (specprune_cli, specprune_loadgen):
//   --token            bearer token (or env SPECPRUNE_TOKEN); never printed
//   --tls_ca_file      PEM CA bundle verifying the server; turns TLS on (SPECPRUNE_TLS_CA_FILE)
//   --tls_cert_file    client certificate for mTLS (SPECPRUNE_TLS_CERT_FILE)
//   --tls_key_file     its private key (SPECPRUNE_TLS_KEY_FILE)
//   --tls_server_name  name checked against the server certificate (SPECPRUNE_TLS_SERVER_NAME)
// Flags win over the environment. Compiled into each executable (Abseil flags are
// process-global), not into the SDK library.
#pragma once

#include "client/cpp/client.h"

namespace specprune {

// Sets the TLS and token fields of `options` from the flags above, then from the environment.
void ApplyClientFlags(ClientOptions& options);

}  // namespace specprune
