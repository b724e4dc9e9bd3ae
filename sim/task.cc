#include "sim/task.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace specprune {
namespace sim {
namespace {

constexpr double kPi = 3.14159265358979323846;

// splitmix64: tiny, portable, and identical everywhere.
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t Next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double Uniform(double lo, double hi) {
    return lo + (hi - lo) * (static_cast<double>(Next() >> 11) * (1.0 / 9007199254740992.0));
  }
  int Int(int n) { return static_cast<int>(Next() % static_cast<uint64_t>(n)); }  // [0, n)
  int Range(int lo, int hi) { return lo + Int(hi - lo + 1); }                     // [lo, hi]
  bool Coin() { return (Next() >> 63) != 0; }
  template <typename T>
  const T& Pick(const std::vector<T>& v) {
    return v[Int(static_cast<int>(v.size()))];
  }

 private:
  uint64_t state_;
};

struct Kind {
  Shape shape;
  Color color;
  bool operator==(const Kind& o) const { return shape == o.shape && color == o.color; }
};

// absl::string_view is not std::string_view in this abseil build.
std::string Str(std::string_view v) { return std::string(v); }

std::string Describe(const Object& o) {
  return absl::StrCat(Str(ColorName(o.color)), " ", Str(ShapeName(o.shape)));
}

Kind RandomKind(Rng& rng) {
  return {static_cast<Shape>(rng.Int(kNumShapes)), static_cast<Color>(rng.Int(kNumObjectColors))};
}

// A random kind not in `used` that satisfies `ok` (tries all kinds in random order).
bool PickKind(Rng& rng, const std::vector<Kind>& used, const std::function<bool(Kind)>& ok,
              Kind* out) {
  std::vector<Kind> all;
  for (int s = 0; s < kNumShapes; ++s) {
    for (int c = 0; c < kNumObjectColors; ++c) {
      const Kind k = {static_cast<Shape>(s), static_cast<Color>(c)};
      if (ok(k) && std::find(used.begin(), used.end(), k) == used.end()) all.push_back(k);
    }
  }
  if (all.empty()) return false;
  *out = rng.Pick(all);
  return true;
}

Object MakeObject(Rng& rng, Kind kind) {
  Object o;
  o.shape = kind.shape;
  o.color = kind.color;
  o.yaw = kind.shape == Shape::kCube ? rng.Uniform(-kPi / 4, kPi / 4) : 0.0;
  return o;
}

// Random non-overlapping positions for all plates and objects of `world`, with clearances that
// leave room for the open fingers. `extra` may reject a complete layout. False if none was found.
bool PlaceAll(Rng& rng, World* world, const std::function<bool(const World&)>& extra) {
  constexpr double kObjectGap = 0.10, kPlateGap = 0.05, kMargin = 0.05;
  for (int attempt = 0; attempt < 60; ++attempt) {
    bool ok = true;
    for (size_t i = 0; i < world->plates.size() && ok; ++i) {
      Plate& p = world->plates[i];
      const double lim = kTableHalfSize - kPlateRadius - 0.02;
      ok = false;
      for (int t = 0; t < 300 && !ok; ++t) {
        p.x = rng.Uniform(-lim, lim), p.y = rng.Uniform(-lim, lim);
        ok = true;
        for (size_t j = 0; j < i && ok; ++j) {
          const Plate& q = world->plates[j];
          ok = std::hypot(p.x - q.x, p.y - q.y) >= 2 * kPlateRadius + kPlateGap;
        }
      }
    }
    for (size_t i = 0; i < world->objects.size() && ok; ++i) {
      Object& o = world->objects[i];
      // Keep the whole (rotated) footprint, enlarged by the perspective of the main camera, in
      // view.
      const double bound =
          o.shape == Shape::kCube ? o.half_width() * std::sqrt(2.0) : o.half_width();
      const double lim = kTableHalfSize - bound - kMargin;
      ok = false;
      for (int t = 0; t < 300 && !ok; ++t) {
        o.x = rng.Uniform(-lim, lim), o.y = rng.Uniform(-lim, lim);
        ok = true;
        for (const Plate& q : world->plates) {
          if (std::hypot(o.x - q.x, o.y - q.y) < o.half_width() + kPlateRadius + kPlateGap) {
            ok = false;
          }
        }
        for (size_t j = 0; j < i && ok; ++j) {
          const Object& q = world->objects[j];
          ok = std::hypot(o.x - q.x, o.y - q.y) >= o.half_width() + q.half_width() + kObjectGap;
        }
      }
    }
    if (ok && (!extra || extra(*world))) return true;
  }
  return false;
}

// Home pose over the front edge of the table, outside the band where objects and plates are placed
// (|y| <= ~0.4) and outside the main camera's view: an open gripper is 0.4 m wide and, seen from
// 2 m above, would otherwise hide the objects under it in the first frame.
void InitGripper(Rng& rng, World* world) {
  world->gripper = Gripper{};
  world->gripper.tip = {rng.Uniform(-0.1, 0.1), rng.Uniform(-0.49, -0.45), rng.Uniform(0.32, 0.4)};
}

int DistractorCount(Rng& rng, int requested, int lo, int hi) {
  const int drawn = rng.Range(lo, hi);  // always drawn, so the stream does not depend on it
  return requested >= 0 ? requested : drawn;
}

// Adds up to `count` distractors satisfying `ok` (distinct kinds, drawn from `id`; yaw from `lay`)
// to `world`.
void AddDistractors(Rng& id, Rng& lay, int count, std::vector<Kind>* used,
                    const std::function<bool(Kind)>& ok, World* world) {
  for (int i = 0; i < count; ++i) {
    Kind k;
    if (!PickKind(id, *used, ok, &k)) return;
    used->push_back(k);
    world->objects.push_back(MakeObject(lay, k));
  }
}

// Places the world's items; drops trailing distractors (objects past `required`) when there is
// no room. Objects [0, required) are never dropped.
absl::Status PlaceOrShrink(Rng& rng, size_t required, World* world,
                           const std::function<bool(const World&)>& extra = nullptr) {
  while (!PlaceAll(rng, world, extra)) {
    if (world->objects.size() <= required) {
      return absl::InternalError("no room on the table for the required objects");
    }
    world->objects.pop_back();
  }
  return absl::OkStatus();
}

size_t MaxObjects(const World& world) { return world.plates.size() <= 1 ? 6 : 5; }

// Each generator draws what the task is (kinds, counts, goals, wording) from `id` and where
// things are (layout, yaw) from `lay`. Procedural tasks pass one generator as both, which keeps
// the draw order, and so every seed's task, as it was before the two were told apart.
absl::StatusOr<Task> Spatial(Rng& id, Rng& lay, int requested) {
  Task task;
  World& w = task.world;
  const Kind twin = RandomKind(id);
  const int relation = id.Int(4);  // left, right, front, back
  const int n = DistractorCount(id, requested, 1, 2);
  w.plates.push_back({Color::kWhite, 0, 0});
  w.objects = {MakeObject(lay, twin), MakeObject(lay, twin)};
  std::vector<Kind> used = {twin};
  AddDistractors(
      id, lay, std::min<int>(n, MaxObjects(w) - 2), &used,
      [&](Kind k) { return k.shape != twin.shape; }, &w);
  const auto separated = [relation](const World& world) {
    const Object &a = world.objects[0], &b = world.objects[1];
    return relation < 2 ? std::abs(a.x - b.x) >= 0.2 : std::abs(a.y - b.y) >= 0.2;
  };
  if (absl::Status s = PlaceOrShrink(lay, 2, &w, separated); !s.ok()) return s;
  const Object &a = w.objects[0], &b = w.objects[1];
  int target = 0;
  switch (relation) {
    case 0:
      target = a.x < b.x ? 0 : 1;
      break;
    case 1:
      target = a.x > b.x ? 0 : 1;
      break;
    case 2:
      target = a.y < b.y ? 0 : 1;
      break;
    default:
      target = a.y > b.y ? 0 : 1;
  }
  static constexpr const char* kRelation[] = {"on the left", "on the right", "in the front",
                                              "in the back"};
  const std::string name = absl::StrCat(Describe(w.objects[target]), " ", kRelation[relation]);
  task.instruction = id.Coin() ? absl::StrCat("pick up the ", name, " and place it on the plate")
                               : absl::StrCat("put the ", name, " on the plate");
  task.goals = {{Goal::Kind::kOnPlate, target, 0}};
  return task;
}

absl::StatusOr<Task> ObjectSuite(Rng& id, Rng& lay, int requested) {
  Task task;
  World& w = task.world;
  const Kind target = RandomKind(id);
  const int n = DistractorCount(id, requested, 1, 3);
  w.plates.push_back({Color::kWhite, 0, 0});
  w.objects = {MakeObject(lay, target)};
  std::vector<Kind> used = {target};
  const bool same_color = id.Coin();
  const int room = static_cast<int>(MaxObjects(w)) - 1;
  // The first distractor shares the target's colour or shape, so both words matter.
  AddDistractors(
      id, lay, std::min(n, 1), &used,
      [&](Kind k) { return same_color ? k.color == target.color : k.shape == target.shape; }, &w);
  AddDistractors(
      id, lay, std::min(n, room) - 1, &used, [](Kind) { return true; }, &w);
  if (absl::Status s = PlaceOrShrink(lay, 1, &w); !s.ok()) return s;
  const std::string name = Describe(w.objects[0]);
  task.instruction = id.Coin() ? absl::StrCat("put the ", name, " on the plate")
                               : absl::StrCat("pick up the ", name, " and place it on the plate");
  task.goals = {{Goal::Kind::kOnPlate, 0, 0}};
  return task;
}

absl::StatusOr<Task> GoalSuite(Rng& id, Rng& lay, int requested) {
  // The fixed scene: nominal positions, jittered.
  struct Slot {
    Kind kind;
    double x, y;
  };
  static const Slot kObjects[] = {{{Shape::kCube, Color::kRed}, -0.32, -0.20},
                                  {{Shape::kCylinder, Color::kYellow}, 0.0, -0.26},
                                  {{Shape::kCube, Color::kGreen}, 0.32, -0.20},
                                  {{Shape::kBowl, Color::kPurple}, 0.0, 0.08}};
  Task task;
  World& w = task.world;
  w.plates = {{Color::kBlue, -0.28, 0.28}, {Color::kOrange, 0.28, 0.28}};
  // Goals: 8 plate placements (4 objects x 2 plates) or 7 stackings.
  static const std::pair<int, int> kStacks[] = {{0, 2}, {0, 3}, {1, 0}, {1, 2},
                                                {1, 3}, {2, 0}, {2, 3}};
  Goal goal;
  std::vector<int> involved;
  if (id.Coin()) {
    goal = {Goal::Kind::kOnPlate, id.Int(4), id.Int(2)};
    involved = {goal.object};
  } else {
    const auto& [src, dst] = kStacks[id.Int(7)];
    goal = {Goal::Kind::kOnObject, src, dst};
    involved = {src, dst};
  }
  const int others = 4 - static_cast<int>(involved.size());
  const int n = requested < 0 ? others : std::min(requested, others);
  std::vector<int> keep = involved;
  for (int i = 0, added = 0; i < 4 && added < n; ++i) {
    if (std::find(involved.begin(), involved.end(), i) != involved.end()) continue;
    keep.push_back(i);
    ++added;
  }
  std::sort(keep.begin(), keep.end());
  for (int i : keep) {
    Object o = MakeObject(lay, kObjects[i].kind);
    o.x = kObjects[i].x + lay.Uniform(-0.015, 0.015);
    o.y = kObjects[i].y + lay.Uniform(-0.015, 0.015);
    w.objects.push_back(o);
  }
  for (Plate& p : w.plates) {
    p.x += lay.Uniform(-0.015, 0.015);
    p.y += lay.Uniform(-0.015, 0.015);
  }
  const auto index = [&](int slot) {
    return static_cast<int>(std::find(keep.begin(), keep.end(), slot) - keep.begin());
  };
  goal.object = index(goal.object);
  const Object& moved = w.objects[goal.object];
  if (goal.kind == Goal::Kind::kOnPlate) {
    task.instruction = absl::StrCat("put the ", Describe(moved), " on the ",
                                    Str(ColorName(w.plates[goal.target].color)), " plate");
  } else {
    goal.target = index(goal.target);
    const Object& base = w.objects[goal.target];
    if (base.shape == Shape::kBowl) {
      task.instruction = absl::StrCat("put the ", Describe(moved), " in the ", Describe(base));
    } else {
      task.instruction =
          id.Coin() ? absl::StrCat("stack the ", Describe(moved), " on the ", Describe(base))
                    : absl::StrCat("put the ", Describe(moved), " on top of the ", Describe(base));
    }
  }
  task.goals = {goal};
  return task;
}

absl::StatusOr<Task> Long(Rng& id, Rng& lay, int requested) {
  Task task;
  World& w = task.world;
  const Color c1 = static_cast<Color>(id.Int(kNumColors));
  Color c2 = static_cast<Color>(id.Int(kNumColors - 1));
  if (c2 >= c1) c2 = static_cast<Color>(static_cast<int>(c2) + 1);
  w.plates = {{c1, 0, 0}, {c2, 0, 0}};
  const int n = DistractorCount(id, requested, 0, 2);
  std::vector<Kind> used;
  AddDistractors(
      id, lay, 2, &used, [](Kind) { return true; }, &w);
  AddDistractors(
      id, lay, std::min<int>(n, MaxObjects(w) - 2), &used, [](Kind) { return true; }, &w);
  if (absl::Status s = PlaceOrShrink(lay, 2, &w); !s.ok()) return s;
  const std::string a = Describe(w.objects[0]), b = Describe(w.objects[1]);
  const std::string p1 = Str(ColorName(c1)), p2 = Str(ColorName(c2));
  task.instruction = id.Coin() ? absl::StrCat("put the ", a, " on the ", p1, " plate and then the ",
                                              b, " on the ", p2, " plate")
                               : absl::StrCat("put the ", a, " on the ", p1,
                                              " plate, then put the ", b, " on the ", p2, " plate");
  task.goals = {{Goal::Kind::kOnPlate, 0, 0}, {Goal::Kind::kOnPlate, 1, 1}};
  return task;
}

}  // namespace

