#include "sim/render.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace specprune {
namespace sim {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kEps = 1e-7;
constexpr double kAmbient = 0.5;
constexpr double kDiffuse = 0.5;
constexpr double kFloorZ = -0.75;
constexpr double kTileSize = 0.1;

// Direction towards the light (unnormalized (0.25, 0.3, 1)).
const Vec3 kLight = [] {
  const double n = std::sqrt(0.25 * 0.25 + 0.3 * 0.3 + 1.0);
  return Vec3{0.25 / n, 0.3 / n, 1.0 / n};
}();

enum class Style { kPlain, kPlate, kBowl };

struct Prim {
  bool cylinder = false;
  double cx = 0, cy = 0, z0 = 0, z1 = 0;
  double hx = 0, hy = 0, c = 1, s = 0;  // box half extents and yaw cos/sin
  double r = 0;                         // cylinder radius
  Rgb color = {0, 0, 0};
  Style style = Style::kPlain;
  bool casts_shadow = true;
  bool visible = true;  // seen by primary rays (false: only casts shadows)
  // Screen-space bounds for primary rays (valid when `cull`), xy bounds of the shadowed region.
  bool cull = false;
  double u0 = 0, u1 = 0, v0 = 0, v1 = 0;
  double sx0 = 0, sx1 = 0, sy0 = 0, sy1 = 0;
};

struct Hit {
  double t = kInf;
  int prim = -3;  // >= 0: prims index; -1 = table; -3 = nothing (floor)
  int face = 0;   // 0 = top, 1 = side, 2 = bottom
  Vec3 normal;
};

// Ray vs. z-axis-aligned slab: narrows [t_in, t_out]; returns which bound moved t_in (+1 = upper
// bound entered = top face).
inline bool Slab(double o, double d, double lo, double hi, double* t_in, double* t_out,
                 int* enter_sign) {
  if (std::abs(d) < 1e-15) return o >= lo && o <= hi;
  double t0 = (lo - o) / d, t1 = (hi - o) / d;
  int sign = -1;  // entering through the low face
  if (t0 > t1) {
    std::swap(t0, t1);
    sign = +1;
  }
  if (t0 > *t_in) {
    *t_in = t0;
    *enter_sign = sign;
  }
  *t_out = std::min(*t_out, t1);
  return *t_in <= *t_out;
}

// Returns entry distance (> kEps) or kInf, with the entry face normal and face id.
double Intersect(const Prim& p, const Vec3& o, const Vec3& d, Vec3* normal, int* face) {
  double t_in = -kInf, t_out = kInf;
  int axis = -1, sign = 0;
  if (!p.cylinder) {
    const double px = o.x - p.cx, py = o.y - p.cy;
    const double lx = p.c * px + p.s * py, ly = -p.s * px + p.c * py;
    const double dx = p.c * d.x + p.s * d.y, dy = -p.s * d.x + p.c * d.y;
    int sx = 0, sy = 0, sz = 0;
    double before = t_in;
    if (!Slab(lx, dx, -p.hx, p.hx, &t_in, &t_out, &sx)) return kInf;
    if (t_in != before) axis = 0, sign = sx;
    before = t_in;
    if (!Slab(ly, dy, -p.hy, p.hy, &t_in, &t_out, &sy)) return kInf;
    if (t_in != before) axis = 1, sign = sy;
    before = t_in;
    if (!Slab(o.z, d.z, p.z0, p.z1, &t_in, &t_out, &sz)) return kInf;
    if (t_in != before) axis = 2, sign = sz;
    if (t_in <= kEps || t_out < t_in) return kInf;
    if (axis == 2) {
      *normal = {0, 0, static_cast<double>(sign)};
      *face = sign > 0 ? 0 : 2;
    } else {
      const double nx = axis == 0 ? sign : 0, ny = axis == 1 ? sign : 0;
      *normal = {p.c * nx - p.s * ny, p.s * nx + p.c * ny, 0};
      *face = 1;
    }
    return t_in;
  }
  const double px = o.x - p.cx, py = o.y - p.cy;
  const double a = d.x * d.x + d.y * d.y;
  const double cc = px * px + py * py - p.r * p.r;
  bool side = false;
  if (a < 1e-15) {
    if (cc > 0) return kInf;
  } else {
    const double b = px * d.x + py * d.y;
    const double disc = b * b - a * cc;
    if (disc < 0) return kInf;
    const double q = std::sqrt(disc);
    t_in = (-b - q) / a;
    t_out = (-b + q) / a;
    side = true;
  }
  const double before = t_in;
  int sz = 0;
  if (!Slab(o.z, d.z, p.z0, p.z1, &t_in, &t_out, &sz)) return kInf;
  if (t_in <= kEps || t_out < t_in) return kInf;
  if (t_in != before || !side) {
    *normal = {0, 0, static_cast<double>(sz)};
    *face = sz > 0 ? 0 : 2;
  } else {
    const double hx = px + t_in * d.x, hy = py + t_in * d.y;
    const double n = std::max(1e-12, std::hypot(hx, hy));
    *normal = {hx / n, hy / n, 0};
    *face = 1;
  }
  return t_in;
}

Prim MakeBox(double cx, double cy, double z0, double z1, double hx, double hy, double yaw,
             Rgb color) {
  Prim p;
  p.cx = cx, p.cy = cy, p.z0 = z0, p.z1 = z1, p.hx = hx, p.hy = hy;
  p.c = std::cos(yaw), p.s = std::sin(yaw);
  p.color = color;
  return p;
}

Prim MakeCylinder(double cx, double cy, double z0, double z1, double r, Rgb color) {
  Prim p;
  p.cylinder = true;
  p.cx = cx, p.cy = cy, p.z0 = z0, p.z1 = z1, p.r = r;
  p.color = color;
  return p;
}

// Half-extents of the prim's axis-aligned bounding box in x and y.
void XyHalfExtents(const Prim& p, double* ex, double* ey) {
  if (p.cylinder) {
    *ex = *ey = p.r;
  } else {
    *ex = std::abs(p.c) * p.hx + std::abs(p.s) * p.hy;
    *ey = std::abs(p.s) * p.hx + std::abs(p.c) * p.hy;
  }
}

std::vector<Prim> BuildScene(const World& world, const Camera& camera) {
  std::vector<Prim> prims;
  for (const Plate& pl : world.plates) {
    Prim p = MakeCylinder(pl.x, pl.y, 0.0, kPlateHeight, kPlateRadius, ColorRgb(pl.color));
    p.style = Style::kPlate;
    p.casts_shadow = false;
    prims.push_back(p);
  }
  for (const Object& o : world.objects) {
    const Rgb color = ColorRgb(o.color);
    if (o.shape == Shape::kCube) {
      const double h = kCubeSize / 2;
      prims.push_back(MakeBox(o.x, o.y, o.z, o.top(), h, h, o.yaw, color));
    } else {
      Prim p = MakeCylinder(o.x, o.y, o.z, o.top(), o.half_width(), color);
      if (o.shape == Shape::kBowl) p.style = Style::kBowl;
      prims.push_back(p);
    }
  }
  const Gripper& g = world.gripper;
  const double ax = std::cos(g.yaw), ay = std::sin(g.yaw);
  const double s = g.half_separation() + kFingerThickness / 2;
  const double top = g.tip.z + kFingerLength;
  const Rgb finger = {205, 205, 212};
  for (double side : {-1.0, 1.0}) {
    prims.push_back(MakeBox(g.tip.x + side * s * ax, g.tip.y + side * s * ay, g.tip.z, top,
                            kFingerThickness / 2, kFingerWidth / 2, g.yaw, finger));
  }
  // Palm and wrist housing; the wrist camera sits inside them and sees only their shadows.
  prims.push_back(MakeBox(g.tip.x, g.tip.y, top, top + 0.03, s + kFingerThickness / 2, 0.02, g.yaw,
                          {75, 75, 85}));
  prims.push_back(
      MakeCylinder(g.tip.x, g.tip.y, top + 0.03, g.tip.z + 0.45, 0.03, {120, 120, 132}));
  if (camera.wrist) prims[prims.size() - 1].visible = prims[prims.size() - 2].visible = false;

  for (Prim& p : prims) {
    double ex, ey;
    XyHalfExtents(p, &ex, &ey);
    // Screen bounds from the 8 bounding-box corners (no culling if one is behind the camera).
    p.cull = true;
    p.u0 = p.v0 = kInf;
    p.u1 = p.v1 = -kInf;
    for (int k = 0; k < 8 && p.cull; ++k) {
      const Vec3 corner = {p.cx + ((k & 1) ? ex : -ex), p.cy + ((k & 2) ? ey : -ey),
                           (k & 4) ? p.z1 : p.z0};
      double u, v;
      if (!Project(camera, corner, &u, &v)) {
        p.cull = false;
        break;
      }
      p.u0 = std::min(p.u0, u), p.u1 = std::max(p.u1, u);
      p.v0 = std::min(p.v0, v), p.v1 = std::max(p.v1, v);
    }
    p.u0 -= 1, p.v0 -= 1, p.u1 += 1, p.v1 += 1;
    // Points at height >= 0 shadowed by p lie within its footprint swept along -light.
    const double reach = p.z1 / kLight.z;
    p.sx0 = std::min(p.cx - ex, p.cx - ex - reach * kLight.x) - 1e-3;
    p.sx1 = std::max(p.cx + ex, p.cx + ex - reach * kLight.x) + 1e-3;
    p.sy0 = std::min(p.cy - ey, p.cy - ey - reach * kLight.y) - 1e-3;
    p.sy1 = std::max(p.cy + ey, p.cy + ey - reach * kLight.y) + 1e-3;
  }
  return prims;
}

struct Sample {
  double r = 0, g = 0, b = 0;
  int key = 0;  // identifies the surface region, for edge detection
};

class Tracer {
 public:
  Tracer(const World& world, const Camera& camera)
      : camera_(camera), prims_(BuildScene(world, camera)) {}

