// The LLM layers of one VlaModel::Forward over a batch that pruning makes ragged (docs/
// ARCHITECTURE.md "SpecPrune"): per layer, the pruners' statistics queries, the layer (whole, or in
// two halves where a pruner may remove rows: ModelOptions::prune_before_queries), the pruners'
// decisions and the repacks into sub-batches of similar length.
//
// Thread safety: one LlmPass per forward; it only reads the module's parameters.
#pragma once

#include <torch/torch.h>

#include <chrono>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "model/llama.h"
#include "model/sequence_layout.h"
#include "model/vla_model.h"
#include "pruning/policy.h"

namespace specprune {

// The statistics query rows of one sample: rows [first, first + count) of its layout, which had
// `vision` vision rows (rows 1..vision).
struct StatsRowSpan {
  int64_t first = 0;
  int64_t count = 0;
  int64_t vision = 0;
};

// One sub-batch of the LLM layers: samples of similar length, padded together. `samples` index the
// forward's batch; row i of `rb` (and of `rope`, `bias`) is sample samples[i].
struct SubBatch {
  std::vector<int64_t> samples;
  RaggedBatch rb;
  Rope rope;
  torch::Tensor bias;
  // Set by a repack: each row's row in the sub-batch it was cut from, flattened ([n, T] int64, as
  // RepackedBatch::flat_rows), and which of that sub-batch's samples it holds (empty: all, in
  // order). Undefined: the rows are the previous layout's.
  torch::Tensor source_rows;
  std::vector<int64_t> source_samples;
};

// The LLM layers of one forward over a batch that pruning makes ragged. When a repack makes a
// sub-batch's lengths diverge (a prior refresh beside pruned samples, different retained counts),
// it is split by GroupByLength so short samples stop paying for the padding of long ones. Several
// sub-batches run each layer packed back to back (LlamaDecoderLayerImpl::ForwardPacked): one call
// per per-row operation, the attention per sub-batch. At a layer after which some pruner may remove
// rows (SamplePruner::MayPruneAfter, ModelOptions::prune_before_queries) the pruners decide between
// the layer's two halves (LayerKeys, model/llama.h), so removed rows skip the rest of the layer.
// The caller owns `lm`, `batch` and `results`, which must outlive the pass.
class LlmPass {
 public:
  LlmPass(LlamaModelImpl& lm, const std::vector<SampleInput>& batch,
          std::vector<SampleResult>& results, torch::Device device, torch::ScalarType dtype,
          const ModelOptions& options)
      : tokens_per_layer(batch.size()),
        lm_(lm),
        batch_(batch),
        results_(results),
        device_(device),
        dtype_(dtype),
        sub_batch_cost_rows_(options.sub_batch_cost_rows),
        bucket_rows_(options.bucket_gemm_rows && device.is_cpu() && dtype != torch::kFloat32),
        prune_before_queries_(options.prune_before_queries) {}

  // Runs layer `l` on `subs`, asks the pruners which vision tokens go on, and returns the
  // sub-batches the samples continue in.
  absl::StatusOr<std::vector<SubBatch>> RunLayer(int64_t l, std::vector<SubBatch> subs);

  double pruning_seconds = 0;
  int64_t row_layers = 0;                              // rows run, padding included
  int64_t valid_row_layers = 0;                        // real rows among them
  int64_t gemm_row_layers = 0;                         // rows the GEMMs ran, bucket padding too
  int64_t attention_scores = 0;                        // samples x heads x query x key rows
  int64_t query_row_layers = 0;                        // rows past the key/value projections
  std::vector<double> layer_seconds;                   // per layer (ForwardTimings)
  std::vector<std::vector<int64_t>> tokens_per_layer;  // per sample

 private:
  // What one sub-batch asks of a layer besides its output.
  struct LayerQuery {
    std::vector<StatsRows> wanted;  // per sample of the sub-batch
    bool any_stats = false;
    AttentionStatsQuery query;
    std::vector<StatsRowSpan> spans;  // per sample, when any_stats: query's rows on the host
    AttentionStatsResult stats;
  };

  SamplePruner* pruner(const SubBatch& sub, int64_t i) const {
    return batch_[sub.samples[i]].pruner;
  }
  // The pruners' statistics query for layer `l` over `sub` (its time counts in pruning_seconds),
  // and the per-layer bookkeeping every forward does (tokens per layer, row counts).
  LayerQuery PrepareLayer(int64_t l, const SubBatch& sub);
  std::vector<AttentionSegment> Segments(const std::vector<SubBatch>& subs,
                                         std::vector<LayerQuery>& queries) const;
  // Layer `l` over every sub-batch; replaces each sub-batch's hidden state by the layer's output.
  void Forward(int64_t l, std::vector<SubBatch>& subs, std::vector<LayerQuery>& queries);
  // Layer `l` whole over `subs`, then the pruners' decisions on its output and the repacks.
  absl::StatusOr<std::vector<SubBatch>> RunWholeLayer(int64_t l, std::vector<SubBatch> subs,
                                                      std::vector<LayerQuery>& queries);
  // Whether layer `l` runs in two halves (ModelOptions::prune_before_queries).
  bool SplitsAt(int64_t l, const std::vector<SubBatch>& subs) const;
  // Layer `l` in two halves: the key side over `subs`, the pruners' decisions, the query side
  // over the rows that go on. Returns the sub-batches they continue in, holding the layer's output.
  absl::StatusOr<std::vector<SubBatch>> RunSplitLayer(int64_t l, std::vector<SubBatch> subs,
                                                      std::vector<LayerQuery>& queries);
  // Sets qs's attend_positions and reused rows where the split layer's first half already attended
  // rows of `sub` (q's statistics rows, which pruning never removes): `sub` is cut by a repack
  // from the sub-batch of `q`. Returns the rows left to attend, padding included (qs->rows() when
  // nothing is reused). Not called for a sub-batch that kept every row: that one attends all of
  // them, the whole layer's attention bit for bit.
  int64_t ReuseStatsRows(const LayerQuery& q, const SubBatch& sub, QuerySegment* qs) const;
  // The rows of `subs`, back to back, then zero rows up to `padded_rows` [padded_rows, D]: the
  // previous layer's packed output when no repack moved them since, else one copy.
  torch::Tensor PackedInput(const std::vector<SubBatch>& subs, int64_t padded_rows) const;
  absl::Status Prune(int64_t l, SubBatch sub, const LayerQuery& q, std::vector<SubBatch>* next);
  void Repack(SubBatch sub, const std::vector<std::vector<int64_t>>& keep_rows,
              std::vector<SubBatch>* next) const;

  LlamaModelImpl& lm_;
  const std::vector<SampleInput>& batch_;
  std::vector<SampleResult>& results_;
  const torch::Device device_;
  const torch::ScalarType dtype_;
  const int64_t sub_batch_cost_rows_;
  const bool bucket_rows_;  // pad the GEMMs' rows to GemmRowBucket
  const bool prune_before_queries_;
  torch::Tensor packed_output_;  // the last packed layer's output [P, D]; sub-batches view it
};

}  // namespace specprune
