// Per-robot episode state that SpecPrune carries from one step to the next (docs/ARCHITECTURE.md
// "SpecPrune"). Owned by the server's session; read by the step's pruners and updated after the
// forward pass.
//
// Thread safety: none. The server runs one step of a robot at a time (strict per-robot ordering),
// so a state is only ever touched by the thread running that robot's current step.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <deque>

namespace specprune {

struct EpisodeState {
  // [P] float32: mean of the previous step's text->vision scores at the middle and last layer
  // (0 for tokens pruned before those layers). Undefined until the first step has run.
  torch::Tensor global_prior;
  // Pixel patches of past frames, oldest first, newest last: each [P, patch_dim] float32 in [0,1]
  // (P = cameras x patches, camera-major, same order as vision tokens). Bounded by the caller.
  std::deque<torch::Tensor> frames;
  // Previous step's normalized action chunk [chunk, action_dim]; undefined before the first step.
  torch::Tensor last_actions;
  // Forward passes run in this episode.
  int64_t steps = 0;
  // Consecutive "closed" gripper rows at the end of the chunks so far; tracked only with
  // refresh_after_release on (see SpecPruneConfig::release_min_closed_rows).
  int64_t closed_rows = 0;
  // Set by Finish when its chunk released the gripper and refresh_after_release is on: the next
  // SpecPrune pass skips static pruning to rebuild global_prior from every token.
  bool refresh_next = false;

  void Clear() { *this = EpisodeState(); }
};

}  // namespace specprune
