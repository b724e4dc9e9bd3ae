// specprune_train: behaviour cloning of the `tiny` policy on the simulator's scripted expert
// (issue #6; docs/training.md). Resumable from its own output directory (tools/trainer.h).
#include <cstdint>
#include <cstdio>
#include <string>
#include <type_traits>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "tools/train_diagnostics.h"
#include "tools/train_options.h"
#include "tools/trainer.h"
#include "util/blas_runtime.h"
#include "util/command_line.h"
#include "util/status_macros.h"

namespace {

// The one place of the defaults: TrainOptions' member initializers (tools/train_options.h, with
// each option's meaning).
const specprune::TrainOptions& Defaults() {
  static const specprune::TrainOptions defaults;
  return defaults;
}

// A list default as the comma-separated items a list flag holds.
template <typename T>
std::vector<std::string> ToStrings(const std::vector<T>& values) {
  std::vector<std::string> out;
  for (const T& v : values) out.push_back(absl::StrCat(v));
  return out;
}

}  // namespace

ABSL_FLAG(std::string, out, Defaults().out, "output (and resume) directory");
ABSL_FLAG(std::string, init, Defaults().init,
          "config.json and tokenizer.model source (and weights with --init_weights)");
ABSL_FLAG(int64_t, steps, Defaults().steps, "total optimizer steps");
ABSL_FLAG(int, batch, Defaults().batch, "samples per step");
ABSL_FLAG(double, lr, Defaults().lr, "peak learning rate");
ABSL_FLAG(double, min_lr_ratio, Defaults().min_lr_ratio, "cosine floor as a fraction of --lr");
ABSL_FLAG(double, weight_decay, Defaults().weight_decay, "AdamW weight decay of the matrices");
ABSL_FLAG(int64_t, warmup, Defaults().warmup,
          "linear learning-rate warm-up steps (after --head_warmup)");
ABSL_FLAG(double, clip, Defaults().clip, "gradient-norm clip");
ABSL_FLAG(int, threads, Defaults().threads, "torch intra-op threads");
ABSL_FLAG(int, data_threads, Defaults().data_threads, "batch producer threads");
ABSL_FLAG(std::string, dtype, Defaults().dtype, "autocast dtype of the forward: bf16 or fp32");
ABSL_FLAG(int64_t, log_every, Defaults().log_every, "steps between log lines");
ABSL_FLAG(int64_t, holdout_every, Defaults().holdout_every,
          "steps between held-out checks (loss, correlations, grounding)");
ABSL_FLAG(int64_t, eval_every, Defaults().eval_every, "steps between closed-loop success checks");
ABSL_FLAG(int, eval_episodes, Defaults().eval_episodes, "closed-loop episodes per suite");
ABSL_FLAG(int64_t, ckpt_every, Defaults().ckpt_every, "steps between checkpoints");
ABSL_FLAG(int, max_shift, Defaults().max_shift, "shift augmentation, pixels");
ABSL_FLAG(double, noise_frac, Defaults().curriculum.noise_frac,
          "fraction of demos with noisy execution (DART)");
ABSL_FLAG(double, noise_std, Defaults().curriculum.noise_std, "noise std of those demos");
ABSL_FLAG(int, train_seeds, Defaults().curriculum.train_seeds, "demo seeds per suite: [0, N)");
ABSL_FLAG(int64_t, stage1, Defaults().curriculum.stage1, "curriculum: distractors from this step");
ABSL_FLAG(int64_t, stage2, Defaults().curriculum.stage2,
          "curriculum: the long suite from this step");
ABSL_FLAG(int, stats_episodes, Defaults().stats_episodes,
          "demos per suite for the dataset statistics");
ABSL_FLAG(uint64_t, seed, Defaults().seed, "random seed (model initialization, data)");
ABSL_FLAG(int64_t, benchmark, Defaults().benchmark,
          "> 0: time this many steps fp32 vs bf16 and exit");
ABSL_FLAG(int, check_demos, Defaults().check_demos,
          "> 0: print the expert's success per suite/noise over N seeds and exit");
ABSL_FLAG(int, diagnose, Defaults().diagnose,
          "> 0: print step 0 of N episodes per suite through the checkpoint's heads and exit");
ABSL_FLAG(uint64_t, diagnose_seed, Defaults().diagnose_seed,
          "first seed of --diagnose (e.g. the evaluation's 2000000)");
ABSL_FLAG(double, aux_weight, Defaults().aux_weight,
          "weight of the grounding loss (action rows predict the goal's positions)");
