#include "model/vla_model.h"

#include <algorithm>
#include <cctype>
#include <chrono>
#include <mutex>
#include <numeric>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "model/flops.h"
#include "model/llm_pass.h"
#include "model/sequence_layout.h"
#include "model/tokenizer.h"
#include "util/blas_runtime.h"
#include "util/status_macros.h"

namespace specprune {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

void SyncIfCuda(const torch::Device& d) {
#if TORCH_VERSION_MAJOR >= 2
  if (d.is_cuda()) torch::cuda::synchronize();
#else
  (void)d;
#endif
}

// Serializes random initialization: torch's default generator is process-global.
std::mutex& InitMutex() {
  static std::mutex mu;
  return mu;
}

}  // namespace

VlaModuleImpl::VlaModuleImpl(const ModelConfig& c) {
  vision_backbone = register_module("vision_backbone", VisionBackbone(c));
  projector = register_module("projector", VisionProjector(c));
  language_model = register_module("language_model", LanguageModel(c.llm));
  action_head = register_module("action_head", L1RegressionActionHead(c));
  proprio_projector = register_module("proprio_projector", ProprioProjector(c));
  if (c.instruction_film)
    instruction_film = register_module("instruction_film", InstructionFilm(c));
}

absl::StatusOr<torch::Device> ParseDevice(const std::string& device) {
  try {
    torch::Device d(device);
    if (d.is_cuda() && !torch::cuda::is_available())
      return absl::FailedPreconditionError(
          absl::StrCat("device \"", device, "\": CUDA is not available in this build/host"));
    if (!d.is_cpu() && !d.is_cuda())
      return absl::InvalidArgumentError(absl::StrCat("device \"", device, "\": use cpu or cuda"));
    return d;
  } catch (const c10::Error& e) {
    return absl::InvalidArgumentError(absl::StrCat("device \"", device, "\": not a device name"));
  }
}

absl::StatusOr<ParameterInit> ParseRandomInit(const std::string& name) {
  if (name == "nn") return ParameterInit::kRandom;
  if (name == "device") return ParameterInit::kRandomOnDevice;
  return absl::InvalidArgumentError(
      absl::StrCat("--random_init must be nn or device, got \"", name, "\""));
}

absl::StatusOr<torch::ScalarType> ParseDtype(const std::string& dtype) {
  if (dtype == "fp32" || dtype == "float32") return torch::kFloat32;
  if (dtype == "bf16" || dtype == "bfloat16") return torch::kBFloat16;
  return absl::InvalidArgumentError(absl::StrCat("dtype \"", dtype, "\": use fp32, bf16 or auto"));
}

std::string ResolveDtype(const std::string& dtype, const std::string& device) {
  if (dtype != "auto") return dtype;
  if (absl::StartsWith(device, "cuda")) return "bf16";
  const CpuFeatures cpu = DetectCpuFeatures();
  return cpu.avx512_bf16 || cpu.amx_bf16 ? "bf16" : "fp32";
}

absl::StatusOr<std::unique_ptr<VlaModel>> VlaModel::Create(const ModelConfig& config,
                                                           const ModelOptions& requested) {
  ModelOptions options = requested;
  options.dtype = ResolveDtype(requested.dtype, requested.device);
  if (auto s = ValidateConfig(config); !s.ok()) return s;
  auto device = ParseDevice(options.device);
  if (!device.ok()) return device.status();
  auto dtype = ParseDtype(options.dtype);
  if (!dtype.ok()) return dtype.status();
  try {
    VlaModule module{nullptr};
    {
      std::lock_guard<std::mutex> lock(InitMutex());
      torch::manual_seed(options.seed);
      ScopedParameterPlacement placement({options.init, *dtype, *device});
      module = VlaModule(config);
    }
    module->eval();
    module->to(*device, *dtype);  // the buffers; parameters are already placed
    return std::unique_ptr<VlaModel>(new VlaModel(config, options, module, *device, *dtype));
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("building model: ", e.what_without_backtrace()));
  }
}

int64_t VlaModel::parameter_count() const {
  int64_t n = 0;
  for (const auto& p : module_->parameters()) n += p.numel();
  return n;
}

