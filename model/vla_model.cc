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

namespace {

// The attention-statistics query of one layer: per sample, the query rows its pruner wants
// (StatsWanted) and the rows of its vision tokens. Null when no pruner wants statistics.
bool BuildStatsQuery(const std::vector<SampleRows>& rows, const std::vector<StatsRows>& wanted,
                     const torch::Device& device, AttentionStatsQuery* query) {
  const int64_t bsz = static_cast<int64_t>(rows.size());
  if (std::all_of(wanted.begin(), wanted.end(), [](StatsRows w) { return w == StatsRows::kNone; }))
    return false;
  int64_t r_max = 1, v_max = 1;
  for (int64_t b = 0; b < bsz; ++b) {
    if (wanted[b] == StatsRows::kText) r_max = std::max(r_max, rows[b].prompt_len);
    if (wanted[b] == StatsRows::kActionReadout) r_max = std::max(r_max, rows[b].action_tokens);
    v_max = std::max<int64_t>(v_max, rows[b].vision_ids.size());
  }
  // Filled through raw pointers: per-row tensor ops would cost more than the layer's statistics.
  auto qrows = torch::zeros({bsz, r_max}, torch::kLong);
  auto rvalid = torch::zeros({bsz, r_max}, torch::kBool);
  auto vrows = torch::full({bsz, v_max}, -1, torch::kLong);
  int64_t* q = qrows.data_ptr<int64_t>();
  bool* valid = rvalid.data_ptr<bool>();
  int64_t* vis = vrows.data_ptr<int64_t>();
  for (int64_t b = 0; b < bsz; ++b) {
    const int64_t nv = static_cast<int64_t>(rows[b].vision_ids.size());
    for (int64_t j = 0; j < nv; ++j) vis[b * v_max + j] = 1 + j;
    int64_t first = rows[b].length() - 1, m = 1;  // kLast (and samples that want nothing)
    if (wanted[b] == StatsRows::kText && rows[b].prompt_len > 0) {
      first = rows[b].prompt_begin();
      m = rows[b].prompt_len;
    } else if (wanted[b] == StatsRows::kActionReadout && rows[b].action_tokens > 0) {
      first = rows[b].readout_begin();
      m = rows[b].action_tokens;
    }
    for (int64_t i = 0; i < m; ++i) {
      q[b * r_max + i] = first + i;
      valid[b * r_max + i] = true;
    }
  }
  query->query_rows = qrows.to(device);
  query->row_valid = rvalid.to(device);
  query->vision_rows = vrows.to(device);
  return true;
}

// Asks sample b's pruner which vision tokens go on after `layer`. Updates rows.vision_ids and
// returns the rows of the current layout that are kept (empty = unchanged).
absl::StatusOr<std::vector<int64_t>> KeptRows(SamplePruner& pruner, int64_t layer,
                                              const LayerAttentionStats* stats, SampleRows& rows) {
  auto& ids = rows.vision_ids;
  auto keep = pruner.AfterLayer(static_cast<int>(layer), ids, stats);
  if (!keep.has_value()) return std::vector<int64_t>{};
  // Vision ids are original patch indices, so a table indexed by id replaces a hash map.
  int64_t max_id = -1;
  for (int64_t id : ids) max_id = std::max(max_id, id);
  std::vector<int64_t> row_of(max_id + 1, -1);
  for (size_t i = 0; i < ids.size(); ++i)
    if (ids[i] >= 0) row_of[ids[i]] = static_cast<int64_t>(i);
  std::vector<int64_t> kept_pos;
  kept_pos.reserve(keep->size());
  for (int64_t id : *keep) {
    if (id < 0 || id > max_id || row_of[id] < 0)
      return absl::InternalError(absl::StrCat("pruner kept vision token ", id,
                                              " that is not present (or kept twice) at layer ",
                                              layer));
    kept_pos.push_back(row_of[id]);
    row_of[id] = -1;
  }
  if (kept_pos.size() == ids.size()) return std::vector<int64_t>{};
  std::sort(kept_pos.begin(), kept_pos.end());
  const int64_t old_length = rows.length();
  std::vector<int64_t> kept_rows = {0}, new_ids;
  new_ids.reserve(kept_pos.size());
  for (int64_t pos : kept_pos) {
    kept_rows.push_back(1 + pos);
    new_ids.push_back(ids[pos]);
  }
  for (int64_t row = 1 + static_cast<int64_t>(ids.size()); row < old_length; ++row)
    kept_rows.push_back(row);
  ids = std::move(new_ids);
  return kept_rows;
}

// One sub-batch of the LLM layers: samples of similar length, padded together. `samples` index the
// forward's batch; row i of `rb` (and of `rope`, `bias`) is sample samples[i].
struct SubBatch {
  std::vector<int64_t> samples;
  RaggedBatch rb;
  Rope rope;
  torch::Tensor bias;
};

// The LLM layers of one forward over a batch that pruning makes ragged. When a repack makes a
// sub-batch's lengths diverge (a prior refresh beside pruned samples, different retained counts),
// it is split by GroupByLength so short samples stop paying for the padding of long ones. Several
// sub-batches run each layer packed back to back (LlamaDecoderLayerImpl::ForwardPacked): one call
// per per-row operation, the attention per sub-batch.
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
        bucket_rows_(options.bucket_gemm_rows && device.is_cpu() && dtype != torch::kFloat32) {}

