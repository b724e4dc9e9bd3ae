// The VLA (docs/ARCHITECTURE.md "The model"): vision towers -> projector -> Llama layers (with
// per-sample vision-token pruning through SamplePruner) -> L1-regression action head. Produces
// normalized actions; the caller un-normalizes with the dataset statistics.
//
// Sequence per sample: [BOS | vision (cameras x patches) | proprio | prompt | action placeholders
// (chunk x action_dim, zero embeddings) | EOS]; bidirectional attention with a key-padding mask;
// the action head reads the final-norm hidden state one row before each placeholder.
//
// Thread safety: Forward() may be called concurrently from several threads (parameters are only
// read); each call's SamplePruners must be distinct.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/action_head.h"
#include "model/config.h"
#include "model/llama.h"
#include "model/model_runner.h"
#include "model/vision.h"
#include "pruning/policy.h"

namespace specprune {

class Tokenizer;

struct ModelOptions {
  std::string device = "cpu";  // "cpu" or "cuda[:N]"
  std::string dtype = "fp32";  // "fp32", "bf16" or "auto" (weights and activations; ResolveDtype)
  uint64_t seed = 0;           // random init (before a checkpoint is loaded)
  // kRandom: seeded init, one layer at a time in fp32, converted to dtype on device, so the peak
  // is the model in dtype plus one fp32 layer. kRandomOnDevice: the same distributions drawn in
  // dtype on the device (other values; fast on a GPU). kUninitialized: parameters allocated in
  // dtype on device and left unset, for a checkpoint read next (LoadModelDir); see
  // model/layers.h.
  ParameterInit init = ParameterInit::kRandom;
  // Ragged batches (docs/ARCHITECTURE.md "SpecPrune", batching): after a repack, the LLM layers run
  // the samples in sub-batches of similar length when that saves more padded rows than this many
  // per extra sub-batch (GroupByLength, model/sequence_layout.h); it stands for one more
  // sub-batch's fixed cost per layer. Negative: one padded batch always.
  int64_t sub_batch_cost_rows = 64;
  // CPU bf16/fp16 only (oneDNN GEMMs; no effect in fp32 or on CUDA): the LLM layers run on their
  // rows padded with zero rows to GemmRowBucket (model/sequence_layout.h), at most 1/32 more, so
  // oneDNN compiles a bounded set of GEMM kernels instead of one per new pruned row count.
  bool bucket_gemm_rows = true;
  // At a layer after which some sample's pruner may remove rows (SamplePruner::MayPruneAfter), the
  // pruners decide between the layer's key/value projections and its queries, so the rows that go
  // out skip the rest of the layer (LayerKeys, model/llama.h). The same results; false runs every
  // layer whole and prunes its output (for comparisons).
  bool prune_before_queries = true;
};

// The module tree; parameter names equal the HF OpenVLA-OFT checkpoint names, with the action
// head under "action_head." and the proprio projector under "proprio_projector.".
struct VlaModuleImpl : torch::nn::Module {
  explicit VlaModuleImpl(const ModelConfig& c);
  VisionBackbone vision_backbone{nullptr};
  VisionProjector projector{nullptr};
  LanguageModel language_model{nullptr};
  L1RegressionActionHead action_head{nullptr};
  ProprioProjector proprio_projector{nullptr};
  InstructionFilm instruction_film{nullptr};  // only when config.instruction_film
};
TORCH_MODULE(VlaModule);

struct SampleInput {
  std::vector<torch::Tensor> images;  // per camera (config order): [3,S,S] float32 in [0,1]
  std::vector<int64_t> prompt_ids;    // prompt token ids, without BOS (see BuildPromptIds)
  torch::Tensor proprio;              // [proprio_dim] float32, normalized to [-1,1]
  SamplePruner* pruner = nullptr;     // not owned; null keeps every token
};

struct SampleResult {
  torch::Tensor normalized_actions;              // [chunk, action_dim] float32 on CPU
  std::vector<int32_t> vision_tokens_per_layer;  // vision tokens in each LLM layer's input
  int64_t total_vision_tokens = 0;
  double llm_flops = 0, llm_flops_unpruned = 0;  // analytic, this sample
  double other_flops = 0;                        // vision + projectors + action head
  double flops() const { return llm_flops + other_flops; }
  double flops_unpruned() const { return llm_flops_unpruned + other_flops; }
};

// Wall-clock seconds of one batch by stage.
struct ForwardTimings {
  double vision_seconds = 0;
  double llm_seconds = 0;
  double action_head_seconds = 0;
  // The pruners' own work: attention statistics for them, their selection and repacking the
  // batch (all inside llm_seconds), and their end-of-step bookkeeping (SamplePruner::Finish).
  // Exact on CPU; on CUDA the statistics count their launch time only.
  double pruning_seconds = 0;
  // Rows the LLM layers computed, padding included, summed over layers and sub-batches; the real
  // rows among them; the rows their GEMMs ran (llm_row_layers plus the bucket padding of
  // ModelOptions::bucket_gemm_rows); and the sub-batches the batch ended in (1 = never split).
  int64_t llm_row_layers = 0;
  int64_t llm_valid_row_layers = 0;
  int64_t llm_gemm_row_layers = 0;
  int64_t llm_sub_batches = 0;
  // Attention scores the LLM layers computed (samples x heads x query rows x key rows per
  // sub-batch, padding included, summed over layers; query rows = key rows = length except where
  // ModelOptions::prune_before_queries drops rows before the queries): the work of the attention's
  // matmuls and softmax, which grows with the square of a sample's rows where the GEMMs grow with
  // the rows.
  int64_t llm_attention_scores = 0;
  // Rows past the key/value projections (queries, o_proj, MLP), padding included: llm_row_layers
  // less the rows that ModelOptions::prune_before_queries dropped before a layer's queries.
  int64_t llm_query_row_layers = 0;
  // Wall-clock seconds of each LLM layer with its pruning work (inside llm_seconds; on CUDA the
  // host's time, without a synchronization per layer). Where a layer's cost goes, comparable
  // within one run whatever the machine's speed of the moment.
  std::vector<double> llm_layer_seconds;
};

class VlaModel : public ModelRunner {
 public:
  // Builds the model on options.device in options.dtype: randomly initialized (deterministic for a
  // seed) or, with ParameterInit::kUninitialized, with unset parameters that the caller must fill.
  static absl::StatusOr<std::unique_ptr<VlaModel>> Create(const ModelConfig& config,
                                                          const ModelOptions& options);

