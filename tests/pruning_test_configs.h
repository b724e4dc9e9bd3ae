// Pruning configs shared by the pruner unit tests.
#pragma once

#include <cstdint>

#include "pruning/pruning_config.h"

namespace specprune {

// The layer layout the pruner tests' hand-computed expectations were written for (two local
// layers, as in the paper; prune after 2 and 4), pinned so that changes to DefaultPruningConfig's
// depth scaling do not move them. Needs layers >= 6.
inline PruningConfig TwoLocalLayerConfig(int layers, int64_t tokens) {
  PruningConfig c = DefaultPruningConfig(layers, tokens, 64);
  c.specprune.local_layers = {0, 1};
  c.specprune.prune_layers = {2, 4};
  c.specprune.update_layers = {2, 3, 4};
  c.fastv.layer = 1;
  c.random.layer = 1;
  return c;
}

}  // namespace specprune
