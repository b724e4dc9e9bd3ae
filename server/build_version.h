// What was built: the project version (CMake's project VERSION) and the git commit of the source
// tree at configure time (cache variable SPECPRUNE_GIT_COMMIT overrides it, e.g. in a container
// build without .git; "unknown" when neither is known). Reported by specprune_build_info and the
// server's startup log.
#pragma once

namespace specprune {

const char* BuildVersion();
const char* BuildGitCommit();

}  // namespace specprune