  Sample Trace(double u, double v) const {
    const double du = (u - camera_.width * 0.5) / camera_.focal_px;
    const double dv = (v - camera_.height * 0.5) / camera_.focal_px;
    const Vec3 d = camera_.forward + du * camera_.right + dv * camera_.down;
    const Vec3& o = camera_.position;
    Hit hit;
    for (int i = 0; i < static_cast<int>(prims_.size()); ++i) {
      const Prim& p = prims_[i];
      if (!p.visible || (p.cull && (u < p.u0 || u > p.u1 || v < p.v0 || v > p.v1))) continue;
      Vec3 n;
      int face;
      const double t = Intersect(p, o, d, &n, &face);
      if (t < hit.t) hit.t = t, hit.prim = i, hit.face = face, hit.normal = n;
    }
    if (d.z < 0) {
      const double t = -o.z / d.z;
      if (t > kEps && t < hit.t) {
        const Vec3 q = o + t * d;
        if (std::abs(q.x) <= kTableHalfSize && std::abs(q.y) <= kTableHalfSize) {
          hit = Hit{t, -1, 0, {0, 0, 1}};
        }
      }
    }
    Sample out;
    if (hit.prim == -3) {
      out.r = 60, out.g = 60, out.b = 66;  // floor beyond the table edge
      out.key = 1;
      return out;
    }
    const Vec3 q = o + hit.t * d;
    Rgb base;
    int region = 0;
    if (hit.prim == -1) {
      const int tile = static_cast<int>(std::floor(q.x / kTileSize) + std::floor(q.y / kTileSize));
      base = (tile & 1) ? Rgb{182, 160, 128} : Rgb{173, 152, 121};
    } else {
      const Prim& p = prims_[hit.prim];
      base = p.color;
      if (hit.face == 0 && p.style != Style::kPlain) {
        const double rr = std::hypot(q.x - p.cx, q.y - p.cy) / p.r;
        if (p.style == Style::kPlate && rr > 0.8) {
          base = p.color == ColorRgb(Color::kWhite) ? Rgb{190, 190, 196} : Rgb{245, 245, 245};
          region = 1;
        } else if (p.style == Style::kBowl && rr < 0.72) {
          base = {static_cast<uint8_t>(p.color[0] * 0.55), static_cast<uint8_t>(p.color[1] * 0.55),
                  static_cast<uint8_t>(p.color[2] * 0.55)};
          region = 1;
        }
      }
    }
    double light = kAmbient;
    bool shadow = false;
    const double lambert = Dot(hit.normal, kLight);
    if (lambert > 0) {
      shadow = InShadow(q + 1e-6 * hit.normal, hit.prim);
      if (!shadow) light += kDiffuse * lambert;
    }
    out.r = base[0] * light, out.g = base[1] * light, out.b = base[2] * light;
    out.key = ((hit.prim + 4) * 4 + hit.face) * 4 + region * 2 + (shadow ? 1 : 0);
    return out;
  }

