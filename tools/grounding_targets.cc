#include "tools/grounding_targets.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "sim/render.h"

namespace specprune {

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

}  // namespace specprune
