#include "tools/bc_data.h"

#include <ATen/autocast_mode.h>
#include <torch/version.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <limits>
#include <numeric>
#include <optional>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "model/sequence_layout.h"
#include "model/tokenizer.h"
#include "pruning/policies.h"
#include "sim/render.h"

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

bool CpuAutocastEnabled() {
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
  return at::autocast::is_autocast_enabled(at::kCPU);
#else
  return at::autocast::is_cpu_enabled();
#endif
}

void SetCpuAutocast(bool enabled) {
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
  at::autocast::set_autocast_enabled(at::kCPU, enabled);
  at::autocast::set_autocast_dtype(at::kCPU, at::kBFloat16);
#else
  at::autocast::set_cpu_enabled(enabled);
  at::autocast::set_autocast_cpu_dtype(at::kBFloat16);
#endif
}

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

// The current goal (the first unsatisfied one; the last once all hold) and its destination's
// centre in xy. Null when the task has no goals.
const sim::Goal* CurrentGoal(const sim::Episode& ep, double* dest_x, double* dest_y) {
  if (ep.goals().empty()) return nullptr;
  const sim::World& w = ep.world();
  const sim::Goal* goal = sim::FirstUnsatisfiedGoal(w, ep.goals());
  if (goal == nullptr) goal = &ep.goals().back();
  if (goal->kind == sim::Goal::Kind::kOnPlate) {
    *dest_x = w.plates[goal->target].x, *dest_y = w.plates[goal->target].y;
  } else {
    *dest_x = w.objects[goal->target].x, *dest_y = w.objects[goal->target].y;
  }
  return goal;
}

}  // namespace

namespace {

// The centre of an object's top face and a point on its rim.
std::pair<sim::Vec3, sim::Vec3> TopFace(const sim::Object& o) {
  const double top = o.z + sim::ShapeHeight(o.shape);
  return {{o.x, o.y, top}, {o.x + o.half_width(), o.y, top}};
}

// Where `goal`'s object and destination appear in both cameras (TargetDiscs' layout).
std::array<ImageDisc, 2 * kPatchTargetItems> GoalDiscs(const sim::Episode& ep,
                                                       const sim::Goal& goal) {
  std::array<ImageDisc, 2 * kPatchTargetItems> discs{};
  const sim::World& w = ep.world();
  const int image_size = ep.options().image_size;
  const sim::Camera cams[2] = {sim::MainCamera(image_size),
                               sim::WristCamera(w.gripper, image_size)};
  const auto [obj_centre, obj_edge] = TopFace(w.objects[goal.object]);
  sim::Vec3 dst_centre, dst_edge;
  if (goal.kind == sim::Goal::Kind::kOnPlate) {
    const sim::Plate& plate = w.plates[goal.target];
    dst_centre = {plate.x, plate.y, sim::kPlateHeight};
    dst_edge = {plate.x + sim::kPlateRadius, plate.y, sim::kPlateHeight};
  } else {
    const sim::Object& base = w.objects[goal.target];
    const double base_top = base.z + sim::ShapeHeight(base.shape);
    dst_centre = {base.x, base.y, base_top};
    dst_edge = {base.x + base.half_width(), base.y, base_top};
  }
  const std::pair<sim::Vec3, sim::Vec3> items[kPatchTargetItems] = {{obj_centre, obj_edge},
                                                                    {dst_centre, dst_edge}};
  for (int c = 0; c < 2; ++c) {
    for (int item = 0; item < kPatchTargetItems; ++item) {
      double u, v, ue, ve;
      ImageDisc& d = discs[c * kPatchTargetItems + item];
      if (sim::Project(cams[c], items[item].first, &u, &v) &&
          sim::Project(cams[c], items[item].second, &ue, &ve)) {
        d = {static_cast<float>(u), static_cast<float>(v),
             static_cast<float>(std::hypot(ue - u, ve - v))};
      }
    }
  }
  return discs;
}

}  // namespace

std::array<ImageDisc, 2 * kPatchTargetItems> TargetDiscs(const sim::Episode& ep) {
  double dx, dy;
  const sim::Goal* goal = CurrentGoal(ep, &dx, &dy);
  if (goal == nullptr) return {};
  return GoalDiscs(ep, *goal);
}

std::vector<std::array<ImageDisc, 2 * kPatchTargetItems>> NamedDiscs(const sim::Episode& ep) {
  std::vector<std::array<ImageDisc, 2 * kPatchTargetItems>> out;
  for (const sim::Goal& goal : ep.goals()) out.push_back(GoalDiscs(ep, goal));
  return out;
}