 private:
  bool InShadow(const Vec3& q, int self) const {
    for (int i = 0; i < static_cast<int>(prims_.size()); ++i) {
      const Prim& p = prims_[i];
      if (i == self || !p.casts_shadow || q.z > p.z1) continue;
      if (q.x < p.sx0 || q.x > p.sx1 || q.y < p.sy0 || q.y > p.sy1) continue;
      Vec3 n;
      int face;
      if (Intersect(p, q, kLight, &n, &face) < kInf) return true;
    }
    return false;
  }

  const Camera& camera_;
  std::vector<Prim> prims_;
};

uint8_t ToByte(double v) {
  return static_cast<uint8_t>(std::lround(std::min(255.0, std::max(0.0, v))));
}

}  // namespace

Camera MainCamera(int size) {
  Camera c;
  c.position = {0, 0, kMainCameraHeight};
  c.right = {1, 0, 0};
  c.down = {0, -1, 0};
  c.forward = {0, 0, -1};
  c.focal_px = size * 0.5 * kMainCameraHeight / kTableHalfSize;
  c.width = c.height = size;
  return c;
}

Camera WristCamera(const Gripper& gripper, int size) {
  Camera c;
  const double ca = std::cos(gripper.yaw), sa = std::sin(gripper.yaw);
  c.position = {gripper.tip.x, gripper.tip.y, gripper.tip.z + kWristCameraOffset};
  c.right = {ca, sa, 0};
  c.down = {sa, -ca, 0};
  c.forward = {0, 0, -1};
  c.focal_px = size * 0.5 / kWristCameraTanHalfFov;
  c.width = c.height = size;
  c.wrist = true;
  return c;
}

