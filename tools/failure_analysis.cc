#include "tools/failure_analysis.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace specprune {

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

}  // namespace specprune
