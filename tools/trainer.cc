#include "tools/trainer.h"

#include <torch/torch.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "model/checkpoint.h"
#include "model/tokenizer.h"
#include "nlohmann/json.hpp"
#include "tools/batch_producer.h"
#include "tools/dagger_pool.h"
#include "tools/demonstrations.h"
#include "tools/holdout_eval.h"
#include "tools/train_diagnostics.h"
#include "tools/training_forward.h"
#include "tools/training_heads.h"
#include "tools/training_losses.h"
#include "util/status_macros.h"

namespace specprune {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

// Failures carry the line to print: InvalidArgument for an option the model rejects (exit 2),
// Unknown for everything else (exit 1).
absl::Status OptionError(std::string message) { return absl::InvalidArgumentError(message); }
absl::Status RunError(std::string message) { return absl::UnknownError(message); }
absl::Status RunError(const char* what, const absl::Status& s) {
  return RunError(absl::StrCat(what, ": ", s.ToString()));
}

// What a run holds from setup to the end of the loop.
struct Run {
  bool resume = false;  // o.out has a train_state.json
  std::string state_path, tok_path;
  std::unique_ptr<Tokenizer> tok;
  std::unique_ptr<VlaModel> model;
  DatasetStatistics stats_file;
  const DatasetStats* stats = nullptr;  // in stats_file
  int64_t start_step = 0;
  double best_success = -1;
  Heads heads;
  PruningConfig drop_pruning;  // --drop_specprune's config
  std::unique_ptr<torch::optim::AdamW> opt;
  size_t film_group = 0;  // the optimizer group of the instruction FiLM's parameters (if any)
};

// The model's config, tokenizer and (randomly initialized) model, from o.out when resuming, else
// from o.init with the FiLM of o.instruction_film.
absl::Status CreateModel(const TrainOptions& o, Run* run) {
  if (o.patch_layer < 0) return OptionError("--patch_layer: must be >= 0");
  auto config = LoadModelConfig(run->resume ? o.out : o.init);
  if (!config.ok()) return RunError("config", config.status());
  if (!run->resume && !o.instruction_film && o.film_pooling != "mean")
    return OptionError("--film_pooling: needs --instruction_film");
  if (!run->resume && o.instruction_film) {
    config->instruction_film = true;
    config->instruction_film_pooling = o.film_pooling;
    if (auto s = ValidateConfig(*config); !s.ok())
      return OptionError(absl::StrCat("--film_pooling: ", s.ToString()));
  }
  if (o.film_lr_mult <= 0) return OptionError("--film_lr_mult: must be positive");
  run->tok_path = (run->resume ? o.out : o.init) + "/tokenizer.model";
  auto tok = Tokenizer::Load(run->tok_path);
  if (!tok.ok()) return RunError("tokenizer", tok.status());
  run->tok = *std::move(tok);
  ModelOptions mo;
  mo.seed = o.seed;
  auto model = VlaModel::Create(*config, mo);
  if (!model.ok()) return RunError("model", model.status());
  run->model = *std::move(model);
  if (config->instruction_film)
    std::printf(
        "instruction FiLM: on, %s pooling (zero where the initial weights lack it), LR x "
        "%g after the head warm-up\n",
        config->instruction_film_pooling.c_str(), o.film_lr_mult);
  if (o.curriculum.fixed_tasks > 0)
    std::printf(
        "tasks: a fixed set of %d per suite (LIBERO's protocol; demos, held-out and closed-loop "
        "episodes vary the layout)\n",
        o.curriculum.fixed_tasks);
  return absl::OkStatus();
}

// The weights (o.init's with --init_weights, or the checkpoint's when resuming), the training
// state of a resumed run, and the dataset statistics: the checkpoint's, o.init's when fine-tuning
// from weights trained on the simulator, else computed from o.stats_episodes demos per suite.
absl::Status LoadWeightsAndStatistics(const TrainOptions& o, Run* run) {
  const std::string key = "specprune_sim";
  if (!run->resume && o.init_weights) {
    if (auto s = LoadWeights(o.init, *run->model, "instruction_film."); !s.ok())
      return RunError(absl::StrCat("--init_weights: ", s.ToString()));
    std::printf("initialized from the weights in %s\n", o.init.c_str());
  }
  if (run->resume) {
    if (auto s = LoadWeights(o.out, *run->model); !s.ok()) return RunError("resume", s);
    auto st = DatasetStatistics::Load(o.out + "/dataset_statistics.json");
    if (!st.ok()) return RunError("resume", st.status());
    run->stats_file = *st;
    std::ifstream f(run->state_path);
    auto j = nlohmann::json::parse(f, nullptr, false);
    if (j.is_discarded() || !j.contains("step"))
      return RunError(absl::StrCat("resume: ", run->state_path, " is not valid"));
    run->start_step = j["step"].get<int64_t>();
    run->best_success = j.value("best_success", -1.0);
    std::printf("resuming from step %lld\n", static_cast<long long>(run->start_step));
  } else if (auto init_stats = DatasetStatistics::Load(o.init + "/dataset_statistics.json");
             o.init_weights && init_stats.ok() && init_stats->Get(key).ok()) {
    // Fine-tuning keeps the normalization the weights were trained with.
    run->stats_file = *init_stats;
    std::printf("statistics: from %s/dataset_statistics.json\n", o.init.c_str());
  } else {
    std::vector<EpisodeSpec> specs;
    for (sim::Suite s : sim::kAllSuites)
      for (int i = 0; i < o.stats_episodes; ++i) {
        EpisodeSpec e;
        e.suite = s;
        e.seed = static_cast<uint64_t>(i);
        e.noise_std = (i % 2 == 1) ? static_cast<float>(o.curriculum.noise_std) : 0.0f;
        specs.push_back(e);
      }
    auto st = ComputeStatistics(specs, static_cast<int>(run->model->config().image_size), key);
    if (!st.ok()) return RunError("statistics", st.status());
    if (auto s = run->stats_file.Add(*st); !s.ok()) return RunError("statistics", s);
    std::printf("statistics: %lld transitions, %lld demos\n",
                static_cast<long long>(st->num_transitions),
                static_cast<long long>(st->num_trajectories));
  }
  run->stats = *run->stats_file.Get(key);
  return absl::OkStatus();
}

// `requested`, or layers first_default..L-1 when empty, into *out; an option error naming `flag`
// when one is not a layer of the model.
absl::Status ResolveLayers(const std::vector<int>& requested, int first_default, int layers,
                           const char* flag, std::vector<int>* out) {
  *out = requested;
  if (out->empty())
    for (int l = first_default; l < layers; ++l) out->push_back(l);
  for (int l : *out)
    if (l < 0 || l >= layers)
      return OptionError(absl::StrCat("--", flag, ": the model has ", layers, " layers"));
  return absl::OkStatus();
}

// --drop_specprune's pruning config (the model's scaled defaults under --drop_pruning), which must
// prune statically right before --drop_layer.
absl::Status SetUpServedDropping(const TrainOptions& o, const ModelConfig& mc, Run* run) {
  const int layers = static_cast<int>(mc.llm.layers);
  run->drop_pruning = DefaultPruningConfig(layers, mc.vision_tokens(), mc.patches_per_image());
  if (!o.drop_pruning.empty()) {
    auto parsed = LoadPruningConfigFile(o.drop_pruning, run->drop_pruning);
    if (!parsed.ok())
      return OptionError(absl::StrCat("--drop_pruning: ", parsed.status().ToString()));
    run->drop_pruning = *std::move(parsed);
  }
  run->drop_pruning.method = PruningMethod::kSpecPrune;
  const auto& local = run->drop_pruning.specprune.local_layers;
  const int first = local.empty() ? 0 : *std::max_element(local.begin(), local.end()) + 1;
  if (o.drop_layer != first)
    return OptionError(
        absl::StrCat("--drop_layer: SpecPrune's static pruning acts from layer ", first));
  return absl::OkStatus();
}

// The training heads (created in a fixed order: aux, patch, text, attr, film_patch) and the
// layers of the grounding losses, checked against the model; the heads' saved weights.
absl::Status CreateHeads(const TrainOptions& o, Run* run) {
  const ModelConfig& mc = run->model->config();
  if (o.patch_layer >= static_cast<int>(mc.llm.layers))
    return OptionError(absl::StrCat("--patch_layer: the model has ", mc.llm.layers, " layers"));
  Heads& heads = run->heads;
  heads.aux = AuxHead(mc.llm.hidden, o.aux_targets, o.aux_per_row);
  heads.patch = PatchHead(mc.llm.hidden);
  heads.patch_layer = o.patch_layer;
  if (o.text_aux_weight > 0) heads.text = AuxHead(mc.llm.hidden, o.aux_targets, /*per_row=*/true);
  if (o.attr_weight > 0) heads.attr = AttrHead(mc.llm.hidden);
  if (o.film_patch_weight > 0) {
    if (!mc.instruction_film)
      return OptionError("--film_patch_weight: the model has no instruction FiLM");
    heads.film_patch = PatchHead(mc.llm.hidden);
  }
  const int layers = static_cast<int>(mc.llm.layers);
  if (o.drop_frac > 0 && (o.drop_layer < 0 || o.drop_layer >= layers))
    return OptionError(absl::StrCat("--drop_layer: the model has ", layers, " layers"));
  if (o.drop_frac > 0 && o.drop_specprune > 0) SP_RETURN_IF_ERROR(SetUpServedDropping(o, mc, run));
  heads.attn_loss = o.attn_weight > 0;
  heads.mention_loss = o.mention_weight > 0;
  heads.colour_word_loss = o.colour_word_weight > 0;
  SP_RETURN_IF_ERROR(ResolveLayers(o.attn_layers, static_cast<int>(std::lround(layers / 3.0)),
                                   layers, "attn_layers", &heads.attn_layers));
  SP_RETURN_IF_ERROR(
      ResolveLayers(o.mention_layers, 1, layers, "mention_layers", &heads.mention_layers));
  SP_RETURN_IF_ERROR(ResolveLayers(o.colour_word_layers, 0, layers, "colour_word_layers",
                                   &heads.colour_word_layers));
  for (int l : o.attn_named_layers)
    if (std::find(heads.attn_layers.begin(), heads.attn_layers.end(), l) == heads.attn_layers.end())
      return OptionError(
          absl::StrCat("--attn_named_layers: layer ", l, " is not in --attn_layers"));
  for (int l : heads.attn_layers)
    heads.attn_named.push_back(std::find(o.attn_named_layers.begin(), o.attn_named_layers.end(),
                                         l) != o.attn_named_layers.end());
  const std::string head_dir = run->resume ? o.out : (o.init_weights ? o.init : "");
  if (!head_dir.empty()) {
    if (auto s = LoadHeads(head_dir, &heads); !s.ok()) return RunError(std::string(s.message()));
  }
  return absl::OkStatus();
}

// AdamW over the trunk (decayed matrices, undecayed vectors; the heads' parameters join those
// groups) and, last, the instruction FiLM; a resumed run's optimizer.pt.
absl::Status CreateOptimizer(const TrainOptions& o, Run* run) {
  VlaModule module = run->model->module();
  std::vector<torch::Tensor> decay, no_decay, film;
  for (const auto& p : module->named_parameters()) {
    if (absl::StartsWith(p.key(), "instruction_film."))
      film.push_back(p.value());
    else
      (p.value().dim() >= 2 ? decay : no_decay).push_back(p.value());
  }
  for (const auto& p : run->heads.Parameters()) (p.dim() >= 2 ? decay : no_decay).push_back(p);
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(decay, std::make_unique<torch::optim::AdamWOptions>(
                                 torch::optim::AdamWOptions(o.lr).weight_decay(o.weight_decay)));
  groups.emplace_back(no_decay, std::make_unique<torch::optim::AdamWOptions>(
                                    torch::optim::AdamWOptions(o.lr).weight_decay(0.0)));
  // Last, so a run's optimizer.pt from before the FiLM existed still lines up with groups 0-1.
  run->film_group = groups.size();
  if (!film.empty())
    groups.emplace_back(film, std::make_unique<torch::optim::AdamWOptions>(
                                  torch::optim::AdamWOptions(o.lr).weight_decay(0.0)));
  run->opt = std::make_unique<torch::optim::AdamW>(groups, torch::optim::AdamWOptions(o.lr));
  if (run->resume && fs::exists(o.out + "/optimizer.pt")) {
    try {
      torch::load(*run->opt, o.out + "/optimizer.pt");
    } catch (const c10::Error& e) {
      return RunError(absl::StrCat("resume: optimizer state: ", e.what_without_backtrace()));
    }
  }
  return absl::OkStatus();
}

// Everything before the first step, in the order that fixes the random initialization.
absl::Status SetUp(const TrainOptions& o, Run* run) {
  run->state_path = o.out + "/train_state.json";
  run->resume = fs::exists(run->state_path);
  SP_RETURN_IF_ERROR(CreateModel(o, run));
  fs::create_directories(o.out);
  SP_RETURN_IF_ERROR(LoadWeightsAndStatistics(o, run));
  run->model->module()->train();
  SP_RETURN_IF_ERROR(CreateHeads(o, run));
  return CreateOptimizer(o, run);
}

// Saves the model directory (weights, statistics, tokenizer) into `dir`.
absl::Status SaveAll(const VlaModel& model, const DatasetStatistics& stats_file,
                     const std::string& tokenizer_src, const std::string& dir) {
  SP_RETURN_IF_ERROR(SaveWeights(model, dir, "fp32"));
  SP_RETURN_IF_ERROR(stats_file.Save(dir + "/dataset_statistics.json"));
  std::error_code ec;
  if (fs::absolute(tokenizer_src) != fs::absolute(dir + "/tokenizer.model"))
    fs::copy_file(tokenizer_src, dir + "/tokenizer.model", fs::copy_options::overwrite_existing,
                  ec);
  if (ec) return absl::InternalError(absl::StrCat("copying tokenizer: ", ec.message()));
  return absl::OkStatus();
}

// The checkpoint of step `done` in o.out: the model directory, the optimizer, the training heads
// and train_state.json (each written to .tmp, then renamed).
absl::Status SaveCheckpoint(const TrainOptions& o, Run& run, int64_t done, double loss_ema) {
  if (auto st = SaveAll(*run.model, run.stats_file, run.tok_path, o.out); !st.ok())
    return RunError("checkpoint", st);
  try {
    torch::save(*run.opt, o.out + "/optimizer.pt.tmp");
    fs::rename(o.out + "/optimizer.pt.tmp", o.out + "/optimizer.pt");
  } catch (const c10::Error& e) {
    return RunError(absl::StrCat("checkpoint: optimizer: ", e.what_without_backtrace()));
  }
  if (auto st = SaveHeads(run.heads, o.out); !st.ok())
    return RunError(absl::StrCat("checkpoint: optimizer: ", st.message()));
  nlohmann::json j = {{"step", done}, {"best_success", run.best_success}, {"loss_ema", loss_ema}};
  std::ofstream f(run.state_path + ".tmp");
  f << j.dump(2) << "\n";
  f.close();
  fs::rename(run.state_path + ".tmp", run.state_path);
  return absl::OkStatus();
}

// The held-out set, with how many of its instructions MentionRows parses.
absl::StatusOr<Holdout> MakeHoldoutSet(const TrainOptions& o, const Run& run) {
  auto holdout =
      MakeHoldout(run.model->config(), *run.tok, *run.stats, 256, o.curriculum.fixed_tasks);
  if (!holdout.ok()) return RunError("holdout", holdout.status());
  // MentionRows knows the simulator's templates; an instruction it cannot parse is skipped.
  int64_t found = 0, total = 0;
  for (const auto& b : holdout->batches) {
    found += b.mention_rows.select(1, 0).ge(0).sum().item<int64_t>();
    total += b.mention_rows.size(0);
  }
  std::printf("mentions: found in %lld of %lld held-out instructions\n",
              static_cast<long long>(found), static_cast<long long>(total));
  return holdout;
}

// One DAgger round at step `at`: rollouts on training seeds into the pool, saved to `pool_path`.
absl::Status DaggerRound(const TrainOptions& o, Run& run, int64_t at, std::mt19937_64& rng,
                         DaggerPool& pool, const std::string& pool_path) {
  VlaModule module = run.model->module();
  module->eval();
  auto t0 = Clock::now();
  auto traces = CollectDaggerTraces(*run.model, *run.tok, *run.stats, o, at, rng);
  module->train();
  if (!traces.ok()) return RunError("dagger", traces.status());
  if (auto st = pool.Add(*std::move(traces)); !st.ok()) return RunError("dagger", st);
  if (auto st = pool.Save(pool_path); !st.ok()) return RunError("dagger", st);
  std::printf("dagger pool %zu traces (%.0f s)\n", pool.size(),
              std::chrono::duration<double>(Clock::now() - t0).count());
  std::fflush(stdout);
  return absl::OkStatus();
}

// The exponential moving averages of the losses the log line reports (-1 before the first step).
struct LossEmas {
  double action = -1, aux = -1, patch = -1, text = -1, attr = -1, attn = -1, mention = -1,
         colour = -1;

