// Synthetic robot scenes of specprune_loadgen (bench/loadgen_main.cc): deterministic camera
// frames, proprioception and instructions, so that every robot sends realistic, slowly changing
// inputs without a simulator or a data set.
//
// Thread safety: a Scene is immutable after construction (its methods are const and may run
// concurrently); Instruction is reentrant.
#pragma once

#include <cstdint>
#include <string>

#include "google/protobuf/repeated_field.h"

namespace specprune::loadgen {

// One robot episode's tabletop: a static background, table texture and objects,
// and a gripper that moves smoothly (about 1% of the image side per step) along
// a Lissajous path. The main camera sees the gripper move; the wrist camera
// sees the objects drift as the gripper moves. Deterministic in (seed, robot,
// episode, camera, step); a little per-pixel sensor noise too.
class Scene {
 public:
  // Frames are `size` x `size` pixels.
  Scene(uint64_t seed, int robot, int episode, int size);

  // Gripper position in image units ([0, 1]^2) and height in [0, 1] at `step`.
  void Gripper(uint64_t step, double* x, double* y, double* z) const;

  // Writes the HWC RGB frame of `camera` (0 = main, otherwise wrist) at `step` into `pixels`
  // (resized to size*size*3 bytes).
  void Render(int camera, uint64_t step, std::string* pixels) const;

  // Proprioceptive state (`dim` values replace *out): gripper xyz in metres, then slowly varying
  // joint-like values.
  void Proprio(uint64_t step, int dim, google::protobuf::RepeatedField<float>* out) const;

 private:
  static constexpr int kObjects = 3;
  struct Object {
    double x, y, half;
    uint8_t rgb[3];
  };
  int size_;
  uint64_t key_;
  int table_[3];
  Object objects_[kObjects];
  double phase_x_, phase_y_, freq_x_, freq_y_;
};

// The instruction robot `robot` sends in every episode, e.g. "put the red block on the plate".
std::string Instruction(uint64_t seed, int robot);

}  // namespace specprune::loadgen
