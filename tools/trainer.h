// A specprune_train run (issue #6; docs/training.md): behaviour cloning of the policy on the
// simulator's scripted expert with the grounding losses, DAgger and vision-token dropping of
// TrainOptions, held-out and closed-loop checks, and checkpoints in o.out that the server loads.
// Rerunning the same options resumes from the checkpoint in o.out.
#pragma once

#include "tools/train_options.h"

namespace specprune {

// Runs the training (or the one-shot --benchmark / --diagnose) with validated options (see
// ValidateTrainOptions). The process exit status: 0 done; 1 a model, data or file error; 2 an
// option the model rejects. Messages go to stderr, naming the flag.
int RunTraining(const TrainOptions& o);

}  // namespace specprune