  static void Update(double x, double* ema) { *ema = *ema < 0 ? x : 0.98 * *ema + 0.02 * x; }
  void Add(const Losses& l) {
    Update(l.action.item<double>(), &action);
    Update(l.aux.item<double>(), &aux);
    Update(l.patch.item<double>(), &patch);
    Update(l.text.item<double>(), &text);
    Update(l.attr.item<double>(), &attr);
    Update(l.attn.item<double>(), &attn);
    Update(l.mention.item<double>(), &mention);
    Update(l.colour.item<double>(), &colour);
  }
};

// The action loss plus every grounding loss whose weight is positive.
torch::Tensor TotalLoss(const TrainOptions& o, const Losses& losses) {
  auto total = losses.action;
  if (o.aux_weight > 0) total = total + o.aux_weight * losses.aux;
  if (o.patch_weight > 0) total = total + o.patch_weight * losses.patch;
  if (o.text_aux_weight > 0) total = total + o.text_aux_weight * losses.text;
  if (o.attr_weight > 0) total = total + o.attr_weight * losses.attr;
  if (o.film_patch_weight > 0) total = total + o.film_patch_weight * losses.film_patch;
  if (o.attn_weight > 0) total = total + o.attn_weight * losses.attn;
  if (o.mention_weight > 0) total = total + o.mention_weight * losses.mention;
  if (o.colour_word_weight > 0) total = total + o.colour_word_weight * losses.colour;
  return total;
}

// The vision-token dropping of step `s`'s batch (TrainOptions::drop_*); the samples on
// SpecPrune's set and their kept tokens are added to *served_samples / *served_kept.
absl::StatusOr<VisionTokenDrop> DropForStep(const TrainOptions& o, Run& run, const BcBatch& batch,
                                            int64_t s, bool bf16, int64_t* served_samples,
                                            int64_t* served_kept) {
  VisionTokenDrop drop;
  if (!(o.drop_frac > 0)) return drop;
  std::mt19937_64 drop_rng(o.seed * 1000003ULL + static_cast<uint64_t>(s));
  drop.layer = o.drop_layer;
  std::vector<int64_t> chosen, served;
  drop.keep = DropKeepMask(batch, o.drop_frac, o.drop_keep_min, o.drop_keep_max, o.drop_item_keep,
                           &drop_rng, &chosen);
  std::uniform_real_distribution<double> u(0, 1);
  for (int64_t i : chosen)
    if (u(drop_rng) < o.drop_specprune) served.push_back(i);
  VlaModule module = run.model->module();
  if (auto st = SetServedKeep(module, run.model->config(), batch, bf16, run.drop_pruning, served,
                              &drop.keep);
      !st.ok())
    return RunError("--drop_specprune", st);
  for (int64_t i : served) *served_kept += drop.keep[i].sum().item<int64_t>();
  *served_samples += static_cast<int64_t>(served.size());
  return drop;
}

// The held-out check after step `done` (printed).
void ReportHoldout(const TrainOptions& o, Run& run, const Holdout& holdout, int64_t done) {
  VlaModule module = run.model->module();
  const ModelConfig& c = run.model->config();
  module->eval();
  run.heads.aux->eval();
  const HoldoutResult hr =
      o.drop_frac > 0 ? EvalHoldout(module, run.heads, c, holdout, o.drop_layer,
                                    (o.drop_keep_min + o.drop_keep_max) / 2, o.drop_item_keep)
                      : EvalHoldout(module, run.heads, c, holdout);
  module->train();
  run.heads.aux->train();
  std::printf(
      "holdout step %lld l1 %.4f corr(first dx) %.3f corr(first dy) %.3f "
      "corr(aux object x) %.3f corr(aux destination x) %.3f corr(aux object - tip x) %.3f "
      "patch top-1 object %.3f destination %.3f corr(text object x) %.3f attribute accuracy "
      "%.3f attention share %.3f mention share %.3f colour word share %.3f\n",
      static_cast<long long>(done), hr.l1, hr.corr_x, hr.corr_y, hr.corr_obj_x, hr.corr_dest_x,
      hr.corr_rel_x, hr.patch_object, hr.patch_destination, hr.corr_text_obj_x, hr.attr_accuracy,
      hr.attn_share, hr.mention_share, hr.colour_share);
  if (std::isfinite(hr.l1_dropped))
    std::printf("holdout step %lld l1 with vision tokens dropped from layer %d: %.4f\n",
                static_cast<long long>(done), o.drop_layer, hr.l1_dropped);
  if (std::isfinite(hr.film_gamma))
    std::printf(
        "holdout step %lld instruction film |gamma| %.4f |beta| %.4f gamma spread between "
        "instructions %.4f pooling weight on item words %.3f patch top-1 object at the LLM "
        "input %.3f\n",
        static_cast<long long>(done), hr.film_gamma, hr.film_beta, hr.film_gamma_spread,
        hr.film_item_weight, hr.film_patch_object);
  std::fflush(stdout);
}

// The closed-loop check after step `done` (printed); a new best is saved to o.out/best.
absl::Status ClosedLoopCheck(const TrainOptions& o, Run& run, int64_t done, bool* new_best) {
  VlaModule module = run.model->module();
  module->eval();
  auto t0 = Clock::now();
  auto rate =
      ClosedLoop(*run.model, *run.tok, *run.stats, o.eval_episodes, o.curriculum.fixed_tasks);
  module->train();
  if (!rate.ok()) return RunError("closed loop", rate.status());
  const double mean = ((*rate)[0] + (*rate)[1] + (*rate)[2] + (*rate)[3]) / 4;
  std::printf(
      "closed-loop step %lld success spatial %.2f object %.2f goal %.2f "
      "long %.2f "
      "mean %.3f (%d eps/suite, %.0f s)\n",
      static_cast<long long>(done), (*rate)[0], (*rate)[1], (*rate)[2], (*rate)[3], mean,
      o.eval_episodes, std::chrono::duration<double>(Clock::now() - t0).count());
  std::fflush(stdout);
  if (mean > run.best_success) {
    run.best_success = mean;
    *new_best = true;
    if (auto st = SaveAll(*run.model, run.stats_file, run.tok_path, o.out + "/best"); !st.ok())
      return RunError("checkpoint", st);
  }
  return absl::OkStatus();
}

// The training loop from run.start_step to o.steps.
absl::Status TrainLoop(const TrainOptions& o, Run& run, std::atomic<int64_t>& step) {
  VlaModule module = run.model->module();
  const ModelConfig& c = run.model->config();
  torch::optim::AdamW& opt = *run.opt;
  SP_ASSIGN_OR_RETURN(const Holdout holdout, MakeHoldoutSet(o, run));
  DaggerPool pool(static_cast<size_t>(o.dagger_pool), static_cast<int>(c.image_size),
                  *ParseDaggerStates(o.dagger_states));
  const std::string pool_path = o.out + "/dagger_pool.txt";
  if (run.resume && o.dagger_every > 0 && fs::exists(pool_path)) {
    if (auto st = pool.Load(pool_path); !st.ok()) return RunError("resume", st);
    std::printf("resumed the DAgger pool: %zu traces\n", pool.size());
  }
  std::mt19937_64 dagger_rng(o.seed * 7919 + static_cast<uint64_t>(run.start_step));
  if (o.dagger_every > 0 && pool.size() == 0)
    SP_RETURN_IF_ERROR(DaggerRound(o, run, run.start_step, dagger_rng, pool, pool_path));
  BatchProducer prod(o, c, *run.tok, *run.stats, &step, o.dagger_every > 0 ? &pool : nullptr);
  const bool bf16 = o.dtype == "bf16";
  LossEmas ema;
  int64_t served_samples = 0, served_kept = 0;  // --drop_specprune's sets since the last log line
  auto t_log = Clock::now();
  double wait_s = 0;
  for (int64_t s = run.start_step; s < o.steps; ++s) {
    auto tw = Clock::now();
    auto batch = prod.Next();
    wait_s += std::chrono::duration<double>(Clock::now() - tw).count();
    if (!batch.ok()) return RunError("data", batch.status());
    const double lr = LearningRate(o, s);
    for (size_t g = 0; g < opt.param_groups().size(); ++g)
      static_cast<torch::optim::AdamWOptions&>(opt.param_groups()[g].options())
          .lr(g == run.film_group && s >= o.head_warmup ? lr * o.film_lr_mult : lr);
    opt.zero_grad();
    SP_ASSIGN_OR_RETURN(const VisionTokenDrop drop,
                        DropForStep(o, run, *batch, s, bf16, &served_samples, &served_kept));
    auto losses = Loss(module, run.heads, c, *batch, bf16, drop);
    TotalLoss(o, losses).backward();
    if (s < o.head_warmup) {
      for (auto& p : module->parameters()) p.mutable_grad() = torch::Tensor();
    }
    auto params = module->parameters();
    for (const auto& p : run.heads.Parameters()) params.push_back(p);
    const double gnorm = torch::nn::utils::clip_grad_norm_(params, o.clip);
    opt.step();
    step.store(s + 1);
    const double l = losses.action.item<double>();
    ema.Add(losses);
    const int64_t done = s + 1;
    if (done % o.log_every == 0) {
      const double dt = std::chrono::duration<double>(Clock::now() - t_log).count();
      std::printf(
          "step %lld loss %.4f ema %.4f aux ema %.4f patch ema %.4f text ema %.4f attr ema %.4f "
          "attn ema %.4f mention ema %.4f colour word ema %.4f lr %.2e gnorm %.2f %.2f steps/s "
          "(data wait %.0f%%)\n",
          static_cast<long long>(done), l, ema.action, ema.aux, ema.patch, ema.text, ema.attr,
          ema.attn, ema.mention, ema.colour, lr, gnorm, o.log_every / dt, 100 * wait_s / dt);
      if (o.drop_specprune > 0) {
        std::printf(
            "step %lld dropped samples on SpecPrune's set: %lld, keeping %.1f%% of the "
            "vision tokens\n",
            static_cast<long long>(done), static_cast<long long>(served_samples),
            served_samples > 0 ? 100.0 * static_cast<double>(served_kept) /
                                     static_cast<double>(served_samples * c.vision_tokens())
                               : 0.0);
        served_samples = served_kept = 0;
      }
      std::fflush(stdout);
      t_log = Clock::now();
      wait_s = 0;
    }
    if (done % o.holdout_every == 0 || done == o.steps) ReportHoldout(o, run, holdout, done);
    if (o.dagger_every > 0 && done % o.dagger_every == 0 && done < o.steps)
      SP_RETURN_IF_ERROR(DaggerRound(o, run, done, dagger_rng, pool, pool_path));
    bool new_best = false;
    if (done % o.eval_every == 0 || done == o.steps)
      SP_RETURN_IF_ERROR(ClosedLoopCheck(o, run, done, &new_best));
    if (done % o.ckpt_every == 0 || done == o.steps || new_best)
      SP_RETURN_IF_ERROR(SaveCheckpoint(o, run, done, ema.action));
  }
  std::printf("done at step %lld\n", static_cast<long long>(o.steps));
  return absl::OkStatus();
}

// SetUp, then the one-shot mode or the training loop.
absl::Status Train(const TrainOptions& o) {
  Run run;
  SP_RETURN_IF_ERROR(SetUp(o, &run));
  std::atomic<int64_t> step{run.start_step};
  VlaModule module = run.model->module();
  const ModelConfig& c = run.model->config();
  if (o.benchmark > 0) {
    if (auto s = Benchmark(o, module, run.heads, c, *run.tok, *run.stats, *run.opt, &step); !s.ok())
      return RunError("--benchmark", s);
    return absl::OkStatus();
  }
  if (o.diagnose > 0) {  // first action and grounding of step 0, default distractors, per suite
    if (auto s = Diagnose(o, module, run.heads, c, *run.tok, *run.stats); !s.ok())
      return RunError("--diagnose", s);
    return absl::OkStatus();
  }
  return TrainLoop(o, run, step);
}

}  // namespace

int RunTraining(const TrainOptions& o) {
  torch::set_num_threads(o.threads);
  const absl::Status s = Train(o);
  if (s.ok()) return 0;
  std::fprintf(stderr, "%s\n", std::string(s.message()).c_str());
  return s.code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
}

}  // namespace specprune
