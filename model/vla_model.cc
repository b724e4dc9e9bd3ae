#include "model/vla_model.h"

#include <algorithm>
#include <cctype>
#include <chrono>
#include <mutex>
#include <unordered_map>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "model/flops.h"
#include "model/tokenizer.h"

namespace specprune {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// Per-sample bookkeeping of the ragged LLM batch. Rows of sample b are, in order:
// BOS | vision (vision_ids.size()) | proprio | prompt (prompt_len) | actions | EOS.
struct SampleRows {
  std::vector<int64_t> vision_ids;  // original vision index of each vision row, ascending
  int64_t prompt_len = 0;
  int64_t action_tokens = 0;
  int64_t length() const {
    return 1 + static_cast<int64_t>(vision_ids.size()) + 1 + prompt_len + action_tokens + 1;
  }
  int64_t vision_begin() const { return 1; }
  int64_t prompt_begin() const { return 2 + static_cast<int64_t>(vision_ids.size()); }
  int64_t actions_begin() const { return prompt_begin() + prompt_len; }
};

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

absl::StatusOr<torch::ScalarType> ParseDtype(const std::string& dtype) {
  if (dtype == "fp32" || dtype == "float32") return torch::kFloat32;
  if (dtype == "bf16" || dtype == "bfloat16") return torch::kBFloat16;
  return absl::InvalidArgumentError(absl::StrCat("dtype \"", dtype, "\": use fp32 or bf16"));
}

absl::StatusOr<std::unique_ptr<VlaModel>> VlaModel::Create(const ModelConfig& config,
                                                           const ModelOptions& options) {
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
      module = VlaModule(config);
    }
    module->eval();
    module->to(*device, *dtype);
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

absl::StatusOr<std::vector<SampleResult>> VlaModel::ForwardImpl(
    const std::vector<SampleInput>& batch, ForwardTimings* timings) const {
  c10::InferenceMode inference_guard;
  const int64_t bsz = static_cast<int64_t>(batch.size());
  const int64_t cams = static_cast<int64_t>(config_.cameras.size());
  const int64_t p = config_.vision_tokens();
  const int64_t d = config_.llm.hidden;
  const int64_t a = config_.action_tokens();
  const int64_t num_layers = config_.llm.layers;
  const auto opts = torch::TensorOptions().device(device_).dtype(dtype_);
  const auto long_opts = torch::TensorOptions().device(device_).dtype(torch::kLong);
  VlaModule mod = module_;  // non-const handle; forward passes only read parameters
  auto lm = mod->language_model->model;

  // --- Vision towers + projectors ----------------------------------------------------------
  auto t0 = Clock::now();
  std::vector<torch::Tensor> images;
  images.reserve(bsz * cams);
  std::vector<torch::Tensor> proprios;
  for (const auto& in : batch) {
    for (const auto& img : in.images) images.push_back(img);
    proprios.push_back(in.proprio.reshape({-1}).to(torch::kFloat32));
  }
  auto pixels = torch::stack(images).to(opts);
  auto feats = mod->vision_backbone->forward(pixels);  // [B*cams, P_img, W]
  feats = feats.reshape({bsz, p, feats.size(-1)});
  auto vision = mod->projector->forward(feats);                                     // [B,P,D]
  auto proprio = mod->proprio_projector->forward(torch::stack(proprios).to(opts));  // [B,D]
  SyncIfCuda(device_);
  auto t1 = Clock::now();

  // --- Assemble the ragged batch -------------------------------------------------------------
  std::vector<SampleRows> rows(bsz);
  std::vector<torch::Tensor> seqs;
  int64_t t_max = 0;
  const auto& llm = config_.llm;
  for (int64_t b = 0; b < bsz; ++b) {
    rows[b].vision_ids.resize(p);
    for (int64_t i = 0; i < p; ++i) rows[b].vision_ids[i] = i;
    rows[b].prompt_len = static_cast<int64_t>(batch[b].prompt_ids.size());
    rows[b].action_tokens = a;
    std::vector<int64_t> ids;
    ids.push_back(llm.bos_token_id);
    ids.insert(ids.end(), batch[b].prompt_ids.begin(), batch[b].prompt_ids.end());
    ids.push_back(llm.eos_token_id);
    auto emb = lm->embed_tokens->forward(torch::tensor(ids, long_opts));  // [1+m+1, D]
    const int64_t m = rows[b].prompt_len;
    auto vb = vision[b];
    if (!mod->instruction_film.is_empty() && m > 0)
      vb = mod->instruction_film->forward(vb, emb.slice(0, 1, 1 + m));
    seqs.push_back(
        torch::cat({emb.slice(0, 0, 1), vb, proprio[b].unsqueeze(0), emb.slice(0, 1, 1 + m),
                    torch::zeros({a, d}, opts), emb.slice(0, 1 + m, 2 + m)}));
    t_max = std::max(t_max, rows[b].length());
  }
  auto h = torch::zeros({bsz, t_max, d}, opts);
  auto positions = torch::zeros({bsz, t_max}, torch::kLong);
  for (int64_t b = 0; b < bsz; ++b) {
    const int64_t len = rows[b].length();
    h[b].slice(0, 0, len).copy_(seqs[b]);
    positions[b].slice(0, 0, len).copy_(torch::arange(len, torch::kLong));
  }
  seqs.clear();
  positions = positions.to(device_);
  auto valid_of = [&](const std::vector<SampleRows>& r, int64_t t) {
    auto lens = torch::empty({bsz}, torch::kLong);
    for (int64_t b = 0; b < bsz; ++b) lens[b] = r[b].length();
    return torch::arange(t, torch::kLong).unsqueeze(0).lt(lens.unsqueeze(1)).to(device_);
  };
  auto valid = valid_of(rows, t_max);
  const int64_t head_dim = d / llm.heads;
  auto rope = MakeRope(positions, head_dim, llm.rope_theta, dtype_);
  auto bias = KeyPaddingBias(valid, dtype_);

  std::vector<SampleResult> results(bsz);
  for (auto& r : results) {
    r.total_vision_tokens = p;
    r.vision_tokens_per_layer.reserve(num_layers);
  }
  std::vector<std::vector<int64_t>> tokens_per_layer(bsz);

  // --- LLM layers with pruning -----------------------------------------------------------------
  for (int64_t l = 0; l < num_layers; ++l) {
    std::vector<StatsRows> wanted(bsz, StatsRows::kNone);
    bool any_stats = false;
    for (int64_t b = 0; b < bsz; ++b) {
      if (batch[b].pruner != nullptr) wanted[b] = batch[b].pruner->StatsWanted(static_cast<int>(l));
      any_stats = any_stats || wanted[b] != StatsRows::kNone;
    }
    AttentionStatsQuery query;
    AttentionStatsResult stats;
    if (any_stats) {
      int64_t r_max = 1, v_max = 1;
      for (int64_t b = 0; b < bsz; ++b) {
        if (wanted[b] == StatsRows::kText) r_max = std::max(r_max, rows[b].prompt_len);
        if (wanted[b] == StatsRows::kActionReadout) r_max = std::max(r_max, rows[b].action_tokens);
        v_max = std::max<int64_t>(v_max, rows[b].vision_ids.size());
      }
      auto qrows = torch::zeros({bsz, r_max}, torch::kLong);
      auto rvalid = torch::zeros({bsz, r_max}, torch::kBool);
      auto vrows = torch::full({bsz, v_max}, -1, torch::kLong);
      for (int64_t b = 0; b < bsz; ++b) {
        const int64_t nv = static_cast<int64_t>(rows[b].vision_ids.size());
        if (nv > 0) vrows[b].slice(0, 0, nv).copy_(torch::arange(1, 1 + nv, torch::kLong));
        if (wanted[b] == StatsRows::kText && rows[b].prompt_len > 0) {
          const int64_t m = rows[b].prompt_len;
          qrows[b].slice(0, 0, m).copy_(
              torch::arange(rows[b].prompt_begin(), rows[b].prompt_begin() + m, torch::kLong));
          rvalid[b].slice(0, 0, m).fill_(true);
        } else if (wanted[b] == StatsRows::kActionReadout && rows[b].action_tokens > 0) {
          const int64_t m = rows[b].action_tokens;
          const int64_t first = rows[b].actions_begin() - 1;
          qrows[b].slice(0, 0, m).copy_(torch::arange(first, first + m, torch::kLong));
          rvalid[b].slice(0, 0, m).fill_(true);
        } else {
          // kLast (and samples that want nothing): the last valid row.
          qrows[b][0] = rows[b].length() - 1;
          rvalid[b][0] = true;
        }
      }
      query.query_rows = qrows.to(device_);
      query.row_valid = rvalid.to(device_);
      query.vision_rows = vrows.to(device_);
    }
    for (int64_t b = 0; b < bsz; ++b) {
      results[b].vision_tokens_per_layer.push_back(static_cast<int32_t>(rows[b].vision_ids.size()));
      tokens_per_layer[b].push_back(rows[b].length());
    }
    h = lm->layer_list[l]->forward(h, rope, bias, valid, any_stats ? &query : nullptr,
                                   any_stats ? &stats : nullptr);

    // Ask each pruner which vision tokens go on.
    bool repack = false;
    std::vector<std::vector<int64_t>> keep_rows(bsz);  // row indices kept per sample
    torch::Tensor cpu_scores, cpu_entropy;
    if (any_stats) {
      cpu_scores = stats.scores.to(torch::kCPU, torch::kFloat32);
      cpu_entropy = stats.entropy.to(torch::kCPU, torch::kFloat32);
    }
    for (int64_t b = 0; b < bsz; ++b) {
      if (batch[b].pruner == nullptr) continue;
      auto& ids = rows[b].vision_ids;
      LayerAttentionStats layer_stats;
      const LayerAttentionStats* stats_ptr = nullptr;
      if (wanted[b] != StatsRows::kNone) {
        layer_stats.scores = cpu_scores[b].slice(0, 0, static_cast<int64_t>(ids.size())).clone();
        layer_stats.vision_entropy = cpu_entropy[b].item<double>();
        stats_ptr = &layer_stats;
      }
      auto keep = batch[b].pruner->AfterLayer(static_cast<int>(l), ids, stats_ptr);
      if (!keep.has_value() || l + 1 == num_layers) continue;
      std::unordered_map<int64_t, int64_t> row_of;
      for (size_t i = 0; i < ids.size(); ++i) row_of[ids[i]] = static_cast<int64_t>(i);
      std::vector<int64_t> kept_pos;
      for (int64_t id : *keep) {
        auto it = row_of.find(id);
        if (it == row_of.end())
          return absl::InternalError(
              absl::StrCat("pruner kept vision token ", id, " that is not present at layer ", l));
        kept_pos.push_back(it->second);
        row_of.erase(it);  // ignore duplicates
      }
      if (kept_pos.size() == ids.size()) continue;
      std::sort(kept_pos.begin(), kept_pos.end());
      std::vector<int64_t> new_ids;
      new_ids.reserve(kept_pos.size());
      auto& kr = keep_rows[b];
      kr.push_back(0);
      for (int64_t pos : kept_pos) {
        kr.push_back(1 + pos);
        new_ids.push_back(ids[pos]);
      }
      for (int64_t row = 1 + static_cast<int64_t>(ids.size()); row < rows[b].length(); ++row)
        kr.push_back(row);
      ids = std::move(new_ids);
      repack = true;
    }
    if (repack) {
      int64_t new_max = 0;
      for (int64_t b = 0; b < bsz; ++b) new_max = std::max(new_max, rows[b].length());
      auto gather = torch::zeros({bsz, new_max}, torch::kLong);
      for (int64_t b = 0; b < bsz; ++b) {
        if (keep_rows[b].empty()) {
          gather[b]
              .slice(0, 0, rows[b].length())
              .copy_(torch::arange(rows[b].length(), torch::kLong));
        } else {
          gather[b]
              .slice(0, 0, static_cast<int64_t>(keep_rows[b].size()))
              .copy_(torch::tensor(keep_rows[b], torch::kLong));
        }
      }
      gather = gather.to(device_);
      h = h.gather(1, gather.unsqueeze(-1).expand({bsz, new_max, d}));
      positions = positions.gather(1, gather);
      valid = valid_of(rows, new_max);
      rope = MakeRope(positions, head_dim, llm.rope_theta, dtype_);
      bias = KeyPaddingBias(valid, dtype_);
    }
  }
  SyncIfCuda(device_);
  auto t2 = Clock::now();

  // --- Action head ---------------------------------------------------------------------------
  auto read = torch::zeros({bsz, a}, torch::kLong);
  for (int64_t b = 0; b < bsz; ++b) {
    const int64_t first = rows[b].actions_begin() - 1;
    read[b].copy_(torch::arange(first, first + a, torch::kLong));
  }
  read = read.to(device_);
  auto action_hidden = lm->norm->forward(h.gather(1, read.unsqueeze(-1).expand({bsz, a, d})));
  auto actions = mod->action_head->forward(action_hidden).to(torch::kCPU, torch::kFloat32);
  auto t3 = Clock::now();

  for (int64_t b = 0; b < bsz; ++b) {
    auto& r = results[b];
    r.normalized_actions = actions[b].clone();
    const auto f = ForwardFlops(config_, tokens_per_layer[b]);
    const auto full = UnprunedForwardFlops(config_, rows[b].prompt_len);
    r.llm_flops = f.llm;
    r.llm_flops_unpruned = full.llm;
    r.other_flops = f.vision + f.projector + f.action_head;
    if (batch[b].pruner != nullptr) batch[b].pruner->Finish(r.normalized_actions);
  }
  if (timings != nullptr) {
    timings->vision_seconds = Seconds(t0, t1);
    timings->llm_seconds = Seconds(t1, t2);
    timings->action_head_seconds = Seconds(t2, t3);
  }
  return results;
}

}  // namespace specprune
