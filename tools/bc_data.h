// The behaviour-cloning library of specprune_train and specprune_eval (docs/ARCHITECTURE.md
// "Simulator and evaluation", issue #6), one include for its parts:
//   demonstrations.h         episode specs, the curriculum, expert demos, raw samples, statistics
//   grounding_targets.h      where the task's items appear in the images (patch labels)
//   failure_analysis.h       grasp assessment, colour-decided scenes, wrong destinations
//   bc_batch.h               raw samples -> model-ready batches
//   training_forward.h       the differentiable twin of VlaModel::Forward, with taps and dropping
//   specprune_static_keep.h  SpecPrune's static kept set on a training sample
//   policy_rollout.h         closed-loop rollouts driven as the server drives a robot
#pragma once

#include "tools/bc_batch.h"
#include "tools/demonstrations.h"
#include "tools/failure_analysis.h"
#include "tools/grounding_targets.h"
#include "tools/policy_rollout.h"
#include "tools/specprune_static_keep.h"
#include "tools/training_forward.h"
