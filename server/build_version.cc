#include "server/build_version.h"

#ifndef SPECPRUNE_VERSION
#define SPECPRUNE_VERSION "unknown"
#endif
#ifndef SPECPRUNE_GIT_COMMIT
#define SPECPRUNE_GIT_COMMIT "unknown"
#endif

namespace specprune {

const char* BuildVersion() { return SPECPRUNE_VERSION; }
const char* BuildGitCommit() { return SPECPRUNE_GIT_COMMIT; }

}  // namespace specprune
