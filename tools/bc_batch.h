// Model-ready training batches from raw demonstration samples: images (with shift augmentation),
// normalized proprio and actions, grounding targets and patch labels, and the prompt rows of the
// instruction's item mentions and colour words (docs/ARCHITECTURE.md "Simulator and evaluation",
// issue #6).
//
// Thread safety: free functions, reentrant.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <random>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "image/image_codec.h"
#include "model/dataset_stats.h"
#include "model/vla_model.h"
#include "policy/policy_step.h"
#include "tools/demonstrations.h"

namespace specprune {

class Tokenizer;

// Translates an image by (dx, dy) pixels with edge replication (shift
// augmentation).
RgbImage ShiftImage(const RgbImage& image, int dx, int dy);

// Model-ready batch.
struct BcBatch {
  torch::Tensor pixels;   // [B, cams, 3, S, S] float32 in [0, 1]
  torch::Tensor proprio;  // [B, proprio_dim] normalized
  torch::Tensor actions;  // [B, chunk, action_dim] normalized targets
  torch::Tensor aux;      // [B, kAuxTargetDim] grounding targets (RawSample::aux)
  // [B, vision tokens, kPatchTargetItems] in {0, 1}: the patch (in the model's vision-token order:
  // camera-major, row-major patches) overlaps the item's disc after the batch's shift augmentation.
  torch::Tensor patch_labels;
  // The same for the items every goal of the instruction names (the union over
  // RawSample::named_discs): equal to patch_labels for one-goal instructions.
  torch::Tensor named_labels;
  // [B, vision tokens, 2] int64: shape and colour class of what each patch shows (PatchAttributes,
  // after the shift augmentation).
  torch::Tensor patch_attributes;
  // [B, kMaxMentions] int64: the prompt row (index into prompt_ids[b]) of the token that ends
  // mention j (MentionRows), -1 when absent; [B, vision tokens, kMaxMentions] {0, 1}: the patches
  // of the item mention j names (RawSample::named_discs[j / 2], item j % 2, after the shift).
  torch::Tensor mention_rows;
  torch::Tensor mention_labels;
  // [B, kMaxColourWords] int64: the prompt row of each colour word of the instruction
  // (ColourWordRows, in order; -1 when absent) and its colour class (1 + sim::Color, as in
  // patch_attributes; 0 when absent).
  torch::Tensor colour_rows;
  torch::Tensor colour_classes;
  std::vector<std::vector<int64_t>> prompt_ids;
};

// The prompt rows (indices into BuildPromptIds(config, tokenizer, instruction)) of the tokens
// that end each item mention of `instruction`, in order: a shape word ("cube", "cylinder",
// "bowl"), "plate", or a position ("left", "right", "front", "back"), which ends the phrase of
// the shape word three words before it ("the red cube on the left"). This is where a causal LLM
// has read the whole phrase, colour word included. Empty when the count is not `expected`
// (e.g. an instruction from outside the simulator's templates).
std::vector<int64_t> MentionRows(const ModelConfig& config, const Tokenizer& tokenizer,
                                 std::string_view instruction, int expected);

// The prompt row of the token that ends each colour word of `instruction` ("red", ..., "white"),
// in order, with its colour class (1 + sim::Color). Empty when there is none.
std::vector<std::pair<int64_t, int>> ColourWordRows(const ModelConfig& config,
                                                    const Tokenizer& tokenizer,
                                                    std::string_view instruction);

// Converts raw samples (optionally shifting each camera image by up to
// +-max_shift pixels using `rng`). InvalidArgument when shapes disagree with
// the config.
absl::StatusOr<BcBatch> MakeBatch(const std::vector<RawSample>& samples, const ModelConfig& config,
                                  const Tokenizer& tokenizer, const DatasetStats& stats,
                                  int max_shift, std::mt19937_64* rng);

}  // namespace specprune
