#include "bench/loadgen_scene.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace specprune::loadgen {
namespace {

uint64_t SplitMix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// Uniform in [0, 1) from a hash.
double Unit(uint64_t h) { return static_cast<double>(h >> 11) * (1.0 / 9007199254740992.0); }

}  // namespace

Scene::Scene(uint64_t seed, int robot, int episode, int size) : size_(size) {
  key_ = SplitMix(SplitMix(seed) ^ SplitMix(static_cast<uint64_t>(robot) * 1000003ULL) ^
                  SplitMix(static_cast<uint64_t>(episode) + 0x51ed270b27ULL));
  auto u = [&](int i) { return Unit(SplitMix(key_ + static_cast<uint64_t>(i))); };
  for (int c = 0; c < 3; ++c) table_[c] = 90 + static_cast<int>(80 * u(c));
  for (int k = 0; k < kObjects; ++k) {
    Object& ob = objects_[k];
    ob.x = 0.15 + 0.7 * u(10 + 4 * k);
    ob.y = 0.2 + 0.6 * u(11 + 4 * k);
    ob.half = 0.05 + 0.06 * u(12 + 4 * k);
    const int hue = static_cast<int>(6 * u(13 + 4 * k));
    static constexpr uint8_t kColors[6][3] = {{210, 40, 40},  {40, 170, 60},  {40, 70, 210},
                                              {220, 200, 40}, {200, 60, 200}, {240, 140, 30}};
    for (int c = 0; c < 3; ++c) ob.rgb[c] = kColors[hue][c];
  }
  phase_x_ = 6.2831853 * u(30);
  phase_y_ = 6.2831853 * u(31);
  freq_x_ = 0.05 + 0.04 * u(32);
  freq_y_ = 0.03 + 0.04 * u(33);
}

void Scene::Gripper(uint64_t step, double* x, double* y, double* z) const {
  const double t = static_cast<double>(step);
  *x = 0.5 + 0.3 * std::sin(freq_x_ * t + phase_x_);
  *y = 0.5 + 0.3 * std::sin(freq_y_ * t + phase_y_);
  *z = 0.5 + 0.4 * std::cos(0.5 * freq_x_ * t + phase_y_);
}

void Scene::Render(int camera, uint64_t step, std::string* pixels) const {
  pixels->resize(static_cast<size_t>(size_) * size_ * 3);
  auto* p = reinterpret_cast<uint8_t*>(pixels->data());
  double gx, gy, gz;
  Gripper(step, &gx, &gy, &gz);
  // Wrist camera: the scene moves opposite to the gripper; the gripper jaws
  // stay at the bottom.
  const double shift_x = camera == 0 ? 0.0 : -(gx - 0.5) * 0.6;
  const double shift_y = camera == 0 ? 0.0 : -(gy - 0.5) * 0.6;
  const double grip_r = camera == 0 ? 0.06 + 0.04 * (1.0 - gz) : 0.12;
  const double grip_x = camera == 0 ? gx : 0.5;
  const double grip_y = camera == 0 ? gy : 0.92;
  const double inv = 1.0 / size_;
  const uint64_t noise_key = SplitMix(key_ ^ (static_cast<uint64_t>(camera) << 56) ^ step);
  for (int yy = 0; yy < size_; ++yy) {
    for (int xx = 0; xx < size_; ++xx) {
      const double fx = (xx + 0.5) * inv, fy = (yy + 0.5) * inv;
      const double sx = fx - shift_x, sy = fy - shift_y;
      // Table: low-contrast checker texture plus a vertical lighting
      // gradient.
      const bool check =
          (static_cast<int>(std::floor(sx * 8)) + static_cast<int>(std::floor(sy * 8))) & 1;
      int rgb[3];
      for (int c = 0; c < 3; ++c)
        rgb[c] = table_[c] + (check ? 12 : -12) + static_cast<int>(30 * (sy - 0.5));
      for (const Object& ob : objects_) {
        if (std::abs(sx - ob.x) < ob.half && std::abs(sy - ob.y) < ob.half) {
          for (int c = 0; c < 3; ++c) rgb[c] = ob.rgb[c];
        }
      }
      const double dx = fx - grip_x, dy = fy - grip_y;
      if (dx * dx + dy * dy < grip_r * grip_r) {
        for (int c = 0; c < 3; ++c) rgb[c] = 40 + 20 * c;
      }
      const size_t i = (static_cast<size_t>(yy) * size_ + xx) * 3;
      const uint64_t h = SplitMix(noise_key + i);
      for (int c = 0; c < 3; ++c) {
        const int v = rgb[c] + static_cast<int>((h >> (8 * c)) % 5) - 2;  // +-2 sensor noise
        p[i + c] = static_cast<uint8_t>(std::clamp(v, 0, 255));
      }
    }
  }
}

void Scene::Proprio(uint64_t step, int dim, google::protobuf::RepeatedField<float>* out) const {
  double x, y, z;
  Gripper(step, &x, &y, &z);
  out->Clear();
  for (int d = 0; d < dim; ++d) {
    double v;
    if (d == 0) {
      v = 0.4 * x;
    } else if (d == 1) {
      v = 0.4 * y - 0.2;
    } else if (d == 2) {
      v = 0.1 + 0.3 * z;
    } else {
      v = 0.5 * std::sin(0.03 * static_cast<double>(step) * (d + 1) + d);
    }
    out->Add(static_cast<float>(v));
  }
}

std::string Instruction(uint64_t seed, int robot) {
  static constexpr const char* kVerbs[] = {"put", "place", "move", "push"};
  static constexpr const char* kColors[] = {"red", "green", "blue", "yellow", "purple", "orange"};
  static constexpr const char* kObjects[] = {"block", "cube", "bowl", "mug", "can"};
  static constexpr const char* kTargets[] = {"on the plate", "into the basket", "next to the box",
                                             "onto the tray", "to the left edge"};
  const uint64_t h = SplitMix(seed * 7919 + static_cast<uint64_t>(robot));
  return absl::StrCat(kVerbs[h % 4], " the ", kColors[(h >> 8) % 6], " ", kObjects[(h >> 16) % 5],
                      " ", kTargets[(h >> 24) % 5]);
}

}  // namespace specprune::loadgen
