// Failure analysis of closed-loop episodes: what a grasp was (the goal's object or a
// look-alike), which scenes only the colour word decides, objects on the wrong plate. Used by the
// rollouts (EpisodeOutcome), the curriculum (Curriculum::colour_frac) and specprune_eval.
//
// Thread safety: free functions, reentrant.
#pragma once

#include <string>
#include <vector>

#include "sim/episode.h"

namespace specprune {

// Failure analysis of a grasp of `object` in a world whose goals are `goals`, from the world as it
// was before the grasping step: `goal_object` when some goal unsatisfied then moves `object`
// (`long` may be solved in either order); otherwise, whether `object` has the colour / the shape
// of the current goal's object (the first unsatisfied goal; both false when none is).
struct GraspAssessment {
  bool goal_object = false;
  bool same_color = false;
  bool same_shape = false;
  // "<wanted> -> <grasped>" by colour and shape ("red cube -> orange cube"): the current goal's
  // object and the grasped one. Empty when goal_object or no goal is unsatisfied.
  std::string confusion;
};
GraspAssessment AssessGrasp(const sim::World& before, const std::vector<sim::Goal>& goals,
                            int object);

// Indices of the objects with `object`'s shape in another colour: what only the colour word tells
// apart from it.
std::vector<int> ColourLookAlikes(const sim::World& world, int object);

// True if naming a goal's object needs its colour word: some goal's object has ColourLookAlikes
// (`object`'s shape look-alike; in `long` also the other goal's object).
bool ColourDecides(const sim::World& world, const std::vector<sim::Goal>& goals);

// True if some goal's object rests on a plate other than that goal's destination (GoalSatisfied of
// the same object on the other plate).
bool OnWrongDestination(const sim::World& world, const std::vector<sim::Goal>& goals);

}  // namespace specprune