bool Project(const Camera& camera, const Vec3& p, double* u, double* v) {
  const Vec3 rel = p - camera.position;
  const double depth = Dot(rel, camera.forward);
  if (depth <= 1e-6) return false;
  *u = camera.width * 0.5 + camera.focal_px * Dot(rel, camera.right) / depth;
  *v = camera.height * 0.5 + camera.focal_px * Dot(rel, camera.down) / depth;
  return true;
}

RgbImage Render(const World& world, const Camera& camera, const RenderOptions& options) {
  const int w = camera.width, h = camera.height;
  Tracer tracer(world, camera);
  std::vector<Sample> samples(static_cast<size_t>(w) * h);
  for (int y = 0; y < h; ++y) {
    for (int x = 0; x < w; ++x) samples[y * w + x] = tracer.Trace(x + 0.5, y + 0.5);
  }
  RgbImage image;
  image.height = h;
  image.width = w;
  image.pixels.resize(static_cast<size_t>(w) * h * 3);
  for (int y = 0; y < h; ++y) {
    for (int x = 0; x < w; ++x) {
      Sample s = samples[y * w + x];
      const int key = s.key;
      const bool edge = options.antialias && ((x > 0 && samples[y * w + x - 1].key != key) ||
                                              (x + 1 < w && samples[y * w + x + 1].key != key) ||
                                              (y > 0 && samples[(y - 1) * w + x].key != key) ||
                                              (y + 1 < h && samples[(y + 1) * w + x].key != key));
      if (edge) {
        s = Sample{};
        for (int k = 0; k < 4; ++k) {
          const Sample sub = tracer.Trace(x + 0.25 + 0.5 * (k & 1), y + 0.25 + 0.5 * (k >> 1));
          s.r += sub.r * 0.25, s.g += sub.g * 0.25, s.b += sub.b * 0.25;
        }
      }
      uint8_t* px = &image.pixels[(static_cast<size_t>(y) * w + x) * 3];
      px[0] = ToByte(s.r), px[1] = ToByte(s.g), px[2] = ToByte(s.b);
    }
  }
  return image;
}

}  // namespace sim
}  // namespace specprune
