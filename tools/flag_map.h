// Command-line flags of the tools as a name -> value map: `--name value` or `--name=value`.
#pragma once

#include <cstdio>
#include <map>
#include <optional>
#include <string>
#include <string_view>

namespace specprune {

// True if any argument is --help or -h; the tool then prints its usage to stdout and exits 0.
inline bool WantsHelp(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    if (a == "--help" || a == "-h") return true;
  }
  return false;
}

// Returns nullopt (after printing why) on a positional argument or a flag without a value.
inline std::optional<std::map<std::string, std::string>> ParseFlagMap(int argc, char** argv) {
  std::map<std::string, std::string> kv;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--", 0) != 0) {
      std::fprintf(stderr, "unexpected argument %s\n", a.c_str());
      return std::nullopt;
    }
    a = a.substr(2);
    const auto eq = a.find('=');
    if (eq != std::string::npos) {
      kv[a.substr(0, eq)] = a.substr(eq + 1);
    } else if (i + 1 < argc) {
      kv[a] = argv[++i];
    } else {
      std::fprintf(stderr, "--%s needs a value\n", a.c_str());
      return std::nullopt;
    }
  }
  return kv;
}

}  // namespace specprune
