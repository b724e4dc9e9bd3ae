// Task suites, goals and instructions of the tabletop simulator (docs/ARCHITECTURE.md "Simulator
// and evaluation"), mirroring LIBERO:
//
// * kSpatial: two identical objects (same shape and colour) plus distractors of other shapes and
//   one white plate; the target is named by its position relative to its twin: "pick up the red
//   cube on the left and place it on the plate". left/right = -x/+x, front/back = -y/+y (front =
//   bottom of the main image, nearer the robot). The twins are >= 20 cm apart along that axis.
// * kObject: objects with distinct (colour, shape); at least one distractor shares the target's
//   colour or shape; one white plate: "put the red cylinder on the plate".
// * kGoal: one fixed scene (red cube, yellow cylinder, green cube, purple bowl, blue and orange
//   plates; positions jittered by +-1.5 cm), different goals: "put the green cube on the blue
//   plate", "stack the red cube on the green cube", "put the yellow cylinder in the purple bowl".
// * kLong: two sub-tasks: "put the red cube on the blue plate and then the green cylinder on the
//   yellow plate"; success needs both placements to hold at the same time.
//
// Distractors (curriculum knob): objects not named by the goal. num_distractors < 0 picks the
// suite default at random (spatial 1-2, object 1-3, goal all 2-3 others, long 0-2); otherwise the
// requested count, reduced if the table has no room (at most 6 objects with 1 plate, 5 with 2).
//
// Generation is a pure function of (suite, seed, num_distractors), identical on every platform
// (own integer RNG, no std distributions).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "sim/world.h"

namespace specprune {
namespace sim {

enum class Suite { kSpatial, kObject, kGoal, kLong };
inline constexpr Suite kAllSuites[] = {Suite::kSpatial, Suite::kObject, Suite::kGoal, Suite::kLong};

// "spatial", "object", "goal", "long".
std::string_view SuiteName(Suite suite);
// Accepts the names above, optionally prefixed "libero_" (case-insensitive); otherwise
// InvalidArgument naming "suite".
absl::StatusOr<Suite> ParseSuite(std::string_view name);

struct Goal {
  enum class Kind { kOnPlate, kOnObject };
  Kind kind = Kind::kOnPlate;
  int object = 0;  // index into World::objects of the object to move
  int target = 0;  // index into World::plates (kOnPlate) or World::objects (kOnObject)
};

// Placement tolerance of kOnObject goals: the centre of the moved object must be within this
// distance (m) of the target object's centre.
inline constexpr double kStackTolerance = 0.07;

// True if the goal's placement holds: the object is not carried by the gripper and
// - kOnPlate: it rests directly on the plate surface with its centre inside the plate's disc;
// - kOnObject: it rests on the target object with centres within kStackTolerance.
bool GoalSatisfied(const World& world, const Goal& goal);

// The first goal (in instruction order) whose placement does not hold, or nullptr when all hold.
const Goal* FirstUnsatisfiedGoal(const World& world, const std::vector<Goal>& goals);

struct Task {
  World world;
  std::vector<Goal> goals;  // in instruction order
  std::string instruction;  // lower case, no trailing punctuation
};

// LIBERO's protocol: each suite is a set of 10 fixed tasks whose initial layouts vary. With
// fixed_tasks = N > 0 the seed picks task seed % N of the suite's fixed set (what the task is: its
// objects, distractors, goals and instruction; task i is the same for every N > i) and the layout
// (positions, yaw, gripper start); as everywhere, trailing distractors are dropped when a layout
// has no room for them. With 0 (procedural, the default) every seed draws a new task.
inline constexpr int kMaxFixedTasks = 1000;
// The index in the fixed set that `seed` picks, or -1 when fixed_tasks is 0.
int FixedTaskIndex(uint64_t seed, int fixed_tasks);

// Builds the initial world, goals and instruction. InvalidArgument if num_distractors > 4 or
// fixed_tasks is outside [0, kMaxFixedTasks].
absl::StatusOr<Task> GenerateTask(Suite suite, uint64_t seed, int num_distractors,
                                  int fixed_tasks = 0);

}  // namespace sim
}  // namespace specprune