std::string_view SuiteName(Suite suite) {
  switch (suite) {
    case Suite::kSpatial:
      return "spatial";
    case Suite::kObject:
      return "object";
    case Suite::kGoal:
      return "goal";
    case Suite::kLong:
      return "long";
  }
  return "?";
}

absl::StatusOr<Suite> ParseSuite(std::string_view name) {
  const std::string lower = absl::AsciiStrToLower(Str(name));
  std::string_view s = lower;
  if (s.substr(0, 7) == "libero_") s.remove_prefix(7);
  for (Suite suite : kAllSuites) {
    if (s == SuiteName(suite)) return suite;
  }
  return absl::InvalidArgumentError(absl::StrCat("suite: unknown suite \"", Str(name),
                                                 "\" (expected spatial, object, goal or long)"));
}

const Goal* FirstUnsatisfiedGoal(const World& world, const std::vector<Goal>& goals) {
  for (const Goal& goal : goals)
    if (!GoalSatisfied(world, goal)) return &goal;
  return nullptr;
}

bool GoalSatisfied(const World& world, const Goal& goal) {
  if (goal.object < 0 || goal.object >= static_cast<int>(world.objects.size())) return false;
  const Object& o = world.objects[goal.object];
  if (world.gripper.held >= 0 && world.InStack(goal.object, world.gripper.held)) return false;
  if (goal.kind == Goal::Kind::kOnPlate) {
    if (goal.target < 0 || goal.target >= static_cast<int>(world.plates.size())) return false;
    const Plate& p = world.plates[goal.target];
    return o.support < 0 && std::abs(o.z - kPlateHeight) < 1e-9 &&
           std::hypot(o.x - p.x, o.y - p.y) <= kPlateRadius;
  }
  if (goal.target < 0 || goal.target >= static_cast<int>(world.objects.size())) return false;
  const Object& base = world.objects[goal.target];
  return o.support == goal.target && std::hypot(o.x - base.x, o.y - base.y) <= kStackTolerance;
}

