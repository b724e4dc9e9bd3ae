#include "tools/demonstrations.h"

#include <algorithm>
#include <cmath>

#include "tools/failure_analysis.h"

namespace specprune {
namespace {

// Expert replay with optional noisy execution; the noise stream is a pure
// function of the spec.
class Replayer {
 public:
  static absl::StatusOr<Replayer> Create(const EpisodeSpec& spec, int image_size) {
    auto ep = sim::Episode::Create(spec.suite, spec.seed, SpecSimOptions(spec, image_size));
    if (!ep.ok()) return ep.status();
    return Replayer(spec, *std::move(ep));
  }

  // Executes one step; returns the clean expert action (the label at the
  // pre-step state).
  absl::StatusOr<sim::Action> Step() {
    sim::Action label = expert_.Act(episode_);
    sim::Action exec = label;
    const auto phase = expert_.phase();
    const bool transit = phase == sim::ScriptedExpert::Phase::kLift ||
                         phase == sim::ScriptedExpert::Phase::kTransit ||
                         phase == sim::ScriptedExpert::Phase::kDescend;
    if (noise_std_ > 0 && transit) {
      for (int i = 0; i < 3; ++i)
        exec[i] = std::clamp(exec[i] + noise_std_ * normal_(rng_), -1.0f, 1.0f);
    }
    auto r = episode_.Step(exec);
    if (!r.ok()) return r.status();
    return label;
  }

  sim::Episode& episode() { return episode_; }
  sim::ScriptedExpert& expert() { return expert_; }

 private:
  Replayer(const EpisodeSpec& spec, sim::Episode ep)
      : episode_(std::move(ep)),
        expert_(episode_),
        rng_(spec.seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(spec.suite) * 131 +
             static_cast<uint64_t>(spec.num_distractors + 7)),
        noise_std_(spec.noise_std) {}

