// The command line of every executable: Abseil flags (ABSL_FLAG in the executable's own sources;
// names in snake_case, the same spelling as the config-file keys and in every tool).
//
// ParseCommandLineOrExit() sets the usage text, parses argv and returns the positional arguments
// (argv[0] excluded). Behaviour a user sees:
//   --help, -h      the usage text and every flag of this repository (name, help, non-empty
//   default) on
//                   stdout; exit 0. Abseil's own --helpfull lists Abseil's flags too.
//   bad input       Abseil's "ERROR: Unknown command line flag 'x'" / "Illegal value ..." on
//                   stderr; exit 1.
//   bool flags      --name, --noname, --name=true|false|1|0 (never "--name 0": the 0 would be a
//                   positional argument).
// Call it once, first thing in main(); not thread-safe (it writes the global flag values).
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace specprune {

std::vector<std::string> ParseCommandLineOrExit(int argc, char** argv, std::string_view usage);

// ParseCommandLineOrExit for an executable that takes no positional argument: one given is a usage
// error: "<program>: unexpected argument 'x' (bool flags take --name=0 or --noname, not --name 0;
// --help lists the flags)" on stderr, exit 2.
void ParseFlagsOnlyOrExit(int argc, char** argv, std::string_view usage);

// The --help text: `usage`, then the repository's flags sorted by name. Exposed for tests.
std::string CommandLineHelp(std::string_view usage);

}  // namespace specprune