std::array<ImageDisc, 2> ObjectDiscs(const sim::Episode& ep, int object) {
  std::array<ImageDisc, 2> discs{};
  const sim::World& w = ep.world();
  if (object < 0 || object >= static_cast<int>(w.objects.size())) return discs;
  const int image_size = ep.options().image_size;
  const sim::Camera cams[2] = {sim::MainCamera(image_size),
                               sim::WristCamera(w.gripper, image_size)};
  const auto [centre, edge] = TopFace(w.objects[object]);
  for (int c = 0; c < 2; ++c) {
    double u, v, ue, ve;
    if (sim::Project(cams[c], centre, &u, &v) && sim::Project(cams[c], edge, &ue, &ve))
      discs[c] = {static_cast<float>(u), static_cast<float>(v),
                  static_cast<float>(std::hypot(ue - u, ve - v))};
  }
  return discs;
}

std::array<std::vector<ItemDisc>, 2> ItemDiscs(const sim::Episode& ep) {
  std::array<std::vector<ItemDisc>, 2> out;
  const sim::World& w = ep.world();
  const int image_size = ep.options().image_size;
  const sim::Camera cams[2] = {sim::MainCamera(image_size),
                               sim::WristCamera(w.gripper, image_size)};
  const auto add = [&](const sim::Vec3& centre, double radius, int shape, int color) {
    for (int c = 0; c < 2; ++c) {
      double u, v, ue, ve;
      if (sim::Project(cams[c], centre, &u, &v) &&
          sim::Project(cams[c], {centre.x + radius, centre.y, centre.z}, &ue, &ve)) {
        out[c].push_back({{static_cast<float>(u), static_cast<float>(v),
                           static_cast<float>(std::hypot(ue - u, ve - v))},
                          shape,
                          color,
                          static_cast<float>(centre.z)});
      }
    }
  };
  for (const sim::Plate& p : w.plates)
    add({p.x, p.y, sim::kPlateHeight}, sim::kPlateRadius, kShapeClasses - 1,
        1 + static_cast<int>(p.color));
  for (const sim::Object& o : w.objects)
    add({o.x, o.y, o.top()}, o.half_width(), 1 + static_cast<int>(o.shape),
        1 + static_cast<int>(o.color));
  return out;
}