int FixedTaskIndex(uint64_t seed, int fixed_tasks) {
  return fixed_tasks > 0 ? static_cast<int>(seed % static_cast<uint64_t>(fixed_tasks)) : -1;
}

absl::StatusOr<Task> GenerateTask(Suite suite, uint64_t seed, int num_distractors,
                                  int fixed_tasks) {
  if (num_distractors > 4) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_distractors: must be in [-1, 4], got ", num_distractors));
  }
  if (fixed_tasks < 0 || fixed_tasks > kMaxFixedTasks) {
    return absl::InvalidArgumentError(
        absl::StrCat("fixed_tasks: must be in [0, ", kMaxFixedTasks, "], got ", fixed_tasks));
  }
  Rng lay(seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(suite) + 1);
  // Task i of a fixed set is the same for every set size (and every seed that picks it).
  Rng fixed(0xF1CED7A5ull * (static_cast<uint64_t>(FixedTaskIndex(seed, fixed_tasks)) + 1) +
            0x51ull * (static_cast<uint64_t>(suite) + 1));
  Rng& id = fixed_tasks > 0 ? fixed : lay;
  absl::StatusOr<Task> task;
  switch (suite) {
    case Suite::kSpatial:
      task = Spatial(id, lay, num_distractors);
      break;
    case Suite::kObject:
      task = ObjectSuite(id, lay, num_distractors);
      break;
    case Suite::kGoal:
      task = GoalSuite(id, lay, num_distractors);
      break;
    case Suite::kLong:
      task = Long(id, lay, num_distractors);
      break;
  }
  if (!task.ok()) return task.status();
  InitGripper(lay, &task->world);
  for (Object& o : task->world.objects) o.z = 0.0;
  return task;
}

}  // namespace sim
}  // namespace specprune
