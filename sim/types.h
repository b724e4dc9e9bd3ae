// Basic value types of the tabletop simulator (docs/ARCHITECTURE.md "Simulator and evaluation"):
// 3-vectors, object shapes, colours and the fixed physical dimensions of the world. Everything here
// is a plain value; no state.
//
// World frame: metres, right-handed. The table top is the plane z = 0 over x, y in [-0.5, 0.5];
// +x is "right" and +y is "back" (away from the robot, the top of the main camera image), +z up.
#pragma once

#include <array>
#include <cstdint>
#include <string_view>

namespace specprune {
namespace sim {

struct Vec3 {
  double x = 0.0;
  double y = 0.0;
  double z = 0.0;
};

inline Vec3 operator+(const Vec3& a, const Vec3& b) { return {a.x + b.x, a.y + b.y, a.z + b.z}; }
inline Vec3 operator-(const Vec3& a, const Vec3& b) { return {a.x - b.x, a.y - b.y, a.z - b.z}; }
inline Vec3 operator*(double s, const Vec3& a) { return {s * a.x, s * a.y, s * a.z}; }
inline double Dot(const Vec3& a, const Vec3& b) { return a.x * b.x + a.y * b.y + a.z * b.z; }

// 8-bit RGB colour.
using Rgb = std::array<uint8_t, 3>;

// Graspable object shapes. All are vertical prisms with a flat top, so anything can be stacked on
// anything; a bowl is a wide, low cylinder drawn with a dark interior.
enum class Shape { kCube, kCylinder, kBowl };
inline constexpr int kNumShapes = 3;

// Named colours. Objects use the first kNumObjectColors; kWhite is for plates only.
enum class Color { kRed, kGreen, kBlue, kYellow, kPurple, kOrange, kWhite };
inline constexpr int kNumObjectColors = 6;
inline constexpr int kNumColors = 7;

std::string_view ShapeName(Shape shape);  // "cube", "cylinder", "bowl"
std::string_view ColorName(Color color);  // "red", ..., "white"
Rgb ColorRgb(Color color);                // saturated display colour

// --- Fixed dimensions (metres) -------------------------------------------------------------------
inline constexpr double kTableHalfSize = 0.5;  // table top spans [-0.5, 0.5] in x and y
inline constexpr double kCubeSize = 0.20;      // cube side (and height)
inline constexpr double kCylinderRadius = 0.10;
inline constexpr double kCylinderHeight = 0.20;
inline constexpr double kBowlRadius = 0.12;
inline constexpr double kBowlHeight = 0.08;
inline constexpr double kPlateRadius = 0.16;
inline constexpr double kPlateHeight = 0.015;

// Half-width of the object's footprint (cube: half side; cylinder/bowl: radius). Used as the
// radius of the circle that approximates the footprint for support and spacing tests.
double ShapeHalfWidth(Shape shape);
double ShapeHeight(Shape shape);

}  // namespace sim
}  // namespace specprune
