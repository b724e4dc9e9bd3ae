// specprune_reference_dump: loads a model directory with our loader, runs the unpruned forward on
// the inputs of a safetensors file and writes what the model computes along the way, for the
// reference check against code nobody here wrote (tools/reference_check.py, issue #28 item 6).
//
//   specprune_reference_dump --model_dir D --inputs in.safetensors --out out.safetensors
//                            [--device cpu|cuda] [--dtype fp32|bf16] [--tf32]
//   specprune_reference_dump --model_dir D --print_config
//
// Inputs (one batch of B samples, C = the config's cameras, S = image_size):
//   images          F32 [B, C, 3, S, S]  RGB in [0, 1], already resized (VlaModel::Forward's input)
//   prompt_ids      I64 [B, M]           prompt token ids without BOS (BuildPromptIds' output);
//                                        row b uses its first prompt_lengths[b] entries
//   prompt_lengths  I64 [B]              in [0, M]
//   proprio         F32 [B, proprio_dim] normalized proprio state
// Every value must be finite, images in [0, 1], ids in [0, vocab_size); a violation is an error
// naming the tensor (exit 1).
//
// Outputs (F32 unless noted; T = the longest sample, rows past a sample's length are padding):
//   vision.tower.<name>    [B*C, P, W_t]  a tower's patch features (its slice of vision.fused)
//   vision.fused           [B*C, P, W]    VisionBackbone output (towers concatenated per patch)
//   vision.projected       [B, C*P, D]    projector output
//   proprio.projected      [B, D]         proprio projector output
//   llm.inputs_embeds      [B, T, D]      the embedded sequence (model/sequence_layout.h)
//   llm.layers.<l>.output  [B, T, D]      residual stream after decoder layer l (before the norm)
//   llm.last_hidden_state  [B, T, D]      after the final RMSNorm
//   llm.lengths            I64 [B]        valid rows per sample
//   action_head.input      [B, A, D]      the final-norm hidden states the action head reads
//   actions                [B, chunk, action_dim]  normalized actions of VlaModel::Forward (the
//                                         served path, no pruner)
//   replica.actions        [B, chunk, action_dim]  the same from the stage-by-stage replica above
//   replica.max_abs_diff   [1]            max |actions - replica.actions|: shows that the
//                                         intermediates are the ones the served forward computes
// The header's __metadata__ records device, dtype, config name, LibTorch version and TF32.
//
// The intermediates come from the model's public modules and model/sequence_layout.h, in
// VlaModel::Forward's order and casts; nothing in model/ is changed for this tool.
// --tf32 allows TF32 matmuls/convolutions on CUDA; off by default so fp32 means fp32.
#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "model/checkpoint.h"
#include "model/safetensors.h"
#include "model/sequence_layout.h"
#include "model/vla_model.h"
#include "nlohmann/json.hpp"
#include "util/command_line.h"
#include "util/status_macros.h"

ABSL_FLAG(std::string, model_dir, "", "model directory (config.json + safetensors; required)");
ABSL_FLAG(std::string, inputs, "",
          "safetensors file with images, prompt_ids, prompt_lengths, "
          "proprio (required unless --print_config)");
ABSL_FLAG(std::string, out, "", "output safetensors file (required unless --print_config)");
ABSL_FLAG(std::string, device, "cpu", "cpu or cuda[:N]");
ABSL_FLAG(std::string, dtype, "fp32", "fp32 or bf16 (weights and activations)");
ABSL_FLAG(bool, tf32, false, "allow TF32 matmuls and convolutions on CUDA");
ABSL_FLAG(bool, print_config, false,
          "print the model config that config.json resolves to (JSON) and exit; reads no weights");

