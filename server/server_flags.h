// The server's command-line flags (Abseil flags, util/command_line.h): one flag per scalar config
// key with the key's name (--max_batch_size 8), --model as an alias of --model_dir, and --config
// FILE. A flag that is not given leaves the value of the config file or the built-in default
// (server/server_config.h), so no default is written here.
//
// Compiled into the server executable (and its config test) only: flags are process-global.
#pragma once

#include "absl/status/statusor.h"
#include "server/server_config.h"

namespace specprune {

// The flags given on the command line (after absl::ParseCommandLine). Error: both --model and
// --model_dir given.
absl::StatusOr<ServerCommandLine> ServerCommandLineFromFlags();

}  // namespace specprune
