// Llama backbone (HF parameter names) with bidirectional attention, key-padding masks, original
// RoPE positions for ragged (pruned) sequences, and optional text->vision attention statistics.
#pragma once

#include <torch/torch.h>

#include <vector>

#include "model/config.h"
#include "model/layers.h"

namespace specprune {

struct RmsNormImpl : torch::nn::Module {
  RmsNormImpl(int64_t dim, double eps);
  torch::Tensor forward(const torch::Tensor& x);  // computed in fp32, cast back
  double eps;
  torch::Tensor weight;
};
TORCH_MODULE(RmsNorm);

// Rotary tables for positions [B, T]: cos/sin [B, 1, T, head_dim] (HF rotate-half layout).
struct Rope {
  torch::Tensor cos, sin;
};
Rope MakeRope(const torch::Tensor& positions, int64_t head_dim, double theta,
              torch::ScalarType dtype);
torch::Tensor ApplyRope(const torch::Tensor& x, const Rope& rope);  // x: [B, H, T, hd]
// The tables of rows `flat_rows` [B', T'] (int64 rows of `rope` flattened to [B * T], as
// RepackSamples returns them): equal to MakeRope of the gathered positions, without recomputing.
Rope GatherRope(const Rope& rope, const torch::Tensor& flat_rows);

// What a layer should compute besides its output: attention statistics of some query rows over
// the vision columns (see kernels/ops.h text_vision_attention_stats).
struct AttentionStatsQuery {
  torch::Tensor query_rows;   // [B, R] int64 row indices (padded with 0)
  torch::Tensor row_valid;    // [B, R] bool
  torch::Tensor vision_rows;  // [B, V] int64 row indices, -1 = padding
};
struct AttentionStatsResult {
  torch::Tensor scores;   // [B, V] float32
  torch::Tensor entropy;  // [B] float32
  double seconds = 0;     // wall time spent computing them (on CUDA: launch time only)
};

// scale * q.k^T + bias for q [B,H,T,hd], k [B,H,S,hd], bias [B,1,1,S]: [B,H,T,S], as one batched
// GEMM that accumulates onto the bias (rounded once). The LibTorch 1.x attention's logits: in bf16
// on the CPU, separate multiply and broadcast-add passes over the scores cost more than the GEMM.
torch::Tensor AttentionLogits(const torch::Tensor& q, const torch::Tensor& k,
                              const torch::Tensor& bias, double scale);

// One padded sub-batch of a packed layer call (LlamaDecoderLayerImpl::ForwardPacked): `batch` x
// `length` consecutive rows of the packed input, which attend only among themselves. The pointed-to
// tables must outlive the call.
struct AttentionSegment {
  int64_t batch = 0;
  int64_t length = 0;
  const Rope* rope = nullptr;                  // [batch, 1, length, head_dim]
  torch::Tensor bias;                          // [batch, 1, 1, length] additive key mask
  torch::Tensor key_valid;                     // [batch, length] bool
  const AttentionStatsQuery* query = nullptr;  // optional statistics, as in forward()
  AttentionStatsResult* stats = nullptr;       // filled when `query` is set
  int64_t rows() const { return batch * length; }
};

// A layer after which pruners remove rows runs in two halves (LlamaDecoderLayerImpl::ForwardKeys,
// then ForwardQueries), so the removed rows skip everything past the key/value projections: their
// queries, o_proj, MLP and residuals would only produce outputs the pruning discards. The rows that
// go on still attend to every row of their sample, so their outputs equal the whole layer's (up to
// the BLAS's rounding for other row counts). What the first half leaves for the second:
struct LayerKeys {
  torch::Tensor x;                  // [P, D] the layer's input (the residuals)
  torch::Tensor q;                  // [P, heads * head_dim] every input row's query, before RoPE
  std::vector<torch::Tensor> k, v;  // per input segment [batch, heads, length, head_dim], k roped
  // Per input segment: the attention output (before o_proj) of its statistics query's rows,
  // [batch, R, heads * head_dim] (row r of sample b is query_rows[b][r]), computed with their
  // statistics from the same softmax; undefined for a segment without statistics. The second half
  // copies these rows instead of attending them again (QuerySegment::reused_rows).
  std::vector<torch::Tensor> stats_output;
};

// One sub-batch of the rows that go on, for the second half: `batch` x `length` query rows,
// consecutive in the output, each attending to every row of its sample in input segment
// `key_segment`. The pointed-to table must outlive the call.
struct QuerySegment {
  int64_t batch = 0;
  int64_t length = 0;
  const Rope* rope = nullptr;  // [batch, 1, length, head_dim] tables of the query rows
  torch::Tensor source_rows;   // [batch * length] int64: each query row's row of the input [P, D]
  int64_t key_segment = 0;     // index into the first half's segments
  torch::Tensor key_samples;   // [batch] int64 samples of that segment, in order; undefined = all
  // Optional, where the first half already attended some of these rows (LayerKeys::stats_output
  // of `key_segment`): the positions in [0, length) of each sample's rows to attend, [batch, L]
  // int64 (a sample with fewer repeats one of its own, whose output is the same), and the reused
  // rows: reused_rows [K] int64 in [0, rows()) take row reused_sources [K] int64 of that segment's
  // stats_output flattened to [segment batch * R]. Rows in neither get a zero attention output
  // (padding). Undefined attend_positions: every row is attended.
  torch::Tensor attend_positions;
  torch::Tensor reused_rows;
  torch::Tensor reused_sources;
  int64_t rows() const { return batch * length; }
};

struct LlamaAttentionImpl : torch::nn::Module {
  explicit LlamaAttentionImpl(const LlmConfig& c);
  // x: [B,T,D]; bias: [B,1,1,T] additive key mask (0 / -inf); key_valid: [B,T] bool.
  torch::Tensor forward(const torch::Tensor& x, const Rope& rope, const torch::Tensor& bias,
                        const torch::Tensor& key_valid, const AttentionStatsQuery* query,
                        AttentionStatsResult* stats);
  // x: [P,D], the rows of `segments` back to back (R = sum of their rows() <= P), then P - R
  // padding rows (zero) that only the projections see. The projections run once over all P rows,
  // the attention once per segment; returns [P,D], zero in the padding rows. Inference only
  // (writes the segments' outputs into one buffer in place).
  torch::Tensor ForwardPacked(const torch::Tensor& x,
                              const std::vector<AttentionSegment>& segments);
  // The first half (see LayerKeys) over `segments` as ForwardPacked: the projections of all P rows
  // of xn, RoPE on the keys, and for each segment with a statistics `query` its query rows'
  // attention: the statistics (into `stats`, whose seconds count their extraction only) from the
  // same logits and softmax as forward() computes them, and the rows' outputs (stats_output).
  // Returns `x` undefined.
  LayerKeys ForwardKeys(const torch::Tensor& xn, const std::vector<AttentionSegment>& segments);
  // The second half: the attention of `queries` over their samples' keys (or the first half's
  // output for their reused rows), then o_proj; returns [padded_rows, D], the queries' rows back
  // to back, zero after them (padded_rows >= their sum). Of `segments` (the first half's) only the
  // key biases are read.
  torch::Tensor ForwardQueries(const LayerKeys& keys, const std::vector<AttentionSegment>& segments,
                               const std::vector<QuerySegment>& queries, int64_t padded_rows);
  int64_t heads, head_dim;
  Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};