namespace specprune {
namespace {

constexpr char kUsage[] =
    "usage: specprune_reference_dump --model_dir D --inputs in.safetensors --out out.safetensors "
    "[--device cpu|cuda] [--dtype fp32|bf16]\n"
    "Runs the unpruned forward and writes vision features, LLM hidden states and actions "
    "(tools/reference_check.py compares them with transformers/timm).";

struct Inputs {
  torch::Tensor images;                          // [B, C, 3, S, S] float32
  std::vector<std::vector<int64_t>> prompt_ids;  // per sample
  torch::Tensor proprio;                         // [B, proprio_dim] float32
  int64_t batch() const { return images.size(0); }
};

std::string Shape(const std::vector<int64_t>& s) {
  return absl::StrCat("[", absl::StrJoin(s, ", "), "]");
}

// The tensor `name` of `file` as a CPU tensor of `dtype` with `rank` dimensions (copied: the
// mapped bytes need not be aligned). Errors name the tensor.
absl::StatusOr<torch::Tensor> ReadTensor(const SafetensorsFile& file, const std::string& name,
                                         DType dtype, size_t rank) {
  const std::string where = absl::StrCat("inputs ", file.path(), ": tensor \"", name, "\"");
  const TensorView* v = file.Find(name);
  if (v == nullptr) return absl::InvalidArgumentError(absl::StrCat(where, " is missing"));
  if (v->dtype != dtype)
    return absl::InvalidArgumentError(absl::StrCat(where, " has dtype ",
                                                   std::string(DTypeName(v->dtype)), ", expected ",
                                                   std::string(DTypeName(dtype))));
  if (v->shape.size() != rank)
    return absl::InvalidArgumentError(
        absl::StrCat(where, " has shape ", Shape(v->shape), ", expected ", rank, " dimensions"));
  auto t = torch::empty(v->shape, dtype == DType::kI64 ? torch::kLong : torch::kFloat32);
  if (v->nbytes > 0) std::memcpy(t.data_ptr(), v->data, v->nbytes);
  return t;
}

absl::Status ExpectDims(const torch::Tensor& t, const std::string& file, const std::string& name,
                        const std::vector<int64_t>& want) {
  if (t.sizes().vec() == want) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("inputs ", file, ": tensor \"", name,
                                                 "\" has shape ", Shape(t.sizes().vec()),
                                                 ", expected ", Shape(want)));
}

absl::Status ExpectFinite(const torch::Tensor& t, const std::string& file,
                          const std::string& name) {
  auto bad = torch::logical_not(torch::isfinite(t));
  if (!bad.any().item<bool>()) return absl::OkStatus();
  const int64_t first = bad.reshape({-1}).nonzero()[0].item<int64_t>();
  return absl::InvalidArgumentError(absl::StrCat("inputs ", file, ": tensor \"", name,
                                                 "\" has a non-finite value (NaN or inf) at flat "
                                                 "index ",
                                                 first));
}

absl::StatusOr<Inputs> ReadInputs(const std::string& path, const ModelConfig& c) {
  SP_ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(path));
  Inputs in;
  SP_ASSIGN_OR_RETURN(in.images, ReadTensor(*file, "images", DType::kF32, 5));
  const int64_t b = in.images.size(0);
  const int64_t cams = static_cast<int64_t>(c.cameras.size());
  if (b < 1)
    return absl::InvalidArgumentError(
        absl::StrCat("inputs ", path, ": tensor \"images\" holds no sample (batch 0)"));
  SP_RETURN_IF_ERROR(
      ExpectDims(in.images, path, "images", {b, cams, 3, c.image_size, c.image_size}));
  SP_RETURN_IF_ERROR(ExpectFinite(in.images, path, "images"));
  if (in.images.min().item<float>() < 0.0f || in.images.max().item<float>() > 1.0f)
    return absl::InvalidArgumentError(
        absl::StrCat("inputs ", path,
                     ": tensor \"images\" has values outside "
                     "[0, 1] (the model takes RGB scaled to [0, 1])"));

  SP_ASSIGN_OR_RETURN(auto ids, ReadTensor(*file, "prompt_ids", DType::kI64, 2));
  SP_ASSIGN_OR_RETURN(auto lengths, ReadTensor(*file, "prompt_lengths", DType::kI64, 1));
  if (ids.size(0) != b)
    return absl::InvalidArgumentError(absl::StrCat("inputs ", path, ": tensor \"prompt_ids\" has ",
                                                   ids.size(0), " rows, images has ", b,
                                                   " samples"));
  SP_RETURN_IF_ERROR(ExpectDims(lengths, path, "prompt_lengths", {b}));
  const int64_t m = ids.size(1);
  for (int64_t s = 0; s < b; ++s) {
    const int64_t len = lengths[s].item<int64_t>();
    if (len < 0 || len > m)
      return absl::InvalidArgumentError(absl::StrCat("inputs ", path,
                                                     ": tensor \"prompt_lengths\"[", s, "] = ", len,
                                                     " is outside [0, ", m, "]"));
    std::vector<int64_t> row;
    for (int64_t j = 0; j < len; ++j) {
      const int64_t id = ids[s][j].item<int64_t>();
      if (id < 0 || id >= c.llm.vocab_size)
        return absl::InvalidArgumentError(
            absl::StrCat("inputs ", path, ": tensor \"prompt_ids\"[", s, ", ", j, "] = ", id,
                         " is not a token id < vocab_size ", c.llm.vocab_size));
      row.push_back(id);
    }
    in.prompt_ids.push_back(std::move(row));
  }

  SP_ASSIGN_OR_RETURN(in.proprio, ReadTensor(*file, "proprio", DType::kF32, 2));
  SP_RETURN_IF_ERROR(ExpectDims(in.proprio, path, "proprio", {b, c.proprio_dim}));
  SP_RETURN_IF_ERROR(ExpectFinite(in.proprio, path, "proprio"));
  return in;
}

