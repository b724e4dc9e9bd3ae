#include "util/command_line.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "absl/flags/commandlineflag.h"
#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace specprune {
namespace {

// Flags that Abseil itself defines live in its own sources; everything else is ours.
bool IsOurFlag(const absl::CommandLineFlag& flag) {
  return !absl::StrContains(flag.Filename(), "absl/") && !flag.IsRetired();
}

bool WantsHelp(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg == "--") break;
    if (arg == "--help" || arg == "-h" || arg == "-help") return true;
  }
  return false;
}

}  // namespace

std::string CommandLineHelp(std::string_view usage) {
  std::vector<const absl::CommandLineFlag*> flags;
  for (const auto& [name, flag] : absl::GetAllFlags()) {
    if (IsOurFlag(*flag)) flags.push_back(flag);
  }
  std::sort(flags.begin(), flags.end(),
            [](const auto* a, const auto* b) { return a->Name() < b->Name(); });
  std::string out(usage);
  if (!out.empty() && out.back() != '\n') out += '\n';
  out += "\nFlags (--name=VALUE or --name VALUE; bools also --name / --noname):\n";
  for (const absl::CommandLineFlag* flag : flags) {
    const std::string def = flag->DefaultValue();
    absl::StrAppend(&out, "  --", flag->Name(), "  ", flag->Help());
    // An empty default (unset optional, empty string) is left out.
    if (!def.empty()) absl::StrAppend(&out, " (default: ", def, ")");
    out += '\n';
  }
  return out;
}

std::vector<std::string> ParseCommandLineOrExit(int argc, char** argv, std::string_view usage) {
  absl::SetProgramUsageMessage(absl::string_view(usage.data(), usage.size()));
  if (WantsHelp(argc, argv)) {
    std::fputs(CommandLineHelp(usage).c_str(), stdout);
    std::exit(0);
  }
  const std::vector<char*> rest = absl::ParseCommandLine(argc, argv);
  return std::vector<std::string>(rest.begin() + 1, rest.end());
}

void ParseFlagsOnlyOrExit(int argc, char** argv, std::string_view usage) {
  const std::vector<std::string> positional = ParseCommandLineOrExit(argc, argv, usage);
  if (positional.empty()) return;
  const std::string program = argc > 0 ? std::filesystem::path(argv[0]).filename().string() : "";
  std::fprintf(stderr,
               "%s: unexpected argument '%s' (bool flags take --name=0 or --noname, not --name 0; "
               "--help lists the flags)\n",
               program.c_str(), positional.front().c_str());
  std::exit(2);
}

}  // namespace specprune
