#include "sim/expert.h"

#include <algorithm>
#include <cmath>

namespace specprune {
namespace sim {
namespace {

constexpr double kGain = 0.5;       // fraction of the remaining error commanded per step
constexpr double kFastCap = 1.0;    // transit speed cap (x max step)
constexpr double kLiftCap = 0.6;    // lift speed cap
constexpr double kSlowCap = 0.25;   // near-contact speed cap
constexpr double kSlowZone = 0.08;  // slow within this height above the contact surface (m)
constexpr double kGraspBelowTop = 0.06;
constexpr double kPlaceDrop = 0.015;  // release with the object this high above its support
constexpr double kAlignGrasp = 0.01;  // xy alignment before descending (m)
constexpr double kAlignPlace = 0.015;
constexpr double kZTolerance = 0.005;
constexpr double kClearance = 0.06;  // transit clearance above the tallest object (m)
// Misalignments up to this (m) are corrected at the current height instead of by lifting back to
// the transit height (a small drift while descending, or a state another controller left).
constexpr double kRealign = 0.04;

}  // namespace

std::string_view ScriptedExpert::PhaseName(Phase phase) {
  switch (phase) {
    case Phase::kLift:
      return "lift";
    case Phase::kTransit:
      return "transit";
    case Phase::kDescend:
      return "descend";
    case Phase::kApproach:
      return "approach";
    case Phase::kClose:
      return "close";
    case Phase::kPlace:
      return "place";
    case Phase::kRelease:
      return "release";
    case Phase::kDone:
      return "done";
  }
  return "?";
}

void ScriptedExpert::TakeOver(const Episode& episode, bool last_gripper_closed) {
  closing_ = false;
  const World& w = episode.world();
  const Gripper& g = w.gripper;
  const Goal* goal = FirstUnsatisfiedGoal(w, episode.goals());
  if (!last_gripper_closed || goal == nullptr || g.held >= 0 || g.opening >= 1.0) return;
  const Object& o = w.objects[goal->object];
  const double grasp_z = std::max(o.z, o.top() - kGraspBelowTop);
  closing_ = std::hypot(o.x - g.tip.x, o.y - g.tip.y) <= kGraspPerpTolerance &&
             g.tip.z <= grasp_z + kZTolerance;
}

Action ScriptedExpert::Act(const Episode& episode) {
  const World& w = episode.world();
  const Gripper& g = w.gripper;
  const double max_step = episode.options().max_translation_step;
  const auto command = [&](Phase phase, const Vec3& target, double cap, bool close) {
    phase_ = phase;
    Vec3 v = kGain * (target - g.tip);
    const double m = std::max({std::abs(v.x), std::abs(v.y), std::abs(v.z)}) / max_step;
    if (m > cap) v = (cap / m) * v;
    const double yaw = std::clamp(-kGain * g.yaw / episode.options().max_yaw_step, -1.0, 1.0);
    return Action{static_cast<float>(v.x / max_step),
                  static_cast<float>(v.y / max_step),
                  static_cast<float>(v.z / max_step),
                  0.0f,
                  0.0f,
                  static_cast<float>(yaw),
                  close ? 1.0f : -1.0f};
  };

  const Goal* goal = FirstUnsatisfiedGoal(w, episode.goals());
  if (goal == nullptr) {
    closing_ = false;
    return command(Phase::kDone, g.tip + Vec3{0, 0, 0.05}, kLiftCap, false);
  }
  if (g.held >= 0 && g.held != goal->object) {
    // Holding a later goal's object (a policy took the sub-tasks out of order): finish that goal;
    // any other object: let go.
    const auto& goals = episode.goals();
    const auto held_goal = std::find_if(goals.begin(), goals.end(),
                                        [&](const Goal& other) { return other.object == g.held; });
    if (held_goal == goals.end()) {
      closing_ = false;
      return command(Phase::kRelease, g.tip, kSlowCap, false);
    }
    goal = &*held_goal;
  }

  double others_top = 0.0;  // tallest object not carried
  for (int i = 0; i < static_cast<int>(w.objects.size()); ++i) {
    if (g.held < 0 || !w.InStack(i, g.held)) others_top = std::max(others_top, w.objects[i].top());
  }

  if (g.held >= 0) {
    closing_ = false;
    const Object& o = w.objects[g.held];
    double tx, ty, support_top;
    if (goal->kind == Goal::Kind::kOnPlate) {
      const Plate& p = w.plates[goal->target];
      tx = p.x, ty = p.y, support_top = kPlateHeight;
    } else {
      const Object& base = w.objects[goal->target];
      tx = base.x, ty = base.y, support_top = base.top();
    }
    const double dx = tx - o.x, dy = ty - o.y;  // tip displacement that centres the object
    const double err_xy = std::hypot(dx, dy);
    const double carry_z = std::clamp(others_top + kClearance - g.held_dz, 0.0, kMaxTipZ);
    const double place_z = support_top + kPlaceDrop - g.held_dz;
    if (err_xy > kAlignPlace) {
      if (g.tip.z < carry_z - 0.01 && err_xy > kRealign) {
        return command(Phase::kLift, {g.tip.x, g.tip.y, carry_z}, kLiftCap, true);
      }
      const double z = err_xy > kRealign ? carry_z : std::min(g.tip.z, carry_z);
      return command(Phase::kTransit, {g.tip.x + dx, g.tip.y + dy, z}, kFastCap, true);
    }
    if (g.tip.z > place_z + kZTolerance) {
      const bool slow = g.tip.z < place_z + kSlowZone;
      return command(Phase::kPlace, {g.tip.x + dx, g.tip.y + dy, place_z},
                     slow ? kSlowCap : kFastCap, true);
    }
    return command(Phase::kRelease, g.tip, kSlowCap, false);
  }

  const Object& o = w.objects[goal->object];
  const double grasp_z = std::max(o.z, o.top() - kGraspBelowTop);
  const double transit_z = std::clamp(others_top + kClearance, 0.25, kMaxTipZ);
  const double err_xy = std::hypot(o.x - g.tip.x, o.y - g.tip.y);
  if (err_xy > kAlignGrasp && !closing_) {
    if (g.tip.z < transit_z - 0.01 && err_xy > kRealign) {
      return command(Phase::kLift, {g.tip.x, g.tip.y, transit_z}, kLiftCap, false);
    }
    const double z = err_xy > kRealign ? transit_z : std::min(g.tip.z, transit_z);
    return command(Phase::kTransit, {o.x, o.y, z}, kFastCap, false);
  }
  if (g.tip.z > grasp_z + kZTolerance && !closing_) {
    const bool slow = g.tip.z < o.top() + kSlowZone;
    return command(slow ? Phase::kApproach : Phase::kDescend, {o.x, o.y, grasp_z},
                   slow ? kSlowCap : kFastCap, false);
  }
  // At the grasp pose: open fully first, then close until the object is held; a close that ends
  // empty starts over.
  if (closing_ && g.opening <= 0.0)
    closing_ = false;
  else if (!closing_ && g.opening >= 1.0)
    closing_ = true;
  return command(Phase::kClose, {o.x, o.y, grasp_z}, kSlowCap, closing_);
}

}  // namespace sim
}  // namespace specprune
