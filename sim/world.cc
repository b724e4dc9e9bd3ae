#include "sim/world.h"

#include <algorithm>
#include <cmath>

namespace specprune {
namespace sim {
namespace {

double Clamp(double v, double lo, double hi) { return std::min(hi, std::max(lo, v)); }

}  // namespace

bool World::InStack(int i, int root) const {
  // Support chains are short and acyclic (an object only rests on one placed below it).
  for (int k = i, guard = 0; k >= 0 && guard <= static_cast<int>(objects.size()); ++guard) {
    if (k == root) return true;
    k = objects[k].support;
  }
  return false;
}

double World::ExtentAlong(int i, double angle) const {
  const Object& o = objects[i];
  if (o.shape != Shape::kCube) return o.half_width();
  const double rel = o.yaw - angle;
  return o.half_width() * (std::abs(std::cos(rel)) + std::abs(std::sin(rel)));
}

double World::SupportHeight(double x, double y, double half_width, int ignore,
                            int* support_object) const {
  double height = 0.0;
  int best = -1;
  for (const Plate& p : plates) {
    if (std::hypot(x - p.x, y - p.y) <= half_width + kPlateRadius) {
      height = std::max(height, kPlateHeight);
    }
  }
  for (int j = 0; j < static_cast<int>(objects.size()); ++j) {
    if (ignore >= 0 && InStack(j, ignore)) continue;
    const Object& o = objects[j];
    if (std::hypot(x - o.x, y - o.y) <= half_width + o.half_width() && o.top() > height) {
      height = o.top();
      best = j;
    }
  }
  if (support_object != nullptr) *support_object = best;
  return height;
}

void World::MoveStack(int root, double cx, double cy, double dyaw, const Vec3& t) {
  const double c = std::cos(dyaw), s = std::sin(dyaw);
  for (int k = 0; k < static_cast<int>(objects.size()); ++k) {
    if (!InStack(k, root)) continue;
    Object& o = objects[k];
    const double rx = o.x - cx, ry = o.y - cy;
    o.x = cx + c * rx - s * ry + t.x;
    o.y = cy + s * rx + c * ry + t.y;
    o.z += t.z;
    o.yaw += dyaw;
  }
}

void World::Drop(int i) {
  Object& o = objects[i];
  int support = -1;
  const double h = SupportHeight(o.x, o.y, o.half_width(), i, &support);
  MoveStack(i, o.x, o.y, 0.0, {0.0, 0.0, h - o.z});
  objects[i].z = h;  // exactly, without rounding from the translation
  objects[i].support = support;
}

StepEvents World::Step(const Vec3& delta, double dyaw, bool close) {
  StepEvents events;
  Gripper& g = gripper;
  Vec3 tip = {Clamp(g.tip.x + delta.x, -kTableHalfSize, kTableHalfSize),
              Clamp(g.tip.y + delta.y, -kTableHalfSize, kTableHalfSize),
              Clamp(g.tip.z + delta.z, kMinTipZ, kMaxTipZ)};
  const double yaw = Clamp(g.yaw + dyaw, -kMaxYaw, kMaxYaw);
  if (g.held >= 0) {
    // The carried object cannot be pushed into whatever is below its new footprint.
    const Object& h = objects[g.held];
    const double ox = tip.x - std::sin(yaw) * g.held_perp;
    const double oy = tip.y + std::cos(yaw) * g.held_perp;
    const double floor = SupportHeight(ox, oy, h.half_width(), g.held);
    tip.z = std::max(tip.z, std::min(kMaxTipZ, floor - g.held_dz));
    const Object before = h;
    const double new_yaw = yaw + g.held_dyaw;
    MoveStack(g.held, before.x, before.y, new_yaw - before.yaw,
              {ox - before.x, oy - before.y, tip.z + g.held_dz - before.z});
  }
  g.tip = tip;
  g.yaw = yaw;

  const double s_old = g.half_separation();
  if (!close) {
    g.opening = std::min(1.0, g.opening + kGripperRate);
    if (g.held >= 0) {
      events.released = g.held;
      g.held = -1;
      Drop(events.released);
    }
    return events;
  }
  if (g.held >= 0) return events;  // fingers stay on the held object

  const double s_new = std::max(0.0, s_old - kGripperRate * kMaxHalfOpening);
  const double ax = std::cos(g.yaw), ay = std::sin(g.yaw);
  int best = -1;
  double best_perp = 0.0, best_extent = 0.0;
  for (int j = 0; j < static_cast<int>(objects.size()); ++j) {
    const Object& o = objects[j];
    if (g.tip.z < o.z - 0.01 || g.tip.z > o.top() - kMinGraspDepth) continue;
    const double dx = o.x - g.tip.x, dy = o.y - g.tip.y;
    const double along = dx * ax + dy * ay;
    const double perp = -dx * ay + dy * ax;
    const double extent = ExtentAlong(j, g.yaw);
    if (std::abs(perp) > kGraspPerpTolerance) continue;
    if (std::abs(along) + extent > s_old + 1e-9) continue;  // not between the fingers
    if (s_new > std::abs(along) + extent) continue;         // fingers not yet in contact
    if (best < 0 || std::abs(perp) < std::abs(best_perp)) {
      best = j;
      best_perp = perp;
      best_extent = extent;
    }
  }
  if (best < 0) {
    g.opening = s_new / kMaxHalfOpening;
    return events;
  }
  Object& o = objects[best];
  // The closing fingers centre the object along the finger axis.
  MoveStack(best, o.x, o.y, 0.0,
            {g.tip.x - ay * best_perp - o.x, g.tip.y + ax * best_perp - o.y, 0.0});
  o.support = -1;
  g.opening = best_extent / kMaxHalfOpening;
  g.held = best;
  g.held_perp = best_perp;
  g.held_dz = o.z - g.tip.z;
  g.held_dyaw = o.yaw - g.yaw;
  events.grasped = best;
  return events;
}

}  // namespace sim
}  // namespace specprune