  // Runs layer `l` on `subs`, asks the pruners which vision tokens go on, and returns the
  // sub-batches the samples continue in.
  absl::StatusOr<std::vector<SubBatch>> RunLayer(int64_t l, std::vector<SubBatch> subs);

  double pruning_seconds = 0;
  int64_t row_layers = 0;                              // rows run, padding included
  int64_t valid_row_layers = 0;                        // real rows among them
  int64_t gemm_row_layers = 0;                         // rows the GEMMs ran, bucket padding too
  int64_t attention_scores = 0;                        // samples x heads x length^2, summed
  std::vector<std::vector<int64_t>> tokens_per_layer;  // per sample

 private:
  // What one sub-batch asks of a layer besides its output.
  struct LayerQuery {
    std::vector<StatsRows> wanted;  // per sample of the sub-batch
    bool any_stats = false;
    AttentionStatsQuery query;
    AttentionStatsResult stats;
  };

  SamplePruner* pruner(const SubBatch& sub, int64_t i) const {
    return batch_[sub.samples[i]].pruner;
  }
  LayerQuery PrepareLayer(int64_t l, const SubBatch& sub);
  // Layer `l` over every sub-batch; replaces each sub-batch's hidden state by the layer's output.
  void Forward(int64_t l, std::vector<SubBatch>& subs, std::vector<LayerQuery>& queries);
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
  const bool bucket_rows_;       // pad the GEMMs' rows to GemmRowBucket
  torch::Tensor packed_output_;  // the last packed layer's output [P, D]; sub-batches view it
};

absl::StatusOr<std::vector<SubBatch>> LlmPass::RunLayer(int64_t l, std::vector<SubBatch> subs) {
  const auto select_start = Clock::now();
  std::vector<LayerQuery> queries;
  queries.reserve(subs.size());
  for (const auto& sub : subs) queries.push_back(PrepareLayer(l, sub));
  const auto layer_start = Clock::now();
  Forward(l, subs, queries);
  const auto layer_end = Clock::now();
  pruning_seconds += Seconds(select_start, layer_start);
  for (const auto& q : queries) pruning_seconds += q.stats.seconds;
  std::vector<SubBatch> next;
  for (size_t s = 0; s < subs.size(); ++s)
    SP_RETURN_IF_ERROR(Prune(l, std::move(subs[s]), queries[s], &next));
  pruning_seconds += Seconds(layer_end, Clock::now());
  return next;
}