std::vector<int64_t> BuildPromptIds(const ModelConfig& config, const Tokenizer& tokenizer,
                                    std::string_view instruction) {
  std::string lower(instruction);
  absl::AsciiStrToLower(&lower);
  std::string text = absl::StrReplaceAll(config.prompt_template, {{"{}", lower}});
  std::vector<int64_t> ids = tokenizer.Encode(text);
  if (config.prompt_suffix_token >= 0) ids.push_back(config.prompt_suffix_token);
  return ids;
}

absl::StatusOr<std::vector<SampleResult>> VlaModel::Forward(const std::vector<SampleInput>& batch,
                                                            ForwardTimings* timings) const {
  if (batch.empty()) return std::vector<SampleResult>{};
  const int64_t cams = static_cast<int64_t>(config_.cameras.size());
  const int64_t s = config_.image_size;
  for (size_t b = 0; b < batch.size(); ++b) {
    const auto& in = batch[b];
    if (static_cast<int64_t>(in.images.size()) != cams)
      return absl::InvalidArgumentError(
          absl::StrCat("sample ", b, ": expected ", cams, " images, got ", in.images.size()));
    for (const auto& img : in.images)
      if (!img.defined() || img.dim() != 3 || img.size(0) != 3 || img.size(1) != s ||
          img.size(2) != s)
        return absl::InvalidArgumentError(
            absl::StrCat("sample ", b, ": images must be [3,", s, ",", s, "]"));
    if (!in.proprio.defined() || in.proprio.numel() != config_.proprio_dim)
      return absl::InvalidArgumentError(
          absl::StrCat("sample ", b, ": proprio must have ", config_.proprio_dim, " values"));
    for (int64_t id : in.prompt_ids)
      if (id < 0 || id >= config_.llm.vocab_size)
        return absl::InvalidArgumentError(
            absl::StrCat("sample ", b, ": token id ", id, " outside the vocabulary"));
  }
  try {
    return ForwardImpl(batch, timings);
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("forward: ", e.what_without_backtrace()));
  }
}

torch::Tensor EmbedSample(VlaModuleImpl& module, const ModelConfig& config,
                          const torch::Tensor& vision, const torch::Tensor& proprio,
                          const std::vector<int64_t>& prompt_ids, torch::Tensor* llm_vision) {
  const auto& llm = config.llm;
  std::vector<int64_t> ids;
  ids.push_back(llm.bos_token_id);
  ids.insert(ids.end(), prompt_ids.begin(), prompt_ids.end());
  ids.push_back(llm.eos_token_id);
  auto lm = module.language_model->model;
  const auto long_opts = torch::TensorOptions().device(vision.device()).dtype(torch::kLong);
  auto emb = lm->embed_tokens->forward(torch::tensor(ids, long_opts));  // [1+m+1, D]
  const int64_t m = static_cast<int64_t>(prompt_ids.size());
  auto vb = vision;
  if (!module.instruction_film.is_empty() && m > 0)
    vb = module.instruction_film->forward(vb, emb.slice(0, 1, 1 + m));
  if (llm_vision != nullptr) *llm_vision = vb;
  return SampleSequence(vb, proprio, emb, config.action_tokens());
}

