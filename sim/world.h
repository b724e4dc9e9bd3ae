// World state and kinematics of the tabletop simulator (docs/ARCHITECTURE.md "Simulator and
// evaluation").
//
// The world is a table with coloured plates (flat discs) and graspable objects, and a floating
// two-finger gripper. There are no dynamics: the gripper moves kinematically, an object moves only
// while it is grasped (or while it rests on a grasped object), and a released object drops at once
// onto the highest surface below its footprint (table, plate or another object's top). Fingers and
// carried objects do not collide sideways with other objects.
//
// Grasp rule (honest, but generous): while the gripper closes, an object is grasped when
//   * it lies between the fingers: |offset along the finger axis| + its half-extent along that axis
//     <= the current finger half-separation, and |offset across the axis| <= kGraspPerpTolerance
//     (6 cm, about one 8-px patch of the 64-px wrist view at grasp height), and
//   * the fingertips are low enough: base - 1 cm <= tip z <= top - kMinGraspDepth, and
//   * the closing fingers reach its width during this step.
// The object is then centred between the fingers along the finger axis and follows the gripper.
// Opening the gripper releases it.
//
// World is a plain value type (copyable); not thread-safe for concurrent mutation.
#pragma once

#include <vector>

#include "sim/types.h"

namespace specprune {
namespace sim {

// --- Kinematic limits and grasp constants ----------------------------------------------------
inline constexpr double kMaxHalfOpening = 0.20;  // finger half-separation when fully open (m)
inline constexpr double kGripperRate = 0.25;     // opening change per step (fraction of full)
inline constexpr double kMinGraspDepth = 0.03;   // fingertips must be this far below the top (m)
inline constexpr double kGraspPerpTolerance = 0.06;    // max offset across the finger axis (m)
inline constexpr double kMinTipZ = 0.0;                // fingertips cannot go below the table top
inline constexpr double kMaxTipZ = 0.50;               // highest fingertip height (m)
inline constexpr double kMaxYaw = 1.5707963267948966;  // gripper yaw is clamped to [-pi/2, pi/2]
// Finger and palm geometry (for rendering): fingers are boxes of this size hanging from the palm.
inline constexpr double kFingerLength = 0.12;     // vertical, from the tip up to the palm
inline constexpr double kFingerThickness = 0.02;  // along the finger axis
inline constexpr double kFingerWidth = 0.05;      // across the finger axis

struct Object {
  Shape shape = Shape::kCube;
  Color color = Color::kRed;
  double x = 0.0;  // footprint centre
  double y = 0.0;
  double z = 0.0;    // height of the bottom face
  double yaw = 0.0;  // rotation about +z (only visible for cubes)
  int support = -1;  // index of the object this one rests on; -1 = table, plate or gripper
  double top() const { return z + ShapeHeight(shape); }
  double half_width() const { return ShapeHalfWidth(shape); }
};

struct Plate {
  Color color = Color::kWhite;
  double x = 0.0;  // centre; radius kPlateRadius, top at kPlateHeight
  double y = 0.0;
};

struct Gripper {
  Vec3 tip;              // midpoint between the fingertips
  double yaw = 0.0;      // finger axis is (cos yaw, sin yaw, 0)
  double opening = 1.0;  // finger half-separation / kMaxHalfOpening, in [0, 1]
  int held = -1;         // index of the grasped object, -1 = none
  // Pose of the held object relative to the gripper (valid while held >= 0).
  double held_perp = 0.0;  // centre offset across the finger axis (along (-sin yaw, cos yaw))
  double held_dz = 0.0;    // object bottom z - tip z
  double held_dyaw = 0.0;  // object yaw - gripper yaw
  double half_separation() const { return opening * kMaxHalfOpening; }
};

// Events of one kinematic step.
struct StepEvents {
  int grasped = -1;   // object grasped during this step, or -1
  int released = -1;  // object released during this step, or -1
};

struct World {
  std::vector<Plate> plates;
  std::vector<Object> objects;
  Gripper gripper;

  // Advances one step: moves the tip by `delta` (metres) and the yaw by `dyaw` (radians), clamped
  // to the workspace (x, y within the table, z in [kMinTipZ, kMaxTipZ], yaw in [-kMaxYaw, kMaxYaw];
  // a carried object cannot be pushed into the surface below it), then closes (`close`) or opens
  // the fingers by kGripperRate, grasping or releasing as described above.
  StepEvents Step(const Vec3& delta, double dyaw, bool close);

  // Height of the highest surface under a footprint circle centred at (x, y) with radius
  // `half_width` (touching circles count), ignoring `ignore` and everything resting on it
  // (-1 = ignore nothing). *support_object (optional) receives the object index or -1.
  double SupportHeight(double x, double y, double half_width, int ignore,
                       int* support_object = nullptr) const;

  // True if object `i` is `root` or rests (directly or through a stack) on object `root`.
  bool InStack(int i, int root) const;

  // Half-extent of object `i` along the horizontal direction with angle `angle`.
  double ExtentAlong(int i, double angle) const;

 private:
  // Moves object `root` and everything stacked on it rigidly: rotation by `dyaw` about the
  // vertical axis through (cx, cy), then translation by `t`.
  void MoveStack(int root, double cx, double cy, double dyaw, const Vec3& t);
  void Drop(int i);
};

}  // namespace sim
}  // namespace specprune
