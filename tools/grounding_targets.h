// Where the task's items appear in the camera images, for the grounding losses of
// specprune_train: the current goal, the aux targets' constants, discs of items per camera, and
// per-patch labels and attribute classes built from them (docs/ARCHITECTURE.md "Simulator and
// evaluation", issue #6).
//
// Thread safety: free functions, reentrant.
#pragma once

#include <torch/torch.h>

#include <array>
#include <vector>

#include "sim/episode.h"

namespace specprune {

inline constexpr int kAuxTargetDim = 8;
inline constexpr double kAuxPositionScale = 0.3;  // metres; table coordinates -> about [-1, 1]

// Where an item appears in a camera image: a disc with centre (u, v) and radius r in pixels
// (pixel (i, j) covers [i, i+1) x [j, j+1)); r == 0 when the item is not in front of the camera.
struct ImageDisc {
  float u = 0, v = 0, r = 0;
};
// Patch-grounding items per camera: the current goal's object, then its destination.
inline constexpr int kPatchTargetItems = 2;

// Item mentions of an instruction (the mention-grounding loss): per goal, in instruction order,
// the phrase naming its object, then the one naming its destination; at most two goals.
inline constexpr int kMaxMentions = 4;
// Colour words of an instruction kept for the colour-word loss (`long` names four).
inline constexpr int kMaxColourWords = 4;

// Per-patch attribute classes (the attribute loss): what the patch shows.
inline constexpr int kShapeClasses = 5;  // 0 nothing (table, gripper), 1 cube, 2 cylinder, 3 bowl,
                                         // 4 plate
inline constexpr int kColorClasses = 8;  // 0 nothing, 1 + sim::Color
// An object's top face or a plate as seen by one camera, with its attribute classes.
struct ItemDisc {
  ImageDisc disc;
  int shape = 0;        // [1, kShapeClasses)
  int color = 0;        // [1, kColorClasses)
  float height = 0.0f;  // world z of the disc (higher items hide lower ones)
};

// The current goal (the first unsatisfied one; the last once all hold) and its destination's
// centre in xy (*dest_x, *dest_y). Null when the task has no goals.
const sim::Goal* CurrentGoal(const sim::Episode& episode, double* dest_x, double* dest_y);

// Where the current goal's object and destination appear in both cameras at the episode's current
// state (RawSample::discs; the images are episode.options().image_size square). All r == 0 for a
// task without goals.
std::array<ImageDisc, 2 * kPatchTargetItems> TargetDiscs(const sim::Episode& episode);

// TargetDiscs of every goal of the episode, in instruction order (RawSample::named_discs).
std::vector<std::array<ImageDisc, 2 * kPatchTargetItems>> NamedDiscs(const sim::Episode& episode);

// Where object `object`'s top face appears in both cameras (0 main, 1 wrist; r == 0 when out of
// view or no such object), as TargetDiscs draws a goal's object.
std::array<ImageDisc, 2> ObjectDiscs(const sim::Episode& episode, int object);

// Every object's top face and every plate in both cameras (RawSample::items).
std::array<std::vector<ItemDisc>, 2> ItemDiscs(const sim::Episode& episode);

// Patch labels of one camera image: [patches, kPatchTargetItems] in {0, 1}, row-major patches of
// `patch` pixels over a `size` x `size` image; a patch is 1 when its square intersects the item's
// disc moved by (dx, dy) pixels. Discs with r == 0 label nothing.
torch::Tensor PatchLabels(const ImageDisc* discs, int size, int patch, int dx, int dy);

// Attribute classes per patch of one camera image: [patches, 2] int64 (shape, colour class),
// row-major patches of `patch` pixels over a `size` x `size` image. A patch takes the classes of
// the highest item whose disc, moved by (dx, dy) pixels, contains the patch centre; 0 (nothing)
// otherwise.
torch::Tensor PatchAttributes(const std::vector<ItemDisc>& items, int size, int patch, int dx,
                              int dy);

}  // namespace specprune