absl::StatusOr<std::vector<SampleResult>> VlaModel::ForwardImpl(
    const std::vector<SampleInput>& batch, ForwardTimings* timings) const {
  c10::InferenceMode inference_guard;
  const int64_t bsz = static_cast<int64_t>(batch.size());
  const int64_t p = config_.vision_tokens();
  const int64_t d = config_.llm.hidden;
  const int64_t num_layers = config_.llm.layers;
  const auto opts = torch::TensorOptions().device(device_).dtype(dtype_);
  VlaModule mod = module_;  // non-const handle; forward passes only read parameters
  auto lm = mod->language_model->model;

  // --- Vision towers + projectors ----------------------------------------------------------
  auto t0 = Clock::now();
  std::vector<torch::Tensor> images, proprios;
  for (const auto& in : batch) {
    for (const auto& img : in.images) images.push_back(img);
    proprios.push_back(in.proprio.reshape({-1}).to(torch::kFloat32));
  }
  auto feats = mod->vision_backbone->forward(torch::stack(images).to(opts));  // [B*cams, P_img, W]
  auto vision = mod->projector->forward(feats.reshape({bsz, p, feats.size(-1)}));   // [B,P,D]
  auto proprio = mod->proprio_projector->forward(torch::stack(proprios).to(opts));  // [B,D]
  SyncIfCuda(device_);
  auto t1 = Clock::now();

  // --- The ragged batch, one sub-batch to begin with -------------------------------------------
  std::vector<SampleRows> rows(bsz);
  std::vector<torch::Tensor> seqs;
  for (int64_t b = 0; b < bsz; ++b) {
    rows[b] = SampleRows::Unpruned(p, static_cast<int64_t>(batch[b].prompt_ids.size()),
                                   config_.action_tokens());
    seqs.push_back(EmbedSample(*mod, config_, vision[b], proprio[b], batch[b].prompt_ids));
  }
  std::vector<SubBatch> subs(1);
  subs[0].samples.resize(bsz);
  std::iota(subs[0].samples.begin(), subs[0].samples.end(), 0);
  subs[0].rb = AssembleBatch(seqs, std::move(rows), device_);
  seqs.clear();
  subs[0].rope =
      MakeRope(subs[0].rb.positions, d / config_.llm.heads, config_.llm.rope_theta, dtype_);
  subs[0].bias = KeyPaddingBias(subs[0].rb.valid, dtype_);

  std::vector<SampleResult> results(bsz);
  for (auto& r : results) {
    r.total_vision_tokens = p;
    r.vision_tokens_per_layer.reserve(num_layers);
  }

  // --- LLM layers with pruning -----------------------------------------------------------------
  LlmPass pass(*lm, batch, results, device_, dtype_, options_);
  for (int64_t l = 0; l < num_layers; ++l) {
    SP_ASSIGN_OR_RETURN(subs, pass.RunLayer(l, std::move(subs)));
  }
  SyncIfCuda(device_);
  auto t2 = Clock::now();

  // --- Action head ---------------------------------------------------------------------------
  const int64_t a = config_.action_tokens();
  std::vector<torch::Tensor> readout(bsz);
  torch::Tensor action_in;
  for (const auto& sub : subs) {
    const int64_t n = static_cast<int64_t>(sub.samples.size());
    const auto read = ReadoutRows(sub.rb.rows, device_);
    action_in = sub.rb.hidden.gather(1, read.unsqueeze(-1).expand({n, a, d}));  // [n, a, D]
    if (subs.size() > 1)
      for (int64_t i = 0; i < n; ++i) readout[sub.samples[i]] = action_in[i];
  }
  if (subs.size() > 1) action_in = torch::stack(readout);  // one sub-batch: already in order
  auto actions =
      mod->action_head->forward(lm->norm->forward(action_in)).to(torch::kCPU, torch::kFloat32);
  auto t3 = Clock::now();

  for (int64_t b = 0; b < bsz; ++b) {
    auto& r = results[b];
    r.normalized_actions = actions[b].clone();
    const auto f = ForwardFlops(config_, pass.tokens_per_layer[b]);
    const auto full =
        UnprunedForwardFlops(config_, static_cast<int64_t>(batch[b].prompt_ids.size()));
    r.llm_flops = f.llm;
    r.llm_flops_unpruned = full.llm;
    r.other_flops = f.vision + f.projector + f.action_head;
    if (batch[b].pruner != nullptr) {
      const auto finish_start = Clock::now();
      batch[b].pruner->Finish(r.normalized_actions);
      pass.pruning_seconds += Seconds(finish_start, Clock::now());
    }
  }
  if (timings != nullptr) {
    timings->vision_seconds = Seconds(t0, t1);
    timings->llm_seconds = Seconds(t1, t2);
    timings->action_head_seconds = Seconds(t2, t3);
    timings->pruning_seconds = pass.pruning_seconds;
    timings->llm_row_layers = pass.row_layers;
    timings->llm_gemm_row_layers = pass.gemm_row_layers;
    timings->llm_attention_scores = pass.attention_scores;
    timings->llm_query_row_layers = pass.query_row_layers;
    timings->llm_layer_seconds = pass.layer_seconds;
    timings->llm_valid_row_layers = pass.valid_row_layers;
    timings->llm_sub_batches = static_cast<int64_t>(subs.size());
  }
  return results;
}

}  // namespace specprune
