// One episode of the tabletop simulator (docs/ARCHITECTURE.md "Simulator and evaluation"): task
// generation, stepping, observations.
//
// Action (7 floats, OpenVLA convention): [dx, dy, dz, droll, dpitch, dyaw, gripper].
//   * dx, dy, dz in [-1, 1] (clipped): fingertip displacement of `max_translation_step` metres
//     per unit (default 3 cm) along world x (right), y (back), z (up).
//   * droll, dpitch: ignored (kept for the 7-dim convention).
//   * dyaw in [-1, 1]: gripper rotation of `max_yaw_step` radians per unit about +z.
//   * gripper: > 0 closes the fingers, <= 0 opens them (each step changes the opening by 25%).
//   Non-finite values are rejected.
// Proprio (8 floats): [x, y, z, yaw, opening, grasped, 0, 0]
//   * x, y, z: fingertip midpoint in metres (table top z = 0; x, y in [-0.5, 0.5]);
//   * yaw: gripper yaw in radians, [-pi/2, pi/2];
//   * opening: finger separation / maximum, in [0, 1] (1 = fully open);
//   * grasped: 1 if an object is held, else 0; the two last entries are always 0 (spare).
// Success: every goal's placement holds (see GoalSatisfied), nothing is held and the gripper is
// at least half open. The episode is done at success or after max_steps steps.
//
// Same (suite, seed, options) => identical instruction, frames and trajectories.
// Episode is a copyable value; const methods may run concurrently, Step may not.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "image/image_codec.h"
#include "sim/render.h"
#include "sim/task.h"
#include "sim/world.h"

namespace specprune {
namespace sim {

inline constexpr int kActionDim = 7;
inline constexpr int kProprioDim = 8;
using Action = std::array<float, kActionDim>;
using Proprio = std::array<float, kProprioDim>;

// Default step limits (the scripted expert needs 55-95 steps per pick-and-place).
inline constexpr int kDefaultMaxSteps = 200;      // spatial, object, goal
inline constexpr int kDefaultMaxStepsLong = 400;  // long

struct SimOptions {
  int image_size = 64;                 // side of both camera images in pixels, [16, 1024]
  int max_steps = 0;                   // step limit; 0 = kDefaultMaxSteps(Long) for the suite
  int num_distractors = -1;            // -1 = suite default; else [0, 4] (see task.h)
  int fixed_tasks = 0;                 // 0 = procedural tasks; N = LIBERO-style: the seed picks
                                       // one of N fixed tasks per suite (task.h), [0, 1000]
  double max_translation_step = 0.03;  // metres per step at |dx|, |dy|, |dz| = 1, (0, 0.2]
  double max_yaw_step = 0.1;           // radians per step at |dyaw| = 1, (0, 1]
  bool antialias = true;               // supersample edge pixels
};

// OK, or InvalidArgument naming the first bad field ("options.image_size", ...).
absl::Status ValidateSimOptions(const SimOptions& options);

struct StepResult {
  bool success = false;  // the task is complete (also ends the episode)
  bool done = false;     // success or step limit reached
  int grasped = -1;      // object index grasped during this step, or -1
  int released = -1;     // object index released during this step, or -1
};

class Episode {
 public:
  // Generates the task for (suite, seed). InvalidArgument for bad options.
  static absl::StatusOr<Episode> Create(Suite suite, uint64_t seed, const SimOptions& options = {});

  Suite suite() const { return suite_; }
  uint64_t seed() const { return seed_; }
  const SimOptions& options() const { return options_; }
  const std::string& instruction() const { return task_.instruction; }

  // Camera images, options().image_size square, RGB HWC.
  RgbImage RenderMain() const;
  RgbImage RenderWrist() const;
  Camera main_camera() const { return MainCamera(options_.image_size); }
  Camera wrist_camera() const { return WristCamera(task_.world.gripper, options_.image_size); }

  Proprio proprio() const;

  // Applies one action. InvalidArgument naming "action[i]" for a non-finite value;
  // FailedPrecondition once the episode is done.
  absl::StatusOr<StepResult> Step(const Action& action);

  bool success() const { return success_; }
  bool done() const { return success_ || steps_ >= max_steps_; }
  int steps() const { return steps_; }
  int max_steps() const { return max_steps_; }
  // Number of goals whose placement currently holds.
  int goals_satisfied() const;

  // Ground truth (for the scripted expert, metrics and tests).
  const World& world() const { return task_.world; }
  const std::vector<Goal>& goals() const { return task_.goals; }

 private:
  Episode() = default;

  Suite suite_ = Suite::kSpatial;
  uint64_t seed_ = 0;
  SimOptions options_;
  Task task_;
  int max_steps_ = 0;
  int steps_ = 0;
  bool success_ = false;
};

}  // namespace sim
}  // namespace specprune