  // Runs one batch. Images must already be resized to config().image_size.
  absl::StatusOr<std::vector<SampleResult>> Forward(
      const std::vector<SampleInput>& batch, ForwardTimings* timings = nullptr) const override;

  const ModelConfig& config() const override { return config_; }
  std::string device_name() const override { return options_.device; }
  std::string dtype_name() const override { return options_.dtype; }
  const ModelOptions& options() const { return options_; }
  VlaModule& module() { return module_; }
  const VlaModule& module() const { return module_; }
  torch::Device device() const { return device_; }
  torch::ScalarType dtype() const { return dtype_; }
  int64_t parameter_count() const override;

 private:
  VlaModel(ModelConfig c, ModelOptions o, VlaModule m, torch::Device d, torch::ScalarType t)
      : config_(std::move(c)), options_(std::move(o)), module_(m), device_(d), dtype_(t) {}
  absl::StatusOr<std::vector<SampleResult>> ForwardImpl(const std::vector<SampleInput>& batch,
                                                        ForwardTimings* timings) const;

  ModelConfig config_;
  ModelOptions options_;
  VlaModule module_;
  torch::Device device_;
  torch::ScalarType dtype_;
};

// One sample's embedded LLM sequence [T_b, D] (model/sequence_layout.h): `vision` [P, D] projected
// vision tokens, passed through the instruction FiLM when the model has one; `proprio` [D] the
// projected proprio token. `llm_vision` (optional out): the vision rows as they enter the LLM.
// Used by the served forward and the training forward alike.
torch::Tensor EmbedSample(VlaModuleImpl& module, const ModelConfig& config,
                          const torch::Tensor& vision, const torch::Tensor& proprio,
                          const std::vector<int64_t>& prompt_ids,
                          torch::Tensor* llm_vision = nullptr);

// Prompt ids for an instruction: the config's template with the lower-cased instruction,
// tokenized without BOS, plus the config's suffix token.
std::vector<int64_t> BuildPromptIds(const ModelConfig& config, const Tokenizer& tokenizer,
                                    std::string_view instruction);

absl::StatusOr<torch::Device> ParseDevice(const std::string& device);
absl::StatusOr<torch::ScalarType> ParseDtype(const std::string& dtype);
// The --random_init value of the tools: "nn" -> kRandom, "device" -> kRandomOnDevice.
absl::StatusOr<ParameterInit> ParseRandomInit(const std::string& name);
// "auto" -> "bf16" on CUDA and on CPUs with AVX512-BF16 or AMX-BF16 (where bf16 runs the
// fidelity table within a point of fp32, docs/BENCHMARKS.md "bf16 on the CPU"), else "fp32";
// any other value is returned unchanged. VlaModel::Create resolves its options with it, so
// dtype_name() reports the dtype actually used.
std::string ResolveDtype(const std::string& dtype, const std::string& device);

}  // namespace specprune
