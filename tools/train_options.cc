#include "tools/train_options.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "sim/task.h"

namespace specprune {
namespace {

absl::Status Invalid(std::string message) { return absl::InvalidArgumentError(message); }

}  // namespace

std::optional<LabelledStates> ParseDaggerStates(const std::string& v) {
  if (v == "empty") return LabelledStates::kEmptyGripper;
  if (v == "goal") return LabelledStates::kEmptyOrGoalObject;
  if (v == "all") return LabelledStates::kAll;
  return std::nullopt;
}

absl::Status ValidateTrainOptions(const TrainOptions& o) {
  if (!(o.drop_frac >= 0 && o.drop_frac <= 1) ||
      !(o.drop_item_keep >= 0 && o.drop_item_keep <= 1) ||
      !(o.drop_specprune >= 0 && o.drop_specprune <= 1)) {
    return Invalid("--drop_frac, --drop_item_keep and --drop_specprune must be in [0, 1]");
  }
  if (!(o.drop_keep_min > 0 && o.drop_keep_min <= o.drop_keep_max && o.drop_keep_max <= 1)) {
    return Invalid("--drop_keep_min/--drop_keep_max: need 0 < min <= max <= 1");
  }
  if (o.dtype != "bf16" && o.dtype != "fp32") {
    return Invalid("--dtype: use bf16 or fp32");
  }
  if (o.aux_targets != 4 && o.aux_targets != kAuxTargetDim) {
    return Invalid(absl::StrCat("--aux_targets: use 4 or ", kAuxTargetDim));
  }
  if (o.curriculum.easy_mix.size() != 3 ||
      std::any_of(o.curriculum.easy_mix.begin(), o.curriculum.easy_mix.end(),
                  [](double w) { return !(w >= 0); }) ||
      o.curriculum.easy_mix[0] + o.curriculum.easy_mix[1] + o.curriculum.easy_mix[2] <= 0) {
    return Invalid("--easy_mix: three non-negative weights (spatial,object,goal), not all 0");
  }
  if (o.early_frac < 0 || o.early_frac > 1 || o.early_steps < 1 || o.curriculum.long_frac < 0 ||
      o.curriculum.long_frac > 1 ||
      !(o.curriculum.colour_frac >= 0 && o.curriculum.colour_frac <= 1)) {
    return Invalid(
        "--early_frac, --long_frac, --colour_frac must be in [0, 1], --early_steps "
        "positive");
  }
  if (o.curriculum.fixed_tasks < 0 || o.curriculum.fixed_tasks > sim::kMaxFixedTasks) {
    return Invalid(absl::StrCat("--fixed_tasks: must be in [0, ", sim::kMaxFixedTasks, "]"));
  }
  if (o.curriculum.fixed_tasks > 0 && o.dagger_every > 0) {
    return Invalid("--fixed_tasks: not supported with DAgger (--dagger_every)");
  }
  if (o.dagger_every < 0 || o.dagger_episodes < 1 || o.dagger_frac < 0 || o.dagger_frac > 1 ||
      o.dagger_pool < 1) {
    return Invalid(
        "--dagger_every must be >= 0, --dagger_episodes and --dagger_pool positive, "
        "--dagger_frac in [0, 1]");
  }
  if (!ParseDaggerStates(o.dagger_states).has_value()) {
    return Invalid("--dagger_states: use empty, goal or all");
  }
  if (o.batch < 1 || o.steps < 1 || o.threads < 1 || o.data_threads < 1) {
    return Invalid("--batch, --steps, --threads, --data_threads must be positive");
  }
  return absl::OkStatus();
}

double LearningRate(const TrainOptions& o, int64_t step) {
  if (step < o.head_warmup) return o.head_lr;
  step -= o.head_warmup;
  if (step < o.warmup) return o.lr * static_cast<double>(step + 1) / static_cast<double>(o.warmup);
  const double p = std::min(
      1.0, static_cast<double>(step - o.warmup) /
               static_cast<double>(std::max<int64_t>(1, o.steps - o.head_warmup - o.warmup)));
  const double cosine = 0.5 * (1 + std::cos(M_PI * p));
  return o.lr * (o.min_lr_ratio + (1 - o.min_lr_ratio) * cosine);
}

}  // namespace specprune