torch::Tensor PatchAttributes(const std::vector<ItemDisc>& items, int size, int patch, int dx,
                              int dy) {
  const int grid = size / patch;
  auto out = torch::zeros({grid * grid, 2}, torch::kLong);
  auto acc = out.accessor<int64_t, 2>();
  std::vector<const ItemDisc*> order;
  for (const ItemDisc& it : items)
    if (it.disc.r > 0) order.push_back(&it);
  std::stable_sort(order.begin(), order.end(),
                   [](const ItemDisc* a, const ItemDisc* b) { return a->height < b->height; });
  for (const ItemDisc* it : order) {
    const double u = it->disc.u + dx, v = it->disc.v + dy;
    for (int row = 0; row < grid; ++row) {
      for (int col = 0; col < grid; ++col) {
        if (std::hypot((col + 0.5) * patch - u, (row + 0.5) * patch - v) <= it->disc.r) {
          acc[row * grid + col][0] = it->shape;
          acc[row * grid + col][1] = it->color;
        }
      }
    }
  }
  return out;
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

torch::Tensor PatchLabels(const ImageDisc* discs, int size, int patch, int dx, int dy) {
  const int grid = size / patch;
  auto labels = torch::zeros({grid * grid, kPatchTargetItems}, torch::kFloat32);
  auto acc = labels.accessor<float, 2>();
  for (int item = 0; item < kPatchTargetItems; ++item) {
    const ImageDisc& d = discs[item];
    if (!(d.r > 0)) continue;
    const double u = d.u + dx, v = d.v + dy;
    for (int row = 0; row < grid; ++row) {
      for (int col = 0; col < grid; ++col) {
        const double nu = std::clamp(u, 1.0 * col * patch, 1.0 * (col + 1) * patch);
        const double nv = std::clamp(v, 1.0 * row * patch, 1.0 * (row + 1) * patch);
        if (std::hypot(nu - u, nv - v) < d.r) acc[row * grid + col][item] = 1.0f;
      }
    }
  }
  return labels;
}

RgbImage ShiftImage(const RgbImage& image, int dx, int dy) {
  RgbImage out = image;
  const int h = image.height, w = image.width;
  for (int y = 0; y < h; ++y) {
    const int sy = std::clamp(y - dy, 0, h - 1);
    for (int x = 0; x < w; ++x) {
      const int sx = std::clamp(x - dx, 0, w - 1);
      for (int c = 0; c < 3; ++c)
        out.pixels[(y * w + x) * 3 + c] = image.pixels[(sy * w + sx) * 3 + c];
    }
  }
  return out;
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

namespace {

// A word of an instruction and the character offset in the prompt text where it ends.
struct PromptWord {
  std::string text;
  size_t end;
};

// The lower-cased instruction's words (runs of letters), offsets into the prompt text.
std::vector<PromptWord> InstructionWords(const ModelConfig& config, const std::string& lower) {
  std::vector<PromptWord> words;
  const size_t at = config.prompt_template.find("{}");
  if (at == std::string::npos) return words;
  for (size_t i = 0; i < lower.size();) {
    if (!std::isalpha(static_cast<unsigned char>(lower[i]))) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < lower.size() && std::isalpha(static_cast<unsigned char>(lower[j]))) ++j;
    words.push_back({lower.substr(i, j - i), at + j});
    i = j;
  }
  return words;
}

// The prompt rows of the tokens containing each character offset in `ends` (ascending) of the
// prompt built from `lower`; empty when the tokenizer does not round-trip the prompt. Decodes
// growing prefixes (prompts are short).
std::vector<int64_t> RowsEndingAt(const ModelConfig& config, const Tokenizer& tokenizer,
                                  const std::string& lower, const std::vector<size_t>& ends) {
  const std::string text = absl::StrReplaceAll(config.prompt_template, {{"{}", lower}});
  const std::vector<int64_t> encoded = tokenizer.Encode(text);
  if (tokenizer.Decode(encoded) != text) return {};
  std::vector<int64_t> rows;
  size_t k = 0;
  for (size_t end : ends) {
    while (k < encoded.size() &&
           tokenizer.Decode(std::vector<int64_t>(encoded.begin(), encoded.begin() + k + 1)).size() <
               end)
      ++k;
    if (k == encoded.size()) return {};
    rows.push_back(static_cast<int64_t>(k));
  }
  return rows;  // BuildPromptIds appends at most a suffix token after `encoded`
}

}  // namespace

std::vector<int64_t> MentionRows(const ModelConfig& config, const Tokenizer& tokenizer,
                                 std::string_view instruction, int expected) {
  std::string lower(instruction);
  absl::AsciiStrToLower(&lower);
  const std::vector<PromptWord> words = InstructionWords(config, lower);
  const auto is_shape = [](const std::string& w) {
    for (int k = 0; k < sim::kNumShapes; ++k)
      if (w == sim::ShapeName(static_cast<sim::Shape>(k))) return true;
    return false;
  };
  const auto is_position = [](const std::string& w) {
    return w == "left" || w == "right" || w == "front" || w == "back";
  };
  std::vector<size_t> ends;     // character offsets where mentions end
  std::vector<size_t> word_of;  // the word index of each mention
  for (size_t w = 0; w < words.size(); ++w) {
    if (is_position(words[w].text) && !word_of.empty() && word_of.back() + 3 == w &&
        is_shape(words[word_of.back()].text)) {
      ends.back() = words[w].end;
      word_of.back() = w;
    } else if (is_shape(words[w].text) || words[w].text == "plate") {
      ends.push_back(words[w].end);
      word_of.push_back(w);
    }
  }
  if (static_cast<int>(ends.size()) != expected) return {};
  return RowsEndingAt(config, tokenizer, lower, ends);
}

std::vector<std::pair<int64_t, int>> ColourWordRows(const ModelConfig& config,
                                                    const Tokenizer& tokenizer,
                                                    std::string_view instruction) {
  std::string lower(instruction);
  absl::AsciiStrToLower(&lower);
  std::vector<size_t> ends;
  std::vector<int> classes;
  for (const PromptWord& w : InstructionWords(config, lower))
    for (int k = 0; k < sim::kNumColors; ++k)
      if (w.text == sim::ColorName(static_cast<sim::Color>(k))) {
        ends.push_back(w.end);
        classes.push_back(1 + k);
      }
  const std::vector<int64_t> rows = RowsEndingAt(config, tokenizer, lower, ends);
  std::vector<std::pair<int64_t, int>> out;
  for (size_t i = 0; i < rows.size(); ++i) out.push_back({rows[i], classes[i]});
  return out;
}

absl::StatusOr<BcBatch> MakeBatch(const std::vector<RawSample>& samples, const ModelConfig& config,
                                  const Tokenizer& tokenizer, const DatasetStats& stats,
                                  int max_shift, std::mt19937_64* rng) {
  if (samples.empty()) return absl::InvalidArgumentError("samples: empty batch");
  if (config.cameras.size() != 2)
    return absl::InvalidArgumentError("config.cameras: the simulator renders exactly 2 cameras");
  if (config.action_dim != sim::kActionDim || config.proprio_dim != sim::kProprioDim)
    return absl::InvalidArgumentError("config: action_dim/proprio_dim must match the simulator");
  const int64_t b = static_cast<int64_t>(samples.size());
  const int64_t chunk = config.chunk_size, s = config.image_size;
  BcBatch batch;
  batch.pixels = torch::empty({b, 2, 3, s, s}, torch::kFloat32);
  batch.proprio = torch::empty({b, config.proprio_dim}, torch::kFloat32);
  batch.actions = torch::empty({b, chunk, config.action_dim}, torch::kFloat32);
  batch.aux = torch::empty({b, kAuxTargetDim}, torch::kFloat32);
  const int64_t pp = config.patches_per_image();
  const int patch = static_cast<int>(config.towers.at(0).patch_size);
  batch.patch_labels = torch::empty({b, 2 * pp, kPatchTargetItems}, torch::kFloat32);
  batch.named_labels = torch::empty({b, 2 * pp, kPatchTargetItems}, torch::kFloat32);
  batch.patch_attributes = torch::empty({b, 2 * pp, 2}, torch::kLong);
  batch.mention_rows = torch::full({b, kMaxMentions}, -1, torch::kLong);
  batch.mention_labels = torch::zeros({b, 2 * pp, kMaxMentions}, torch::kFloat32);
  batch.colour_rows = torch::full({b, kMaxColourWords}, -1, torch::kLong);
  batch.colour_classes = torch::zeros({b, kMaxColourWords}, torch::kLong);
  std::uniform_int_distribution<int> shift(-max_shift, max_shift);
  for (int64_t i = 0; i < b; ++i) {
    const RawSample& r = samples[i];
    if (static_cast<int64_t>(r.actions.size()) != chunk)
      return absl::InvalidArgumentError(
          absl::StrCat("samples[", i, "].actions: expected ", chunk, " actions"));
    const RgbImage* cams[2] = {&r.main, &r.wrist};
    for (int c = 0; c < 2; ++c) {
      RgbImage img = *cams[c];
      int dx = 0, dy = 0;
      if (max_shift > 0 && rng != nullptr) {
        dx = shift(*rng), dy = shift(*rng);
        img = ShiftImage(img, dx, dy);
      }
      batch.patch_labels[i]
          .slice(0, c * pp, (c + 1) * pp)
          .copy_(PatchLabels(&r.discs[c * kPatchTargetItems], static_cast<int>(s), patch, dx, dy));
      auto named = batch.named_labels[i].slice(0, c * pp, (c + 1) * pp);
      named.zero_();
      auto mentions = batch.mention_labels[i].slice(0, c * pp, (c + 1) * pp);
      for (size_t g = 0; g < r.named_discs.size(); ++g) {
        auto goal_labels = PatchLabels(&r.named_discs[g][c * kPatchTargetItems],
                                       static_cast<int>(s), patch, dx, dy);
        named.copy_(torch::maximum(named, goal_labels));
        if (static_cast<int>(g) * kPatchTargetItems < kMaxMentions)
          mentions.slice(1, g * kPatchTargetItems, (g + 1) * kPatchTargetItems).copy_(goal_labels);
      }
      batch.patch_attributes[i]
          .slice(0, c * pp, (c + 1) * pp)
          .copy_(PatchAttributes(r.items[c], static_cast<int>(s), patch, dx, dy));
      auto t = ModelImage(img, config);
      if (!t.ok()) return t.status();
      batch.pixels[i][c].copy_(*t);
    }
    float p[sim::kProprioDim];
    if (auto st = NormalizeProprio(stats.proprio, r.proprio.data(), p, sim::kProprioDim); !st.ok())
      return st;
    batch.proprio[i].copy_(torch::from_blob(p, {sim::kProprioDim}, torch::kFloat32));
    std::vector<float> a;
    for (const auto& act : r.actions) a.insert(a.end(), act.begin(), act.end());
    if (auto st = NormalizeActions(stats.action, a.data(), chunk, sim::kActionDim); !st.ok())
      return st;
    batch.actions[i].copy_(torch::from_blob(a.data(), {chunk, sim::kActionDim}, torch::kFloat32));
    batch.aux[i].copy_(
        torch::from_blob(const_cast<float*>(r.aux.data()), {kAuxTargetDim}, torch::kFloat32));
    batch.prompt_ids.push_back(BuildPromptIds(config, tokenizer, r.instruction));
    const int goals = std::min<int>(r.named_discs.size(), kMaxMentions / kPatchTargetItems);
    const std::vector<int64_t> rows =
        MentionRows(config, tokenizer, r.instruction, goals * kPatchTargetItems);
    for (size_t j = 0; j < rows.size(); ++j) batch.mention_rows[i][j] = rows[j];
    const auto colours = ColourWordRows(config, tokenizer, r.instruction);
    for (size_t j = 0; j < colours.size() && j < kMaxColourWords; ++j) {
      batch.colour_rows[i][j] = colours[j].first;
      batch.colour_classes[i][j] = colours[j].second;
    }
  }
  return batch;
}

torch::Tensor TrainingForward(VlaModule& module, const ModelConfig& config,
                              const torch::Tensor& pixels, const torch::Tensor& proprio,
                              const std::vector<std::vector<int64_t>>& prompt_ids,
                              const ForwardTaps& taps, const VisionTokenDrop& drop) {
  const auto& llm = config.llm;
  const int64_t bsz = pixels.size(0);
  const int64_t p = config.vision_tokens();
  const int64_t d = llm.hidden;
  const int64_t a = config.action_tokens();
  auto ref = module->projector->parameters().front();
  const auto device = ref.device();
  const auto dtype = ref.scalar_type();
  const auto opts = torch::TensorOptions().device(device).dtype(dtype);
  auto lm = module->language_model->model;

  auto px = pixels.reshape({-1, 3, config.image_size, config.image_size}).to(opts);
  auto feats = module->vision_backbone->forward(px);
  feats = feats.reshape({bsz, p, feats.size(-1)});
  auto vision = module->projector->forward(feats);
  if (taps.vision_tokens != nullptr) *taps.vision_tokens = vision;
  auto prop = module->proprio_projector->forward(proprio.reshape({bsz, -1}).to(opts));

  std::vector<SampleRows> rows(bsz);
  std::vector<torch::Tensor> seqs, llm_vision;
  for (int64_t b = 0; b < bsz; ++b) {
    rows[b] = SampleRows::Unpruned(p, static_cast<int64_t>(prompt_ids[b].size()), a);
    torch::Tensor vb;
    seqs.push_back(EmbedSample(*module, config, vision[b], prop[b], prompt_ids[b], &vb));
    if (taps.llm_vision_input != nullptr) llm_vision.push_back(vb);
  }
  if (taps.llm_vision_input != nullptr) *taps.llm_vision_input = torch::stack(llm_vision);
  RaggedBatch rb = AssembleBatch(seqs, std::move(rows), device);
  seqs.clear();
  auto h = rb.hidden;
  auto valid = rb.valid;
  const int64_t head_dim = d / llm.heads;
  auto rope = MakeRope(rb.positions, head_dim, llm.rope_theta, dtype);
  auto bias = KeyPaddingBias(valid, dtype);
  // Prompt rows (zero-padded) and their validity, for the text taps.
  auto [text_rows, text_valid] = PromptRows(rb.rows, device);
  const int64_t m_max = text_rows.size(1);
  if (drop.layer >= 0 && drop.keep.defined()) {
    TORCH_CHECK(drop.keep.sizes() == torch::IntArrayRef({bsz, p}),
                "VisionTokenDrop::keep must be [batch, vision tokens]");
  }
  for (size_t l = 0; l < lm->layer_list.size(); ++l) {
    if (drop.layer == static_cast<int>(l) && drop.keep.defined()) {
      valid = valid.clone();
      valid.slice(1, 1, 1 + p).logical_and_(drop.keep.to(device, torch::kBool));
      bias = KeyPaddingBias(valid, dtype);
    }
    auto layer = lm->layer_list[l];
    const auto listed = [&](const std::vector<int>& layers) {
      return std::find(layers.begin(), layers.end(), static_cast<int>(l)) != layers.end();
    };
    const bool rows_wanted =
        taps.text_row_vision_attention != nullptr && listed(taps.row_attention_layers);
    const bool mean_wanted = taps.text_vision_attention != nullptr && listed(taps.attention_layers);
    if (rows_wanted || mean_wanted) {
      auto att = layer->self_attn;
      auto xn = layer->input_layernorm->forward(h);
      const int64_t t = h.size(1);
      auto heads_view = [&](const torch::Tensor& y) {
        return y.view({bsz, t, att->heads, att->head_dim}).transpose(1, 2);
      };
      auto q = ApplyRope(heads_view(att->q_proj(xn)), rope);
      auto k = ApplyRope(heads_view(att->k_proj(xn)), rope);
      auto idx = text_rows.view({bsz, 1, m_max, 1}).expand({bsz, att->heads, m_max, att->head_dim});
      auto logits = torch::matmul(q.gather(2, idx).to(torch::kFloat32),
                                  k.to(torch::kFloat32).transpose(-2, -1)) /
                        std::sqrt(static_cast<double>(att->head_dim)) +
                    bias.to(torch::kFloat32);
      auto probs = torch::softmax(logits, -1).mean(1) * text_valid.unsqueeze(2);  // [B, M, T]
      if (rows_wanted) taps.text_row_vision_attention->push_back(probs.slice(2, 1, 1 + p));
      if (mean_wanted) {
        auto per_row = probs.sum(1) / text_valid.sum(1, /*keepdim=*/true).clamp_min(1.0);  // [B, T]
        taps.text_vision_attention->push_back(per_row.slice(1, 1, 1 + p));
      }
    }
    h = layer->forward(h, rope, bias, valid, nullptr, nullptr);
    if (taps.vision_hidden != nullptr && static_cast<int>(l) == taps.vision_layer)
      *taps.vision_hidden = h.slice(1, 1, 1 + p);
  }
  if (taps.text_hidden != nullptr)
    *taps.text_hidden =
        lm->norm->forward(h.gather(1, text_rows.unsqueeze(-1).expand({bsz, m_max, d})));
  if (taps.text_mask != nullptr) *taps.text_mask = text_valid;

  auto read = ReadoutRows(rb.rows, device);
  auto action_hidden = lm->norm->forward(h.gather(1, read.unsqueeze(-1).expand({bsz, a, d})));
  if (taps.action_hidden != nullptr) *taps.action_hidden = action_hidden;
  // The head's LayerNorms reject bf16 inputs with fp32 weights under CPU
  // autocast (LibTorch 1.13); the head is small, so it runs in the parameters'
  // dtype.
  const bool autocast = CpuAutocastEnabled();
  SetCpuAutocast(false);
  auto out = module->action_head->forward(action_hidden.to(dtype));
  SetCpuAutocast(autocast);
  return out;
}

absl::StatusOr<PolicyObservation> EpisodeObservation(const sim::Episode& episode,
                                                     const ModelConfig& config) {
  if (config.cameras.size() != 2)
    return absl::InvalidArgumentError("config.cameras: the simulator renders exactly 2 cameras");
  PolicyObservation o;
  o.images = {episode.RenderMain(), episode.RenderWrist()};
  o.instruction = episode.instruction();
  const sim::Proprio raw = episode.proprio();
  o.proprio.assign(raw.begin(), raw.end());
  return o;
}

GraspAssessment AssessGrasp(const sim::World& before, const std::vector<sim::Goal>& goals,
                            int object) {
  GraspAssessment a;
  for (const sim::Goal& g : goals)
    if (g.object == object && !sim::GoalSatisfied(before, g)) a.goal_object = true;
  const sim::Goal* current = sim::FirstUnsatisfiedGoal(before, goals);
  if (a.goal_object || current == nullptr) return a;
  const sim::Object& got = before.objects[object];
  const sim::Object& want = before.objects[current->object];
  a.same_color = got.color == want.color;
  a.same_shape = got.shape == want.shape;
  a.confusion = absl::StrCat(
      std::string(sim::ColorName(want.color)), " ", std::string(sim::ShapeName(want.shape)), " -> ",
      std::string(sim::ColorName(got.color)), " ", std::string(sim::ShapeName(got.shape)));
  return a;
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

std::vector<int> ColourLookAlikes(const sim::World& world, int object) {
  const sim::Object& named = world.objects[object];
  std::vector<int> out;
  for (int i = 0; i < static_cast<int>(world.objects.size()); ++i) {
    const sim::Object& o = world.objects[i];
    if (o.shape == named.shape && o.color != named.color) out.push_back(i);
  }
  return out;
}

bool ColourDecides(const sim::World& world, const std::vector<sim::Goal>& goals) {
  return std::any_of(goals.begin(), goals.end(), [&](const sim::Goal& g) {
    return !ColourLookAlikes(world, g.object).empty();
  });
}

bool OnWrongDestination(const sim::World& world, const std::vector<sim::Goal>& goals) {
  for (const sim::Goal& g : goals) {
    for (int p = 0; p < static_cast<int>(world.plates.size()); ++p) {
      if (g.kind == sim::Goal::Kind::kOnPlate && g.target == p) continue;
      if (sim::GoalSatisfied(world, {sim::Goal::Kind::kOnPlate, g.object, p})) return true;
    }
  }
  return false;
}

absl::StatusOr<std::vector<EpisodeOutcome>> RunPolicyEpisodes(
    const PolicyStep& policy, const DatasetStats& stats, std::vector<sim::Episode> episodes,
    const RolloutOptions& options, const RolloutHooks& hooks, RolloutTimings* timings) {
  const ModelConfig& c = policy.config();
  if (options.execute_steps < 1 || options.execute_steps > c.chunk_size)
    return absl::InvalidArgumentError(
        absl::StrCat("execute_steps: must be in [1, ", c.chunk_size, "]"));
  if (options.max_batch < 1) return absl::InvalidArgumentError("max_batch: must be positive");
  std::vector<EpisodeOutcome> out(episodes.size());
  const auto track = [&](size_t e) {  // failure-analysis fields of out[e]
    const sim::Episode& ep = episodes[e];
    if (ep.goals().empty() || out[e].grasped_goal_object) return;
    const sim::Object& o = ep.world().objects[ep.goals().front().object];
    const sim::Vec3& tip = ep.world().gripper.tip;
    out[e].min_xy_error = std::min(out[e].min_xy_error, std::hypot(o.x - tip.x, o.y - tip.y));
  };
  for (size_t e = 0; e < episodes.size(); ++e) {
    out[e].min_xy_error = std::numeric_limits<double>::infinity();
    track(e);
  }
  while (true) {
    std::vector<size_t> active;
    for (size_t i = 0; i < episodes.size(); ++i)
      if (!episodes[i].done()) active.push_back(i);
    if (active.empty()) break;
    for (size_t begin = 0; begin < active.size(); begin += options.max_batch) {
      const size_t end = std::min(active.size(), begin + options.max_batch);
      std::vector<PreparedObservation> observations;
      std::vector<std::unique_ptr<SamplePruner>> pruners;
      for (size_t j = begin; j < end; ++j) {
        const size_t e = active[j];
        auto observation = EpisodeObservation(episodes[e], c);
        if (!observation.ok()) return observation.status();
        auto prepared = policy.Prepare(*observation, &stats);
        if (!prepared.ok()) return prepared.status();
        std::unique_ptr<SamplePruner> pruner;
        if (hooks.make_pruner) {
          auto pr = hooks.make_pruner(e, prepared->frame_patches);
          if (!pr.ok()) return pr.status();
          pruner = *std::move(pr);
        }
        observations.push_back(*std::move(prepared));
        pruners.push_back(std::move(pruner));
      }
      std::vector<StepInput> inputs;
      for (size_t k = 0; k < observations.size(); ++k)
        inputs.push_back({&observations[k], pruners[k].get()});
      const auto t0 = std::chrono::steady_clock::now();
      auto results = policy.Run(inputs);
      if (!results.ok()) return results.status();
      if (timings != nullptr) {
        timings->forward_seconds +=
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        timings->samples += static_cast<int64_t>(inputs.size());
        ++timings->passes;
      }
      for (size_t j = begin; j < end; ++j) {
        const size_t e = active[j];
        const size_t k = j - begin;
        const StepResult& r = (*results)[k];
        if (hooks.observe) {
          if (auto st = hooks.observe(e, episodes[e], inputs[k], r); !st.ok()) return st;
        }
        const float* a = r.actions.data();
        ++out[e].forward_passes;
        if (static_cast<int>(e) == options.trace_episode && !episodes[e].goals().empty()) {
          const sim::World& w = episodes[e].world();
          const sim::Object& o = w.objects[episodes[e].goals().front().object];
          if (episodes[e].steps() == 0) {
            std::fprintf(stderr, "trace \"%s\"\n", episodes[e].instruction().c_str());
            for (size_t i = 0; i < w.objects.size(); ++i)
              std::fprintf(stderr, "trace object %zu %s %s at %+.3f %+.3f\n", i,
                           std::string(sim::ColorName(w.objects[i].color)).c_str(),
                           std::string(sim::ShapeName(w.objects[i].shape)).c_str(), w.objects[i].x,
                           w.objects[i].y);
            for (const sim::Plate& p : w.plates)
              std::fprintf(stderr, "trace plate %s at %+.3f %+.3f\n",
                           std::string(sim::ColorName(p.color)).c_str(), p.x, p.y);
            for (const sim::Goal& g : episodes[e].goals()) {
              const sim::Object& go = w.objects[g.object];
              std::fprintf(stderr, "trace goal object %d at %+.3f %+.3f -> target %d\n", g.object,
                           go.x, go.y, g.target);
            }
          }
          std::fprintf(stderr,
                       "trace step %3d tip %+.3f %+.3f %.3f held %d | object %+.3f %+.3f %.3f | "
                       "a0 %+.2f %+.2f %+.2f grip %+.2f\n",
                       episodes[e].steps(), w.gripper.tip.x, w.gripper.tip.y, w.gripper.tip.z,
                       w.gripper.held, o.x, o.y, o.z, a[0], a[1], a[2], a[6]);
        }
        for (int s = 0; s < options.execute_steps && !episodes[e].done(); ++s) {
          sim::Action act;
          for (int d = 0; d < sim::kActionDim; ++d) act[d] = a[s * c.action_dim + d];
          for (float& v : act)
            if (!std::isfinite(v)) v = 0.0f;  // a diverged model fails the episode, not the run
          const sim::World before = episodes[e].world();
          auto st = episodes[e].Step(act);
          if (!st.ok()) return st.status();
          if (st->grasped >= 0) {
            const GraspAssessment g = AssessGrasp(before, episodes[e].goals(), st->grasped);
            if (g.goal_object) {
              ++out[e].goal_object_grasps;
            } else if (out[e].wrong_object_grasps++ == 0) {
              out[e].first_wrong_same_color = g.same_color;
              out[e].first_wrong_same_shape = g.same_shape;
              out[e].first_wrong_confusion = g.confusion;
            }
          }
          if (options.record_actions) out[e].executed.push_back(act);
          track(e);
          if (!episodes[e].goals().empty() && st->grasped == episodes[e].goals().front().object)
            out[e].grasped_goal_object = true;
        }
      }
    }
  }
  for (size_t i = 0; i < episodes.size(); ++i) {
    out[i].success = episodes[i].success();
    out[i].steps = episodes[i].steps();
    out[i].goals_satisfied = episodes[i].goals_satisfied();
    out[i].wrong_destination = OnWrongDestination(episodes[i].world(), episodes[i].goals());
    out[i].holding_at_end = episodes[i].world().gripper.held >= 0;
  }
  return out;
}

std::vector<int> SpecPruneScoreLayers(const PruningConfig& config) {
  std::vector<int> layers = config.specprune.local_layers;
  layers.insert(layers.end(), config.specprune.global_layers.begin(),
                config.specprune.global_layers.end());
  std::sort(layers.begin(), layers.end());
  layers.erase(std::unique(layers.begin(), layers.end()), layers.end());
  return layers;
}

absl::StatusOr<torch::Tensor> SpecPruneStaticKeep(const PruningConfig& config, int num_layers,
                                                  const std::vector<torch::Tensor>& layer_scores,
                                                  const torch::Tensor& previous_chunk) {
  if (config.method != PruningMethod::kSpecPrune) {
    return absl::InvalidArgumentError("SpecPruneStaticKeep: the pruning method must be specprune");
  }
  const auto& local = config.specprune.local_layers;
  const auto& global = config.specprune.global_layers;
  if (local.empty() || global.empty()) {
    return absl::InvalidArgumentError("SpecPruneStaticKeep: needs local and global layers");
  }
  const int64_t p =
      !layer_scores.empty() && layer_scores[0].defined() ? layer_scores[0].numel() : 0;
  std::vector<torch::Tensor> scores(layer_scores.size());
  for (int l : SpecPruneScoreLayers(config)) {
    if (l >= static_cast<int>(layer_scores.size()) || !layer_scores[l].defined() ||
        layer_scores[l].numel() != p || p == 0) {
      return absl::InvalidArgumentError(absl::StrCat("SpecPruneStaticKeep: layer_scores[", l,
                                                     "] must be [P], as layer_scores[0]"));
    }
    scores[l] = layer_scores[l].detach().to(torch::kCPU, torch::kFloat).reshape({p});
  }
  EpisodeState state;
  state.global_prior = torch::zeros({p}, torch::kFloat);
  for (int l : global) state.global_prior += scores[l];
  state.global_prior /= static_cast<double>(global.size());
  state.last_actions = previous_chunk.detach().to(torch::kCPU, torch::kFloat);
  PrunerContext ctx;
  ctx.config = &config;
  ctx.state = &state;
  ctx.num_layers = num_layers;
  ctx.num_vision_tokens = p;
  auto pruner = CreatePruner(ctx);
  if (!pruner.ok()) return pruner.status();
  std::vector<int64_t> ids(p);
  std::iota(ids.begin(), ids.end(), 0);
  const int static_layer = *std::max_element(local.begin(), local.end());
  for (int l = 0; l <= static_layer; ++l) {
    std::optional<LayerAttentionStats> stats;
    if ((*pruner)->StatsWanted(l) != StatsRows::kNone) {
      if (!scores[l].defined()) {
        return absl::InvalidArgumentError(
            absl::StrCat("SpecPruneStaticKeep: the pruner wants layer ", l, "'s scores"));
      }
      stats.emplace();
      stats->scores = scores[l];
    }
    auto kept = (*pruner)->AfterLayer(l, ids, stats ? &*stats : nullptr);
    if (kept) ids = *kept;
  }
  return torch::zeros({p}, torch::kBool).index_fill_(0, torch::tensor(ids, torch::kLong), true);
}

}  // namespace specprune