  sim::Episode episode_;
  sim::ScriptedExpert expert_;
  std::mt19937_64 rng_;
  std::normal_distribution<float> normal_{0.0f, 1.0f};
  float noise_std_;
};

float Quantile(std::vector<float> v, double q) {
  if (v.empty()) return 0.0f;
  std::sort(v.begin(), v.end());
  const double pos = q * static_cast<double>(v.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(pos));
  const size_t hi = std::min(lo + 1, v.size() - 1);
  const double f = pos - static_cast<double>(lo);
  return static_cast<float>((1 - f) * v[lo] + f * v[hi]);
}

NormStats StatsOf(const std::vector<std::vector<float>>& columns) {
  NormStats s;
  for (const auto& col : columns) {
    s.q01.push_back(Quantile(col, 0.01));
    s.q99.push_back(Quantile(col, 0.99));
    double sum = 0, sq = 0;
    float mn = col.empty() ? 0 : col[0], mx = mn;
    for (float x : col) {
      sum += x;
      sq += static_cast<double>(x) * x;
      mn = std::min(mn, x);
      mx = std::max(mx, x);
    }
    const double n = std::max<size_t>(1, col.size());
    const double mean = sum / n;
    s.mean.push_back(static_cast<float>(mean));
    s.std.push_back(static_cast<float>(std::sqrt(std::max(0.0, sq / n - mean * mean))));
    s.min.push_back(mn);
    s.max.push_back(mx);
    s.mask.push_back(true);
  }
  return s;
}

}  // namespace

sim::SimOptions SpecSimOptions(const EpisodeSpec& spec, int image_size) {
  sim::SimOptions o;
  o.image_size = image_size;
  o.num_distractors = spec.num_distractors;
  o.fixed_tasks = spec.fixed_tasks;
  return o;
}

absl::StatusOr<DemoSummary> RunDemo(const EpisodeSpec& spec, int image_size) {
  auto rep = Replayer::Create(spec, image_size);
  if (!rep.ok()) return rep.status();
  DemoSummary d;
  const sim::Episode& ep = rep->episode();
  const auto current_goal = [&ep]() -> int {  // index of the first unsatisfied goal, -1 if none
    const sim::Goal* g = sim::FirstUnsatisfiedGoal(ep.world(), ep.goals());
    return g == nullptr ? -1 : static_cast<int>(g - ep.goals().data());
  };
  int reached = current_goal();
  if (reached >= 0) d.goal_starts.push_back(0);
  while (!ep.done()) {
    auto a = rep->Step();
    if (!a.ok()) return a.status();
    if (const int g = current_goal(); g > reached) {
      d.goal_starts.push_back(ep.steps());
      reached = g;
    }
  }
  d.success = rep->episode().success();
  d.length = rep->episode().steps();
  return d;
}

namespace {

// The sample at the episode's current state: observations, grounding targets, and the next `chunk`
// actions of `expert` branched off this state.
absl::StatusOr<RawSample> LabelState(const sim::Episode& ep, sim::ScriptedExpert expert, int chunk,
                                     int image_size) {
  RawSample s;
  s.instruction = ep.instruction();
  s.main = ep.RenderMain();
  s.wrist = ep.RenderWrist();
  s.proprio = ep.proprio();
  double dx, dy;
  if (const sim::Goal* goal = CurrentGoal(ep, &dx, &dy); goal != nullptr) {
    const sim::World& w = ep.world();
    const sim::Object& o = w.objects[goal->object];
    const double k = 1.0 / kAuxPositionScale;
    const sim::Vec3& tip = w.gripper.tip;
    const double v[kAuxTargetDim] = {o.x,         o.y,         dx,         dy,
                                     o.x - tip.x, o.y - tip.y, dx - tip.x, dy - tip.y};
    for (int i = 0; i < kAuxTargetDim; ++i) s.aux[i] = static_cast<float>(v[i] * k);
    s.discs = TargetDiscs(ep);
    s.named_discs = NamedDiscs(ep);
  }
  s.items = ItemDiscs(ep);
  sim::Episode branch = ep;
  for (int k = 0; k < chunk; ++k) {
    sim::Action a = expert.Act(branch);
    s.actions.push_back(a);
    if (!branch.done()) {
      auto r = branch.Step(a);
      if (!r.ok()) return r.status();
    }
  }
  return s;
}

}  // namespace

absl::StatusOr<RawSample> MakeRawSample(const EpisodeSpec& spec, int t, int chunk, int image_size) {
  if (chunk <= 0) return absl::InvalidArgumentError("chunk: must be positive");
  auto rep = Replayer::Create(spec, image_size);
  if (!rep.ok()) return rep.status();
  for (int i = 0; i < t && !rep->episode().done(); ++i) {
    auto a = rep->Step();
    if (!a.ok()) return a.status();
  }
  return LabelState(rep->episode(), rep->expert(), chunk, image_size);
}

absl::StatusOr<std::vector<int>> TraceStepsToLabel(const PolicyTrace& trace, int image_size,
                                                   LabelledStates states) {
  std::vector<int> steps;
  if (states == LabelledStates::kAll) {
    for (int t = 0; t < static_cast<int>(trace.executed.size()); ++t) steps.push_back(t);
    return steps;
  }
  auto ep = sim::Episode::Create(trace.spec.suite, trace.spec.seed,
                                 SpecSimOptions(trace.spec, image_size));
  if (!ep.ok()) return ep.status();
  for (int t = 0; t < static_cast<int>(trace.executed.size()) && !ep->done(); ++t) {
    const int held = ep->world().gripper.held;
    const bool goal_object = std::any_of(ep->goals().begin(), ep->goals().end(),
                                         [&](const sim::Goal& g) { return g.object == held; });
    if (held < 0 || (states == LabelledStates::kEmptyOrGoalObject && goal_object))
      steps.push_back(t);
    auto r = ep->Step(trace.executed[t]);
    if (!r.ok()) return r.status();
  }
  return steps;
}

absl::StatusOr<RawSample> MakeTraceSample(const PolicyTrace& trace, int t, int chunk,
                                          int image_size) {
  if (chunk <= 0) return absl::InvalidArgumentError("chunk: must be positive");
  auto ep = sim::Episode::Create(trace.spec.suite, trace.spec.seed,
                                 SpecSimOptions(trace.spec, image_size));
  if (!ep.ok()) return ep.status();
  t = std::clamp(t, 0, static_cast<int>(trace.executed.size()));
  for (int i = 0; i < t && !ep->done(); ++i) {
    auto r = ep->Step(trace.executed[i]);
    if (!r.ok()) return r.status();
  }
  sim::ScriptedExpert expert(*ep);
  expert.TakeOver(*ep, t > 0 && trace.executed[t - 1][6] > 0);
  return LabelState(*ep, expert, chunk, image_size);
}

absl::StatusOr<DatasetStats> ComputeStatistics(const std::vector<EpisodeSpec>& specs,
                                               int image_size, const std::string& key) {
  std::vector<std::vector<float>> act(sim::kActionDim), prop(sim::kProprioDim);
  int64_t transitions = 0, trajectories = 0;
  for (const auto& spec : specs) {
    auto rep = Replayer::Create(spec, image_size);
    if (!rep.ok()) return rep.status();
    std::vector<sim::Action> actions;
    std::vector<sim::Proprio> proprios;
    while (!rep->episode().done()) {
      proprios.push_back(rep->episode().proprio());
      auto a = rep->Step();
      if (!a.ok()) return a.status();
      actions.push_back(*a);
    }
    if (!rep->episode().success()) continue;
    ++trajectories;
    for (size_t i = 0; i < actions.size(); ++i) {
      ++transitions;
      for (int d = 0; d < sim::kActionDim; ++d) act[d].push_back(actions[i][d]);
      for (int d = 0; d < sim::kProprioDim; ++d) prop[d].push_back(proprios[i][d]);
    }
  }
  if (trajectories == 0)
    return absl::FailedPreconditionError("statistics: no successful demonstration");
  DatasetStats stats;
  stats.key = key;
  stats.action = StatsOf(act);
  stats.action.mask.back() = false;  // gripper passes through (OpenVLA)
  stats.proprio = StatsOf(prop);
  stats.num_transitions = transitions;
  stats.num_trajectories = trajectories;
  return stats;
}

EpisodeSpec DrawSpec(const Curriculum& o, int64_t step, std::mt19937_64& rng) {
  using sim::Suite;
  EpisodeSpec s;
  s.fixed_tasks = o.fixed_tasks;
  std::uniform_int_distribution<int> seed_d(0, o.train_seeds - 1);
  std::uniform_real_distribution<double> u(0, 1);
  s.seed = static_cast<uint64_t>(seed_d(rng));
  s.noise_std = u(rng) < o.noise_frac ? static_cast<float>(o.noise_std) : 0.0f;
  const Suite easy[] = {Suite::kSpatial, Suite::kObject, Suite::kGoal};
  if (step < o.stage1) {
    s.suite = easy[rng() % 3];
    s.num_distractors = 0;
  } else if (step < o.stage2) {
    s.suite = easy[rng() % 3];
    s.num_distractors = u(rng) < 0.25 ? 0 : -1;
  } else {
    if (u(rng) < o.long_frac) {
      s.suite = Suite::kLong;
    } else if (o.easy_mix[0] == o.easy_mix[1] && o.easy_mix[1] == o.easy_mix[2]) {
      s.suite = easy[rng() % 3];  // the draw of earlier runs (reproducible commands)
    } else {
      std::discrete_distribution<int> mix(o.easy_mix.begin(), o.easy_mix.end());
      s.suite = easy[mix(rng)];
    }
    s.num_distractors = u(rng) < 0.1 ? 0 : -1;
    if ((s.suite == Suite::kObject || s.suite == Suite::kLong) && o.colour_frac > 0 &&
        u(rng) < o.colour_frac) {
      s.num_distractors = -1;  // the look-alike is a distractor
      for (int tries = 0; tries < 64; ++tries) {
        auto task = sim::GenerateTask(s.suite, s.seed, s.num_distractors, s.fixed_tasks);
        if (task.ok() && ColourDecides(task->world, task->goals)) break;
        s.seed = static_cast<uint64_t>(seed_d(rng));
      }
    }
  }
  return s;
}

}  // namespace specprune
