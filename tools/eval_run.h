// A closed-loop evaluation run (specprune_eval, docs/ARCHITECTURE.md "What is measured", issue #6;
// docs/training.md): loads the model directory, runs every (method, suite) cell on the same
// episodes, prints the table and the per-cell diagnostics, writes the JSON and checks the
// --require_* floors. FastV and random run at SpecPrune's measured average retention unless
// o.keep_ratio is set.
#pragma once

#include "tools/eval_options.h"

namespace specprune {

// The process exit status: 0 done; 1 a model, simulator or file error; 2 a bad option value or
// combination; 3 a --require_* floor missed. Messages go to stderr, naming the flag.
int RunEvaluation(const EvalOptions& o);

}  // namespace specprune
