// Fuzz target: server/server_config.h LoadServerOptions, the startup path of an operator's config
// file and flags. Input: the config file's bytes, then optionally a NUL byte and NUL-separated
// "key=text" flag values (--key text). Invariants: no crash, errors carry a message, accepted
// options validate and survive ServerOptionsToJson -> ApplyServerOptionsJson unchanged.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "fuzz/fuzz_util.h"
#include "server/server_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace specprune;
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  const size_t file_end = std::min(input.find('\0'), input.size());
  fuzz::MemFile file(data, file_end);
  ServerCommandLine command_line;
  command_line.config_path = file.path();
  for (size_t pos = file_end + 1; pos < input.size();) {
    const size_t end = std::min(input.find('\0', pos), input.size());
    const std::string_view item = input.substr(pos, end - pos);
    const size_t eq = item.find('=');
    if (eq != std::string_view::npos) {
      const std::string key(item.substr(0, eq));
      command_line.values.push_back({key, std::string(item.substr(eq + 1)), key});
    }
    pos = end + 1;
  }
  absl::StatusOr<ServerOptions> options = LoadServerOptions(command_line);
  if (!options.ok()) {
    fuzz::CheckError(options.status(), "LoadServerOptions");
    return 0;
  }
  fuzz::Check(ValidateServerOptions(*options).ok(), "accepted options do not validate");
  const nlohmann::json out = ServerOptionsToJson(*options);
  ServerOptions again;
  const absl::Status status = ApplyServerOptionsJson(out, again);
  fuzz::Check(status.ok(), "ServerOptionsToJson output rejected", std::string(status.message()));
  if (ServerOptionsToJson(again) != out)
    fuzz::Fail("config round trip changed the options", fuzz::Dump(out));
  return 0;
}