using Named = std::vector<std::pair<std::string, torch::Tensor>>;

// The forward of VlaModel::ForwardImpl without pruners, one stage at a time, keeping what each
// stage produced. Returns the replica's actions [B, chunk, action_dim].
torch::Tensor RunReplica(VlaModel& model, const Inputs& in, Named* out) {
  c10::InferenceMode guard;
  const ModelConfig& c = model.config();
  const torch::Device device = model.device();
  const torch::ScalarType dtype = model.dtype();
  const auto opts = torch::TensorOptions().device(device).dtype(dtype);
  const int64_t bsz = in.batch();
  const int64_t cams = static_cast<int64_t>(c.cameras.size());
  const int64_t p = c.vision_tokens();
  const int64_t d = c.llm.hidden;
  VlaModule mod = model.module();
  auto lm = mod->language_model->model;
  auto f32 = [](const torch::Tensor& t) { return t.to(torch::kCPU, torch::kFloat32).contiguous(); };

  // Vision: Forward stacks the [3,S,S] float32 images and converts them with .to(opts).
  auto images = in.images.reshape({bsz * cams, 3, c.image_size, c.image_size}).to(opts);
  auto feats = mod->vision_backbone->forward(images);  // [B*C, P_img, W]
  int64_t offset = 0;
  for (const auto& t : c.towers) {
    out->emplace_back("vision.tower." + t.name, f32(feats.slice(-1, offset, offset + t.width)));
    offset += t.width;
  }
  out->emplace_back("vision.fused", f32(feats));
  auto vision = mod->projector->forward(feats.reshape({bsz, p, feats.size(-1)}));
  out->emplace_back("vision.projected", f32(vision));
  auto proprio = mod->proprio_projector->forward(in.proprio.to(torch::kFloat32).to(opts));
  out->emplace_back("proprio.projected", f32(proprio));

  // The sequence, the padded batch, RoPE tables and the key-padding bias.
  std::vector<SampleRows> rows(bsz);
  std::vector<torch::Tensor> seqs;
  for (int64_t b = 0; b < bsz; ++b) {
    rows[b] =
        SampleRows::Unpruned(p, static_cast<int64_t>(in.prompt_ids[b].size()), c.action_tokens());
    seqs.push_back(EmbedSample(*mod, c, vision[b], proprio[b], in.prompt_ids[b]));
  }
  RaggedBatch rb = AssembleBatch(seqs, rows, device);
  const Rope rope = MakeRope(rb.positions, d / c.llm.heads, c.llm.rope_theta, dtype);
  const auto bias = KeyPaddingBias(rb.valid, dtype);
  out->emplace_back("llm.inputs_embeds", f32(rb.hidden));
  auto h = rb.hidden;
  for (int64_t l = 0; l < c.llm.layers; ++l) {
    h = lm->layer_list[l]->forward(h, rope, bias, rb.valid, nullptr, nullptr);
    out->emplace_back(absl::StrCat("llm.layers.", l, ".output"), f32(h));
  }
  out->emplace_back("llm.last_hidden_state", f32(lm->norm->forward(h)));
  std::vector<int64_t> lengths;
  for (const auto& r : rb.rows) lengths.push_back(r.length());
  out->emplace_back("llm.lengths", torch::tensor(lengths, torch::kLong));

  // Action head: Forward gathers the readout rows before the norm, then norms them.
  const int64_t a = c.action_tokens();
  const auto read = ReadoutRows(rb.rows, device);
  auto action_in = lm->norm->forward(h.gather(1, read.unsqueeze(-1).expand({bsz, a, d})));
  out->emplace_back("action_head.input", f32(action_in));
  return f32(mod->action_head->forward(action_in));
}

absl::Status WriteOutputs(const std::string& path, const Named& tensors,
                          const std::map<std::string, std::string>& metadata) {
  std::vector<TensorView> views;
  for (const auto& [name, t] : tensors) {
    TensorView v;
    v.name = name;
    v.dtype = t.scalar_type() == torch::kLong ? DType::kI64 : DType::kF32;
    v.shape = t.sizes().vec();
    v.data = static_cast<const uint8_t*>(t.data_ptr());
    v.nbytes = static_cast<size_t>(t.numel()) * t.element_size();
    views.push_back(std::move(v));
  }
  return WriteSafetensors(path, views, metadata);
}

