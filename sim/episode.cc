#include "sim/episode.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace specprune {
namespace sim {
namespace {

double Clip(float v) { return std::min(1.0, std::max(-1.0, static_cast<double>(v))); }

}  // namespace

absl::Status ValidateSimOptions(const SimOptions& options) {
  if (options.image_size < 16 || options.image_size > 1024) {
    return absl::InvalidArgumentError(
        absl::StrCat("options.image_size: must be in [16, 1024], got ", options.image_size));
  }
  if (options.max_steps < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("options.max_steps: must be >= 0, got ", options.max_steps));
  }
  if (options.num_distractors < -1 || options.num_distractors > 4) {
    return absl::InvalidArgumentError(
        absl::StrCat("options.num_distractors: must be in [-1, 4], got ", options.num_distractors));
  }
  if (options.fixed_tasks < 0 || options.fixed_tasks > kMaxFixedTasks) {
    return absl::InvalidArgumentError(absl::StrCat("options.fixed_tasks: must be in [0, ",
                                                   kMaxFixedTasks, "], got ", options.fixed_tasks));
  }
  if (!(options.max_translation_step > 0 && options.max_translation_step <= 0.2)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "options.max_translation_step: must be in (0, 0.2], got ", options.max_translation_step));
  }
  if (!(options.max_yaw_step > 0 && options.max_yaw_step <= 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("options.max_yaw_step: must be in (0, 1], got ", options.max_yaw_step));
  }
  return absl::OkStatus();
}

absl::StatusOr<Episode> Episode::Create(Suite suite, uint64_t seed, const SimOptions& options) {
  if (absl::Status s = ValidateSimOptions(options); !s.ok()) return s;
  absl::StatusOr<Task> task =
      GenerateTask(suite, seed, options.num_distractors, options.fixed_tasks);
  if (!task.ok()) return task.status();
  Episode e;
  e.suite_ = suite;
  e.seed_ = seed;
  e.options_ = options;
  e.task_ = *std::move(task);
  e.max_steps_ = options.max_steps > 0
                     ? options.max_steps
                     : (suite == Suite::kLong ? kDefaultMaxStepsLong : kDefaultMaxSteps);
  return e;
}

RgbImage Episode::RenderMain() const {
  return Render(task_.world, main_camera(), {options_.antialias});
}

RgbImage Episode::RenderWrist() const {
  return Render(task_.world, wrist_camera(), {options_.antialias});
}

Proprio Episode::proprio() const {
  const Gripper& g = task_.world.gripper;
  return {static_cast<float>(g.tip.x),
          static_cast<float>(g.tip.y),
          static_cast<float>(g.tip.z),
          static_cast<float>(g.yaw),
          static_cast<float>(g.opening),
          g.held >= 0 ? 1.0f : 0.0f,
          0.0f,
          0.0f};
}

int Episode::goals_satisfied() const {
  int n = 0;
  for (const Goal& goal : task_.goals) n += GoalSatisfied(task_.world, goal) ? 1 : 0;
  return n;
}

absl::StatusOr<StepResult> Episode::Step(const Action& action) {
  for (int i = 0; i < kActionDim; ++i) {
    if (!std::isfinite(action[i])) {
      return absl::InvalidArgumentError(absl::StrCat("action[", i, "] is not finite"));
    }
  }
  if (done()) return absl::FailedPreconditionError("episode is done");
  const double step = options_.max_translation_step;
  const StepEvents events =
      task_.world.Step({Clip(action[0]) * step, Clip(action[1]) * step, Clip(action[2]) * step},
                       Clip(action[5]) * options_.max_yaw_step, action[6] > 0.0f);
  ++steps_;
  const Gripper& g = task_.world.gripper;
  success_ =
      g.held < 0 && g.opening >= 0.5 && goals_satisfied() == static_cast<int>(task_.goals.size());
  StepResult result;
  result.success = success_;
  result.done = done();
  result.grasped = events.grasped;
  result.released = events.released;
  return result;
}

}  // namespace sim
}  // namespace specprune