LlmPass::LayerQuery LlmPass::PrepareLayer(int64_t l, const SubBatch& sub) {
  const int64_t n = static_cast<int64_t>(sub.samples.size());
  const auto& rows = sub.rb.rows;
  LayerQuery q;
  q.wanted.assign(n, StatsRows::kNone);
  for (int64_t i = 0; i < n; ++i)
    if (pruner(sub, i) != nullptr) q.wanted[i] = pruner(sub, i)->StatsWanted(static_cast<int>(l));
  q.any_stats = BuildStatsQuery(rows, q.wanted, device_, &q.query);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t b = sub.samples[i];
    results_[b].vision_tokens_per_layer.push_back(static_cast<int32_t>(rows[i].vision_ids.size()));
    tokens_per_layer[b].push_back(rows[i].length());
    valid_row_layers += rows[i].length();
  }
  row_layers += n * sub.rb.max_length();
  attention_scores +=
      n * lm_.layer_list[l]->self_attn->heads * sub.rb.max_length() * sub.rb.max_length();
  return q;
}

void LlmPass::Forward(int64_t l, std::vector<SubBatch>& subs, std::vector<LayerQuery>& queries) {
  auto& layer = *lm_.layer_list[l];
  if (subs.size() == 1 && !bucket_rows_) {
    auto& sub = subs[0];
    auto& q = queries[0];
    sub.rb.hidden =
        layer.forward(sub.rb.hidden, sub.rope, sub.bias, sub.rb.valid,
                      q.any_stats ? &q.query : nullptr, q.any_stats ? &q.stats : nullptr);
    gemm_row_layers += sub.rb.hidden.size(0) * sub.rb.hidden.size(1);
    packed_output_ = torch::Tensor();
    return;
  }
  std::vector<AttentionSegment> segments;
  int64_t rows = 0;
  for (size_t s = 0; s < subs.size(); ++s) {
    const auto& sub = subs[s];
    auto& q = queries[s];
    segments.push_back({.batch = sub.rb.hidden.size(0),
                        .length = sub.rb.max_length(),
                        .rope = &sub.rope,
                        .bias = sub.bias,
                        .key_valid = sub.rb.valid,
                        .query = q.any_stats ? &q.query : nullptr,
                        .stats = q.any_stats ? &q.stats : nullptr});
    rows += segments.back().rows();
  }
  const int64_t padded_rows = bucket_rows_ ? GemmRowBucket(rows) : rows;
  gemm_row_layers += padded_rows;
  packed_output_ = layer.ForwardPacked(PackedInput(subs, padded_rows), segments);
  const int64_t d = packed_output_.size(1);
  int64_t offset = 0;
  for (size_t s = 0; s < subs.size(); ++s) {
    const auto& seg = segments[s];
    subs[s].rb.hidden =
        packed_output_.narrow(0, offset, seg.rows()).view({seg.batch, seg.length, d});
    offset += seg.rows();
  }
}

torch::Tensor LlmPass::PackedInput(const std::vector<SubBatch>& subs, int64_t padded_rows) const {
  if (packed_output_.defined() && packed_output_.size(0) == padded_rows) {
    const int64_t row_bytes = packed_output_.size(1) * packed_output_.element_size();
    const char* base = static_cast<const char*>(packed_output_.data_ptr());
    int64_t offset = 0;
    bool in_place = true;
    for (const auto& sub : subs) {
      const auto& h = sub.rb.hidden;
      in_place = in_place && h.is_contiguous() && h.data_ptr() == base + offset * row_bytes;
      offset += h.size(0) * h.size(1);
    }
    if (in_place) return packed_output_;  // its padding rows are still zero (no biases)
  }
  const int64_t d = subs[0].rb.hidden.size(2);
  auto packed = torch::empty({padded_rows, d}, subs[0].rb.hidden.options());
  int64_t offset = 0;
  for (const auto& sub : subs) {
    const int64_t rows = sub.rb.hidden.size(0) * sub.rb.hidden.size(1);
    packed.narrow(0, offset, rows).view(sub.rb.hidden.sizes()).copy_(sub.rb.hidden);
    offset += rows;
  }
  if (offset < padded_rows) packed.narrow(0, offset, padded_rows - offset).zero_();
  return packed;
}