absl::Status Run(const std::string& dir, const std::string& inputs_path, const std::string& out,
                 const std::string& device, const std::string& dtype, bool tf32) {
  SP_ASSIGN_OR_RETURN(auto config, LoadModelConfig(dir));
  SP_ASSIGN_OR_RETURN(auto in, ReadInputs(inputs_path, config));
  if (absl::StartsWith(device, "cuda")) {
    try {
      at::globalContext().setAllowTF32CuBLAS(tf32);
      at::globalContext().setAllowTF32CuDNN(tf32);
    } catch (const c10::Error& e) {
      return absl::InternalError(
          absl::StrCat("setting TF32 to ", tf32 ? "on" : "off", ": ", e.what_without_backtrace()));
    }
  }
  ModelOptions options;
  options.device = device;
  options.dtype = dtype;
  options.sub_batch_cost_rows = -1;  // one padded batch, as the replica runs it
  SP_ASSIGN_OR_RETURN(auto loaded, LoadModelDir(dir, options));
  VlaModel& model = *loaded.model;
  std::fprintf(stderr, "reference_dump: %s (%s), %lld parameters, %s %s\n", dir.c_str(),
               model.config().name.c_str(), static_cast<long long>(model.parameter_count()),
               model.device_name().c_str(), model.dtype_name().c_str());

  Named tensors;
  torch::Tensor replica;
  try {
    replica = RunReplica(model, in, &tensors);
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("replica forward: ", e.what_without_backtrace()));
  }
  // The served path: VlaModel::Forward with no pruner (keeps every token).
  std::vector<SampleInput> batch(in.batch());
  for (int64_t b = 0; b < in.batch(); ++b) {
    for (int64_t k = 0; k < static_cast<int64_t>(config.cameras.size()); ++k)
      batch[b].images.push_back(in.images[b][k].contiguous());
    batch[b].prompt_ids = in.prompt_ids[b];
    batch[b].proprio = in.proprio[b].contiguous();
  }
  SP_ASSIGN_OR_RETURN(auto results, model.Forward(batch));
  std::vector<torch::Tensor> actions;
  for (const auto& r : results) actions.push_back(r.normalized_actions.to(torch::kFloat32));
  auto served = torch::stack(actions).contiguous();
  const float diff = (served - replica).abs().max().item<float>();
  tensors.emplace_back("actions", served);
  tensors.emplace_back("replica.actions", replica);
  tensors.emplace_back("replica.max_abs_diff", torch::full({1}, diff));
  std::fprintf(stderr, "reference_dump: max |served - replica| actions = %.3g\n", diff);

  std::map<std::string, std::string> metadata = {{"format", "pt"},
                                                 {"tool", "specprune_reference_dump"},
                                                 {"model_dir", dir},
                                                 {"config_name", model.config().name},
                                                 {"device", model.device_name()},
                                                 {"dtype", model.dtype_name()},
                                                 {"tf32", tf32 ? "true" : "false"},
                                                 {"libtorch_version", TORCH_VERSION},
                                                 {"config", ConfigToJson(model.config()).dump()}};
  SP_RETURN_IF_ERROR(WriteOutputs(out, tensors, metadata));
  std::fprintf(stderr, "reference_dump: wrote %zu tensors to %s\n", tensors.size(), out.c_str());
  return absl::OkStatus();
}

int Usage(const std::string& msg) {
  std::fprintf(stderr, "error: %s (--help lists the flags)\n", msg.c_str());
  return 2;
}

}  // namespace
}  // namespace specprune

int main(int argc, char** argv) {
  specprune::ParseFlagsOnlyOrExit(argc, argv, specprune::kUsage);
  const std::string dir = absl::GetFlag(FLAGS_model_dir);
  if (dir.empty()) return specprune::Usage("--model_dir is required");
  if (absl::GetFlag(FLAGS_print_config)) {
    auto config = specprune::LoadModelConfig(dir);
    if (!config.ok()) {
      std::fprintf(stderr, "%s\n", std::string(config.status().message()).c_str());
      return 1;
    }
    std::printf("%s\n", specprune::ConfigToJson(*config).dump(2).c_str());
    return 0;
  }
  const std::string inputs = absl::GetFlag(FLAGS_inputs);
  const std::string out = absl::GetFlag(FLAGS_out);
  if (inputs.empty() || out.empty()) return specprune::Usage("--inputs and --out are required");
  const std::string dtype = absl::GetFlag(FLAGS_dtype);
  if (dtype != "fp32" && dtype != "bf16") return specprune::Usage("--dtype must be fp32 or bf16");
  auto s = specprune::Run(dir, inputs, out, absl::GetFlag(FLAGS_device), dtype,
                          absl::GetFlag(FLAGS_tf32));
  if (!s.ok()) {
    std::fprintf(stderr, "specprune_reference_dump: %s\n", std::string(s.message()).c_str());
    return 1;
  }
  return 0;
}