ABSL_FLAG(int, aux_targets, Defaults().aux_targets,
          "grounding targets: 4 (absolute positions) or 8 (also relative to the fingertips)");
ABSL_FLAG(bool, aux_per_row, Defaults().aux_per_row,
          "predict the grounding targets from every action row (else from their mean)");
ABSL_FLAG(double, patch_weight, Defaults().patch_weight,
          "weight of the patch-grounding probe's loss");
ABSL_FLAG(int, patch_layer, Defaults().patch_layer,
          "LLM layer whose vision rows the patch probe reads");
ABSL_FLAG(double, text_aux_weight, Defaults().text_aux_weight,
          "weight of the text-row grounding loss (0 = off)");
ABSL_FLAG(double, attr_weight, Defaults().attr_weight,
          "weight of the patch-attribute loss (0 = off)");
ABSL_FLAG(double, film_patch_weight, Defaults().film_patch_weight,
          "weight of the patch-target loss at the LLM input (0 = off; needs the FiLM)");
ABSL_FLAG(double, attn_weight, Defaults().attn_weight,
          "weight of the attention-grounding loss (0 = off)");
ABSL_FLAG(std::vector<std::string>, attn_layers, ToStrings(Defaults().attn_layers),
          "attention-grounding layers (empty: round(L/3) to the last)");
ABSL_FLAG(std::vector<std::string>, attn_named_layers, ToStrings(Defaults().attn_named_layers),
          "layers of --attn_layers whose target is every item the instruction names");
ABSL_FLAG(double, mention_weight, Defaults().mention_weight,
          "weight of the mention-grounding loss (0 = off)");
ABSL_FLAG(std::vector<std::string>, mention_layers, ToStrings(Defaults().mention_layers),
          "mention-grounding layers (empty: 1 to the last)");
ABSL_FLAG(double, colour_word_weight, Defaults().colour_word_weight,
          "weight of the colour-word loss (0 = off)");
ABSL_FLAG(std::vector<std::string>, colour_word_layers, ToStrings(Defaults().colour_word_layers),
          "colour-word layers (empty: every layer)");
ABSL_FLAG(bool, init_weights, Defaults().init_weights,
          "start from the weights (and heads, statistics) in --init");
ABSL_FLAG(bool, instruction_film, Defaults().instruction_film,
          "add the instruction FiLM to a run starting from --init");
ABSL_FLAG(std::string, film_pooling, Defaults().film_pooling,
          "the FiLM's pooling: mean or attention (needs --instruction_film)");
ABSL_FLAG(double, film_lr_mult, Defaults().film_lr_mult,
          "the FiLM's learning rate as a multiple of the trunk's");
ABSL_FLAG(double, early_frac, Defaults().early_frac,
          "fraction of samples from the first --early_steps steps after a goal becomes current");
ABSL_FLAG(int, early_steps, Defaults().early_steps, "see --early_frac");
ABSL_FLAG(double, long_frac, Defaults().curriculum.long_frac,
          "share of the long suite from --stage2");
ABSL_FLAG(std::vector<std::string>, easy_mix, ToStrings(Defaults().curriculum.easy_mix),
          "relative weights of spatial,object,goal from --stage2");
ABSL_FLAG(double, colour_frac, Defaults().curriculum.colour_frac,
          "fraction of object/long draws redrawn until the colour word decides");
ABSL_FLAG(int, fixed_tasks, Defaults().curriculum.fixed_tasks,
          "0 = procedural tasks; N = the suites' first N fixed tasks (LIBERO's protocol)");
ABSL_FLAG(int64_t, head_warmup, Defaults().head_warmup,
          "steps in which only the training heads learn, at --head_lr");
ABSL_FLAG(double, head_lr, Defaults().head_lr, "learning rate during --head_warmup");
ABSL_FLAG(int64_t, dagger_every, Defaults().dagger_every, "steps between DAgger rounds (0 = off)");
ABSL_FLAG(int, dagger_episodes, Defaults().dagger_episodes, "policy rollouts per DAgger round");
ABSL_FLAG(double, dagger_frac, Defaults().dagger_frac,
          "fraction of each batch drawn from the DAgger pool");
ABSL_FLAG(int, dagger_pool, Defaults().dagger_pool, "DAgger pool capacity, traces");
ABSL_FLAG(std::string, dagger_states, Defaults().dagger_states,
          "DAgger states labelled: empty, goal or all");
ABSL_FLAG(double, drop_frac, Defaults().drop_frac,
          "fraction of samples trained under vision-token dropping (0 = off)");
