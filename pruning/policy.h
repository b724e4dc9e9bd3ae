// The interface the model calls per layer to prune vision tokens (docs/ARCHITECTURE.md
// "SpecPrune").
//
// For every sample of every forward pass the caller creates one SamplePruner. The model asks it,
// before each LLM layer runs, which attention statistics it needs from that layer, hands them over
// after the layer, and receives the vision tokens that go on. Samples of one batch have independent
// pruners and may keep different sets; the model repacks the batch (padding + key-padding mask) and
// keeps every token's original RoPE position. Only vision rows are ever removed.
//
// Thread safety: a SamplePruner is used by one forward pass on one thread at a time.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <optional>
#include <vector>

namespace specprune {

// Which query rows a layer's attention statistics are computed for.
enum class StatsRows {
  kNone,  // no statistics needed at this layer
  kText,  // the instruction (prompt) rows: SpecPrune's Score_l
  kLast,  // the last valid row of the sequence: FastV as published (its "last token")
  // The rows the action head reads (one before each action placeholder): FastV's generating
  // token for a parallel-decoding VLA, where the last row (EOS) produces no output.
  kActionReadout,
};

// Attention statistics of one layer for one sample, over the vision tokens currently present.
struct LayerAttentionStats {
  // [V_cur] float32 on CPU, row order of `vision_ids`: attention probability from the query rows
  // to each vision token, softmax over all keys, averaged over heads and query rows.
  torch::Tensor scores;
  // Mean over heads and query rows of the entropy (nats) of the attention restricted to the vision
  // columns and renormalized to sum to 1.
  double vision_entropy = 0.0;
};

// Coarse/fine decision of the velocity-aware controller.
enum class ControllerMode { kNone = 0, kCoarse = 1, kFine = 2 };

class SamplePruner {
 public:
  virtual ~SamplePruner() = default;

  // Statistics the model must compute during layer `layer` (0-based).
  virtual StatsRows StatsWanted(int layer) const = 0;

  // Called after layer `layer` has run. `vision_ids` are the original indices (0..P-1,
  // camera-major) of the vision rows present in this layer, in row order; `stats` is non-null iff
  // StatsWanted(layer) != kNone. Returns the original indices of the vision tokens that go on to
  // layer + 1 (a subset of vision_ids, any order), or nullopt to keep all of them.
  virtual std::optional<std::vector<int64_t>> AfterLayer(int layer,
                                                         const std::vector<int64_t>& vision_ids,
                                                         const LayerAttentionStats* stats) = 0;

  // A hint: whether AfterLayer(layer) is expected to remove a large share of the rows. Where it is,
  // the model decides before the layer's queries run, so the rows that go out skip the rest of that
  // layer (LayerKeys, model/llama.h), at the price of computing the statistics rows' attention
  // separately; the results are the same either way. A pruner that prunes where it did not say so
  // is still obeyed, after the whole layer.
  virtual bool MayPruneAfter(int layer) const { return false; }

  // Called once after the action head with this sample's normalized action chunk
  // [chunk, action_dim] (float32, CPU).
  virtual void Finish(const torch::Tensor& normalized_actions) {}

  virtual ControllerMode mode() const { return ControllerMode::kNone; }
  // True when the pass had no prior to use and fell back (SpecPrune's first step).
  virtual bool used_fallback() const { return false; }
  // True when the pass ran unpruned to rebuild SpecPrune's prior after a gripper release
  // (SpecPruneConfig::refresh_after_release).
  virtual bool refreshed_prior() const { return false; }
  // The vision tokens this pass kept because of the previous step's global attention (SpecPrune's
  // V_global, original ids); null for methods without a global prior. Read by the unpruned
  // reference comparison (pruning/reference_pass.h) for the prior's recall.
  virtual const std::vector<int64_t>* global_prior_set() const { return nullptr; }
};

}  // namespace specprune
