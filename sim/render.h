// Ray-cast renderer of the tabletop world (docs/ARCHITECTURE.md "Simulator and evaluation"):
// flat-shaded boxes and vertical cylinders lit by one directional light with hard shadows, over a
// lightly checkered table, with adaptive 2x2 supersampling on edges. Deterministic
// (single-threaded, no randomness) and fast: well under 1 ms per 64x64 frame.
//
// Cameras (both pinhole, looking straight down):
// * MAIN: fixed, 2 m above the table centre; at table height it sees exactly x, y in [-0.5, 0.5]
//   (+x to the right, +y up in the image). Height cues: an object's image grows as it rises
//   (perspective) and its drop shadow moves away from it (light from the back right).
//   A 20 cm object on the table spans about 13-15 px of a 64-px image.
// * WRIST: rides 35 cm above the fingertips and turns with the gripper yaw: the finger axis is
//   horizontal in the image. Field of view 2*atan(0.65) (~66 deg), so the fingertips of the open
//   gripper are visible at the left/right edges and an object between them fills much of the view.
//   The palm and wrist housing are not drawn in this view (their shadows are).
//
// All functions are stateless and thread-safe.
#pragma once

#include "image/image_codec.h"
#include "sim/types.h"
#include "sim/world.h"

namespace specprune {
namespace sim {

inline constexpr double kMainCameraHeight = 2.0;        // m above the table centre
inline constexpr double kWristCameraOffset = 0.35;      // m above the fingertips
inline constexpr double kWristCameraTanHalfFov = 0.65;  // tan(half field of view)

struct Camera {
  Vec3 position;
  Vec3 right;             // world direction of +u (image x)
  Vec3 down;              // world direction of +v (image y)
  Vec3 forward;           // viewing direction
  double focal_px = 1.0;  // focal length in pixels
  int width = 64;
  int height = 64;
  bool wrist = false;  // the wrist camera does not see the palm/housing it is mounted in
};

// Cameras for square images of `size` pixels (size > 0).
Camera MainCamera(int size);
Camera WristCamera(const Gripper& gripper, int size);

// Projects world point `p` to continuous pixel coordinates (pixel (i, j) covers
// [i, i+1) x [j, j+1)). Returns false if `p` is not in front of the camera.
bool Project(const Camera& camera, const Vec3& p, double* u, double* v);

struct RenderOptions {
  bool antialias = true;  // adaptive 2x2 supersampling of edge pixels
};

// Renders `world` as seen by `camera` into a camera.height x camera.width RGB image.
RgbImage Render(const World& world, const Camera& camera, const RenderOptions& options = {});

}  // namespace sim
}  // namespace specprune