 private:
  // ForwardQueries of one segment with attend_positions, into its rows of the output `out`.
  void AttendSomeRows(const LayerKeys& keys, const QuerySegment& qs, const torch::Tensor& k,
                      const torch::Tensor& v, const torch::Tensor& bias, torch::Tensor& out) const;
};
TORCH_MODULE(LlamaAttention);

struct LlamaMlpImpl : torch::nn::Module {
  explicit LlamaMlpImpl(const LlmConfig& c);
  torch::Tensor forward(const torch::Tensor& x);  // SwiGLU
  Linear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
};
TORCH_MODULE(LlamaMlp);

struct LlamaDecoderLayerImpl : torch::nn::Module {
  explicit LlamaDecoderLayerImpl(const LlmConfig& c);
  torch::Tensor forward(const torch::Tensor& x, const Rope& rope, const torch::Tensor& bias,
                        const torch::Tensor& key_valid, const AttentionStatsQuery* query,
                        AttentionStatsResult* stats);
  // The layer over several padded sub-batches packed back to back ([P,D], see
  // LlamaAttentionImpl::ForwardPacked): every per-row operation (norms, projections, MLP,
  // residuals) is one call over all P rows, so a batch split by length costs extra calls only in
  // the attention. Zero padding rows stay zero (the layer has no biases). Each row's result
  // equals forward() on its own sub-batch up to the BLAS's rounding for a different row count.
  torch::Tensor ForwardPacked(const torch::Tensor& x,
                              const std::vector<AttentionSegment>& segments);
  // The layer in two halves (LayerKeys): ForwardKeys runs the input norm and the attention's first
  // half over x [P, D] (packed as for ForwardPacked); the caller reads the statistics, decides
  // which rows go on, and ForwardQueries computes the layer's output for those rows only:
  // [padded_rows, D], `queries`' rows back to back, zero after them. Each row equals
  // ForwardPacked's for the same row up to the BLAS's rounding. Inference only.
  LayerKeys ForwardKeys(const torch::Tensor& x, const std::vector<AttentionSegment>& segments);
  torch::Tensor ForwardQueries(const LayerKeys& keys, const std::vector<AttentionSegment>& segments,
                               const std::vector<QuerySegment>& queries, int64_t padded_rows);
  LlamaAttention self_attn{nullptr};
  LlamaMlp mlp{nullptr};
  RmsNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
};
TORCH_MODULE(LlamaDecoderLayer);

// language_model.model.*
struct LlamaModelImpl : torch::nn::Module {
  explicit LlamaModelImpl(const LlmConfig& c);
  Embedding embed_tokens{nullptr};
  torch::nn::ModuleList layers{nullptr};
  RmsNorm norm{nullptr};
  std::vector<LlamaDecoderLayer> layer_list;
};
TORCH_MODULE(LlamaModel);

// language_model.*
struct LanguageModelImpl : torch::nn::Module {
  explicit LanguageModelImpl(const LlmConfig& c);
  LlamaModel model{nullptr};
};
TORCH_MODULE(LanguageModel);

// Additive attention bias [B,1,1,T] from a key validity mask [B,T].
torch::Tensor KeyPaddingBias(const torch::Tensor& key_valid, torch::ScalarType dtype);

}  // namespace specprune
