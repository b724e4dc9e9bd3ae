// The ragged LLM batch of the VLA (docs/ARCHITECTURE.md "The model"), written once for the served
// forward (VlaModel::Forward, which prunes) and the training forward (tools/training_forward.h
// TrainingForward).
//
// Rows of one sample, in order: BOS | vision (cameras x patches, possibly pruned) | proprio |
// prompt | action placeholders (chunk x action_dim, zero embeddings) | EOS. Samples are padded to
// the longest; `valid` marks real rows; `positions` keep every row's original position (RoPE), so
// a pruned row leaves a gap instead of shifting the rows after it. The action head reads the
// final-norm hidden state one row before each placeholder (OpenVLA-OFT's convention).
//
// Thread safety: plain values; the functions only read the module's parameters.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <vector>

#include "model/llama.h"

namespace specprune {

// Row bookkeeping of one sample.
struct SampleRows {
  // Every vision token present (ids 0..vision_tokens-1): the layout before any pruning.
  static SampleRows Unpruned(int64_t vision_tokens, int64_t prompt_len, int64_t action_tokens);

  std::vector<int64_t> vision_ids;  // original vision index of each vision row, ascending
  int64_t prompt_len = 0;
  int64_t action_tokens = 0;
  int64_t length() const {
    return 1 + static_cast<int64_t>(vision_ids.size()) + 1 + prompt_len + action_tokens + 1;
  }
  int64_t vision_begin() const { return 1; }
  int64_t prompt_begin() const { return 2 + static_cast<int64_t>(vision_ids.size()); }
  int64_t actions_begin() const { return prompt_begin() + prompt_len; }
  // The first row the action head reads (one before the first placeholder).
  int64_t readout_begin() const { return actions_begin() - 1; }
};

// The padded batch the LLM layers run on.
struct RaggedBatch {
  std::vector<SampleRows> rows;  // per sample
  torch::Tensor hidden;          // [B, T, D] (T = longest sample), zero in padding
  torch::Tensor positions;       // [B, T] int64 original positions, 0 in padding
  torch::Tensor valid;           // [B, T] bool, true for real rows
  int64_t max_length() const { return hidden.size(1); }
};

// One sample's embedded sequence [T_b, D]. `vision` [P, D] are the projected vision tokens (after
// the optional instruction FiLM), `proprio` [D] the projected proprio token; `prompt` [m + 2, D]
// the embeddings of BOS, the prompt ids and EOS. The placeholders are zeros of vision's dtype.
torch::Tensor SampleSequence(const torch::Tensor& vision, const torch::Tensor& proprio,
                             const torch::Tensor& prompt, int64_t action_tokens);

// Pads the per-sample sequences (SampleSequence) into a batch on `device`.
RaggedBatch AssembleBatch(const std::vector<torch::Tensor>& sequences, std::vector<SampleRows> rows,
                          const torch::Device& device);

// [B, T] bool on `device`: row t of sample b is real (t < rows[b].length()).
torch::Tensor ValidRows(const std::vector<SampleRows>& rows, int64_t max_length,
                        const torch::Device& device);

// A repacked batch and where each of its rows came from.
struct RepackedBatch {
  RaggedBatch batch;
  // [n, T_new] int64 on the batch's device: for each new row, its row in the old batch flattened
  // to [B * T_old] rows (padding repeats the sample's row 0). Gathers per-row tables alike
  // (GatherRope).
  torch::Tensor flat_rows;
};

// Removes pruned rows and takes samples apart: sample i of the result is sample `samples[i]` of
// `batch` (any order), keeping its rows `keep_rows[i]` (ascending, in the layout *before* the
// update; empty = unchanged). `batch.rows` must already describe the layout after the update.
// Trimmed to the longest result sample; hidden, positions and valid come from one compact_rows
// (kernels/ops.h: whole rows of the flattened batch, one kernel on CUDA) after one host-to-device
// copy of the row table.
RepackedBatch RepackSamples(const RaggedBatch& batch, const std::vector<int64_t>& samples,
                            const std::vector<std::vector<int64_t>>& keep_rows);

// RepackSamples of every sample in order, in place; returns its flat_rows.
torch::Tensor RepackBatch(const std::vector<std::vector<int64_t>>& keep_rows, RaggedBatch* batch);

// Partitions samples of these lengths into sub-batches that are cheap to run padded: the partition
// (of indices into `lengths`) that minimises the padded rows, sum over sub-batches of size x
// longest, plus `sub_batch_cost_rows` per sub-batch (the fixed cost of one more sub-batch through a
// layer, in rows). Sub-batches are ordered longest first, indices ascending within each. A
// negative cost, or fewer than two samples, gives one sub-batch of every sample. Exact (dynamic
// programming over the samples sorted by length, O(n^2)); deterministic for equal lengths.
std::vector<std::vector<int64_t>> GroupByLength(const std::vector<int64_t>& lengths,
                                                int64_t sub_batch_cost_rows);

// The row count the LLM's GEMMs run on when row counts are bucketed (ModelOptions::
// bucket_gemm_rows): `rows` rounded up to a multiple of 2^(floor(log2(rows)) - 5) (unchanged up
// to 63 rows), so at most 1/32 more rows and at most 32 distinct counts per octave. Why: LibTorch's
// CPU bf16/fp16 matmuls run oneDNN, which JIT-compiles a kernel for every new GEMM shape
// (util/onednn_cache.h), and pruned batches change the row count from pass to pass.
int64_t GemmRowBucket(int64_t rows);

// [B, action_tokens] int64 on `device`: the rows the action head reads per sample.
torch::Tensor ReadoutRows(const std::vector<SampleRows>& rows, const torch::Device& device);

// [B, M] int64 prompt rows per sample (M = longest prompt, at least 1; zero-padded) and their
// validity [B, M] float (1 real, 0 padding), both on `device`.
std::pair<torch::Tensor, torch::Tensor> PromptRows(const std::vector<SampleRows>& rows,
                                                   const torch::Device& device);

}  // namespace specprune