absl::Status LlmPass::Prune(int64_t l, SubBatch sub, const LayerQuery& q,
                            std::vector<SubBatch>* next) {
  const int64_t n = static_cast<int64_t>(sub.samples.size());
  auto& rows = sub.rb.rows;
  const int64_t num_layers = static_cast<int64_t>(lm_.layer_list.size());
  bool repack = false;
  std::vector<std::vector<int64_t>> keep_rows(n);
  torch::Tensor cpu_scores, cpu_entropy;
  if (q.any_stats) {
    cpu_scores = q.stats.scores.to(torch::kCPU, torch::kFloat32);
    cpu_entropy = q.stats.entropy.to(torch::kCPU, torch::kFloat32).contiguous();
  }
  for (int64_t i = 0; i < n; ++i) {
    if (pruner(sub, i) == nullptr) continue;
    LayerAttentionStats layer_stats;
    const LayerAttentionStats* stats_ptr = nullptr;
    if (q.wanted[i] != StatsRows::kNone) {
      const int64_t nv = static_cast<int64_t>(rows[i].vision_ids.size());
      layer_stats.scores = cpu_scores.select(0, i).slice(0, 0, nv);  // fresh per layer: a view
      layer_stats.vision_entropy = cpu_entropy.data_ptr<float>()[i];
      stats_ptr = &layer_stats;
    }
    if (l + 1 == num_layers) {  // the pruner still sees the last layer; nothing is removed
      pruner(sub, i)->AfterLayer(static_cast<int>(l), rows[i].vision_ids, stats_ptr);
      continue;
    }
    auto kept = KeptRows(*pruner(sub, i), l, stats_ptr, rows[i]);
    if (!kept.ok()) return kept.status();
    keep_rows[i] = *std::move(kept);
    repack = repack || !keep_rows[i].empty();
  }
  if (repack) {
    Repack(std::move(sub), keep_rows, next);
  } else {
    next->push_back(std::move(sub));
  }
  return absl::OkStatus();
}

void LlmPass::Repack(SubBatch sub, const std::vector<std::vector<int64_t>>& keep_rows,
                     std::vector<SubBatch>* next) const {
  std::vector<int64_t> lengths;
  for (const auto& r : sub.rb.rows) lengths.push_back(r.length());
  const auto groups = GroupByLength(lengths, sub_batch_cost_rows_);
  if (groups.size() == 1) {
    const auto gather = RepackBatch(keep_rows, &sub.rb);
    sub.rope = GatherRope(sub.rope, gather);
    sub.bias = KeyPaddingBias(sub.rb.valid, dtype_);
    next->push_back(std::move(sub));
    return;
  }
  for (const auto& group : groups) {
    SubBatch part;
    std::vector<std::vector<int64_t>> keep;
    for (int64_t i : group) {
      part.samples.push_back(sub.samples[i]);
      keep.push_back(keep_rows[i]);
    }
    RepackedBatch repacked = RepackSamples(sub.rb, group, keep);
    part.rb = std::move(repacked.batch);
    part.rope = GatherRope(sub.rope, repacked.flat_rows);
    part.bias = KeyPaddingBias(part.rb.valid, dtype_);
    next->push_back(std::move(part));
  }
}

}  // namespace

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
    timings->llm_valid_row_layers = pass.valid_row_layers;
    timings->llm_sub_batches = static_cast<int64_t>(subs.size());
  }
  return results;
}

}  // namespace specprune