ABSL_FLAG(int, drop_layer, Defaults().drop_layer, "first LLM layer without the dropped tokens");
ABSL_FLAG(double, drop_keep_min, Defaults().drop_keep_min,
          "lowest share of vision tokens a dropped sample keeps");
ABSL_FLAG(double, drop_keep_max, Defaults().drop_keep_max,
          "highest share of vision tokens a dropped sample keeps");
ABSL_FLAG(double, drop_item_keep, Defaults().drop_item_keep,
          "probability of keeping each patch of a named item");
ABSL_FLAG(double, drop_specprune, Defaults().drop_specprune,
          "share of dropped samples kept on SpecPrune's static set instead");
ABSL_FLAG(std::string, drop_pruning, Defaults().drop_pruning,
          "pruning config file for --drop_specprune (as specprune_eval --pruning)");

namespace specprune {
namespace {

constexpr char kUsage[] =
    "usage: specprune_train [flags]\n"
    "Behaviour cloning of the tabletop expert into a servable checkpoint (docs/training.md).\n"
    "Rerunning the same command resumes from the checkpoint in --out. List flags take a,b,c.\n"
    "Meanings in detail: TrainOptions in tools/train_options.h.";

// The items of a list flag as numbers; InvalidArgument naming the flag for a bad item.
template <typename T>
absl::StatusOr<std::vector<T>> ParseList(const char* flag, const std::vector<std::string>& items) {
  std::vector<T> out;
  for (const std::string& item : items) {
    if (item.empty()) continue;
    T v{};
    bool ok;
    if constexpr (std::is_same_v<T, int>)
      ok = absl::SimpleAtoi(item, &v);
    else
      ok = absl::SimpleAtod(item, &v);
    if (!ok) return absl::InvalidArgumentError(absl::StrCat("--", flag, ": bad item '", item, "'"));
    out.push_back(v);
  }
  return out;
}

absl::StatusOr<TrainOptions> OptionsFromFlags() {
  TrainOptions o;
  o.out = absl::GetFlag(FLAGS_out);
  o.init = absl::GetFlag(FLAGS_init);
  o.steps = absl::GetFlag(FLAGS_steps);
  o.batch = absl::GetFlag(FLAGS_batch);
  o.lr = absl::GetFlag(FLAGS_lr);
  o.min_lr_ratio = absl::GetFlag(FLAGS_min_lr_ratio);
  o.weight_decay = absl::GetFlag(FLAGS_weight_decay);
  o.warmup = absl::GetFlag(FLAGS_warmup);
  o.clip = absl::GetFlag(FLAGS_clip);
  o.threads = absl::GetFlag(FLAGS_threads);
  o.data_threads = absl::GetFlag(FLAGS_data_threads);
  o.dtype = absl::GetFlag(FLAGS_dtype);
  o.log_every = absl::GetFlag(FLAGS_log_every);
  o.holdout_every = absl::GetFlag(FLAGS_holdout_every);
  o.eval_every = absl::GetFlag(FLAGS_eval_every);
  o.eval_episodes = absl::GetFlag(FLAGS_eval_episodes);
  o.ckpt_every = absl::GetFlag(FLAGS_ckpt_every);
  o.max_shift = absl::GetFlag(FLAGS_max_shift);
  o.curriculum.noise_frac = absl::GetFlag(FLAGS_noise_frac);
  o.curriculum.noise_std = absl::GetFlag(FLAGS_noise_std);
  o.curriculum.train_seeds = absl::GetFlag(FLAGS_train_seeds);
  o.curriculum.stage1 = absl::GetFlag(FLAGS_stage1);
  o.curriculum.stage2 = absl::GetFlag(FLAGS_stage2);
  o.stats_episodes = absl::GetFlag(FLAGS_stats_episodes);
  o.seed = absl::GetFlag(FLAGS_seed);
  o.benchmark = absl::GetFlag(FLAGS_benchmark);
  o.check_demos = absl::GetFlag(FLAGS_check_demos);
  o.diagnose = absl::GetFlag(FLAGS_diagnose);
  o.diagnose_seed = absl::GetFlag(FLAGS_diagnose_seed);
  o.aux_weight = absl::GetFlag(FLAGS_aux_weight);
  o.aux_targets = absl::GetFlag(FLAGS_aux_targets);
  o.aux_per_row = absl::GetFlag(FLAGS_aux_per_row);
  o.patch_weight = absl::GetFlag(FLAGS_patch_weight);
  o.patch_layer = absl::GetFlag(FLAGS_patch_layer);
  o.text_aux_weight = absl::GetFlag(FLAGS_text_aux_weight);
  o.attr_weight = absl::GetFlag(FLAGS_attr_weight);
  o.film_patch_weight = absl::GetFlag(FLAGS_film_patch_weight);
  o.attn_weight = absl::GetFlag(FLAGS_attn_weight);
  SP_ASSIGN_OR_RETURN(o.attn_layers,
                      ParseList<int>("attn_layers", absl::GetFlag(FLAGS_attn_layers)));
  SP_ASSIGN_OR_RETURN(o.attn_named_layers,
                      ParseList<int>("attn_named_layers", absl::GetFlag(FLAGS_attn_named_layers)));
  o.mention_weight = absl::GetFlag(FLAGS_mention_weight);
  SP_ASSIGN_OR_RETURN(o.mention_layers,
                      ParseList<int>("mention_layers", absl::GetFlag(FLAGS_mention_layers)));
  o.colour_word_weight = absl::GetFlag(FLAGS_colour_word_weight);
  SP_ASSIGN_OR_RETURN(
      o.colour_word_layers,
      ParseList<int>("colour_word_layers", absl::GetFlag(FLAGS_colour_word_layers)));
  o.init_weights = absl::GetFlag(FLAGS_init_weights);
  o.instruction_film = absl::GetFlag(FLAGS_instruction_film);
  o.film_pooling = absl::GetFlag(FLAGS_film_pooling);
  o.film_lr_mult = absl::GetFlag(FLAGS_film_lr_mult);
  o.early_frac = absl::GetFlag(FLAGS_early_frac);
  o.early_steps = absl::GetFlag(FLAGS_early_steps);
  o.curriculum.long_frac = absl::GetFlag(FLAGS_long_frac);
  SP_ASSIGN_OR_RETURN(o.curriculum.easy_mix,
                      ParseList<double>("easy_mix", absl::GetFlag(FLAGS_easy_mix)));
  o.curriculum.colour_frac = absl::GetFlag(FLAGS_colour_frac);
  o.curriculum.fixed_tasks = absl::GetFlag(FLAGS_fixed_tasks);
  o.head_warmup = absl::GetFlag(FLAGS_head_warmup);
  o.head_lr = absl::GetFlag(FLAGS_head_lr);
  o.dagger_every = absl::GetFlag(FLAGS_dagger_every);
  o.dagger_episodes = absl::GetFlag(FLAGS_dagger_episodes);
  o.dagger_frac = absl::GetFlag(FLAGS_dagger_frac);
  o.dagger_pool = absl::GetFlag(FLAGS_dagger_pool);
  o.dagger_states = absl::GetFlag(FLAGS_dagger_states);
  o.drop_frac = absl::GetFlag(FLAGS_drop_frac);
  o.drop_layer = absl::GetFlag(FLAGS_drop_layer);
  o.drop_keep_min = absl::GetFlag(FLAGS_drop_keep_min);
  o.drop_keep_max = absl::GetFlag(FLAGS_drop_keep_max);
  o.drop_item_keep = absl::GetFlag(FLAGS_drop_item_keep);
  o.drop_specprune = absl::GetFlag(FLAGS_drop_specprune);
  o.drop_pruning = absl::GetFlag(FLAGS_drop_pruning);
  return o;
}

}  // namespace
}  // namespace specprune

int main(int argc, char** argv) {
  specprune::ParseFlagsOnlyOrExit(argc, argv, specprune::kUsage);
  absl::StatusOr<specprune::TrainOptions> o = specprune::OptionsFromFlags();
  if (o.ok()) {
    if (absl::Status s = specprune::ValidateTrainOptions(*o); !s.ok()) o = s;
  }
  if (!o.ok()) {
    std::fprintf(stderr, "%s\n", std::string(o.status().message()).c_str());
    return 2;
  }
  specprune::ConfigureBlasFromFlagsOrExit(argv, o->threads, "specprune_train");
  // The log records how the run was started, so a checkpoint's lineage can be re-run.
  std::string command = "command:";
  for (int i = 0; i < argc; ++i) absl::StrAppend(&command, " ", argv[i]);
  std::printf("%s\n", command.c_str());
  if (o->check_demos > 0) {
    if (absl::Status s = specprune::CheckDemos(*o); !s.ok()) {
      std::fprintf(stderr, "%s\n", s.ToString().c_str());
      return 1;
    }
    return 0;
  }
  return specprune::RunTraining(*o);
}
