// Scripted expert for the tabletop simulator (docs/ARCHITECTURE.md "Simulator and evaluation"): a
// saturated proportional controller over a pick-and-place plan, used to generate behaviour-cloning
// data.
//
// For the first goal whose placement does not yet hold it
//   1. (empty) lifts to a safe height, moves above the object (fast: up to 1.0 x max step),
//   2. descends: fast while high, then slowly (<= 0.25 x max step) from 8 cm above the object's
//      top down to the grasp height (6 cm below the top), 3. closes until the object is held,
//   4. lifts (<= 0.6 x max step) to a carry height clearing the other objects, moves above the
//      target (fast), 5. descends (slowly in the last 8 cm) until the object's bottom is 1.5 cm
//      above the target surface, 6. opens.
// Every motion command is action = clip(k * (target - position)) with k = 0.5 per step, scaled so
// the largest component is within the phase's cap: fast in transit, slow and downward near
// contact (the profile that SpecPrune's velocity-aware controller keys on). The plan is chosen
// from the current world state at every step, so the expert also recovers from states it did not
// produce: off by more than 1 cm (grasp) / 1.5 cm (place) above the object or destination, it
// re-aligns at the current height when off by at most 4 cm, and lifts back to the transit or carry
// height first when off by more. Rotation commands are zero except to steer the yaw back to 0.
// Holding an object it did not choose: a later goal's object (sub-tasks taken out of order; success
// does not depend on the order) is carried to that goal's destination first; anything else is
// let go at once.
//
// Deterministic; not thread-safe (use one expert per episode).
#pragma once

#include <string_view>

#include "sim/episode.h"

namespace specprune {
namespace sim {

class ScriptedExpert {
 public:
  enum class Phase { kLift, kTransit, kDescend, kApproach, kClose, kPlace, kRelease, kDone };

  explicit ScriptedExpert(const Episode& episode) {}

  // The expert's action for the episode's current state.
  Action Act(const Episode& episode);

  // Takes over an episode that someone else (a policy) has been driving, for DAgger labels.
  // `last_gripper_closed`: whether the last executed action closed the fingers. At the grasp pose
  // (no object held, the fingers partly closed, the fingertips within grasp reach of the current
  // goal's object) the expert then goes on closing, as it would after its own close; anywhere else
  // it starts from its fresh state (open fully first, then close).
  void TakeOver(const Episode& episode, bool last_gripper_closed);

  // Phase of the last Act() (for logging / data labels).
  Phase phase() const { return phase_; }
  static std::string_view PhaseName(Phase phase);

 private:
  Phase phase_ = Phase::kLift;
  bool closing_ = false;  // closing at the grasp pose
};

}  // namespace sim
}  // namespace specprune
