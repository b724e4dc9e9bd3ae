// specprune_train: behaviour cloning of the `tiny` policy on the simulator's
// scripted expert (issue #6; docs/training.md). Resumable from its own output
// directory.
#include <ATen/autocast_mode.h>
#include <torch/torch.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "model/checkpoint.h"
#include "model/tokenizer.h"
#include "nlohmann/json.hpp"
#include "tools/bc_data.h"
#include "tools/flag_map.h"

namespace specprune {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

struct TrainOptions {
  std::string out = "models/tiny-trained";  // output (and resume) directory
  std::string init = "models/tiny";         // config.json + tokenizer.model source
  int64_t steps = 20000;                    // total optimizer steps
  int batch = 48;
  double lr = 5e-4;
  double min_lr_ratio = 0.05;  // cosine floor as a fraction of lr
  double weight_decay = 0.01;
  int64_t warmup = 500;
  double clip = 1.0;
  int threads = 2;             // torch intra-op threads
  int data_threads = 1;        // batch producer threads
  std::string dtype = "bf16";  // autocast dtype of the forward: bf16 or fp32
  int64_t log_every = 50;
  int64_t holdout_every = 500;  // held-out loss + first-action correlation
  int64_t eval_every = 2000;    // closed-loop success
  int eval_episodes = 8;        // per suite
  int64_t ckpt_every = 500;
  int max_shift = 3;         // shift augmentation, pixels
  Curriculum curriculum;     // which demos a step draws from
  int stats_episodes = 200;  // demos per suite for the statistics
  uint64_t seed = 1;
  int64_t benchmark = 0;       // > 0: time this many steps fp32 vs bf16 and exit
  int check_demos = 0;         // > 0: print expert success per suite/noise over N seeds, exit
  int diagnose = 0;            // > 0: print step-0 expert vs model first action for N seeds, exit
  uint64_t diagnose_seed = 0;  // first seed of --diagnose (e.g. the evaluation's 2000000)
  // Weight of the auxiliary grounding loss: an MLP on the action rows predicts the current goal's
  // object and destination positions (RawSample::aux). Training only: the head is saved to
  // aux_head.pt for resuming, never into the served model.
  double aux_weight = 1.0;
  int aux_targets = kAuxTargetDim;  // 4: absolute positions; 8: also relative to the fingertips
  bool aux_per_row = true;          // predict from every action row (else from their mean)
  // Weight of the patch-grounding loss: a linear probe on the vision rows after LLM layer
  // `patch_layer` classifies, per patch, whether it shows the current goal's object / destination
  // (BcBatch::patch_labels), so the language-conditioned selection is learned where the action rows
  // can read it. Training only: saved to patch_head.pt. 0 = off.
  double patch_weight = 1.0;
  int patch_layer = 2;
  // Weight of the text-row grounding loss (0 = off): every prompt row's final hidden state predicts
  // the same targets as the action-row head (RawSample::aux), a referring-expression task like a
  // VLM's grounding pretraining. The instruction rows must then gather the named object's and
  // destination's patches, so text->vision attention (SpecPrune's Score_l) carries that signal as
  // it does in OpenVLA-OFT (the paper's Insight 1). Training only: saved to text_head.pt.
  double text_aux_weight = 0.0;
  // Weight of the patch-attribute loss (0 = off): a linear probe on the vision tokens entering the
  // LLM classifies the shape and colour of what each patch shows (BcBatch::patch_attributes), as a
  // VLA's pretrained vision towers already encode objects; patches in the middle of an object's
  // top face must then carry the object's shape, which only its outline shows. Training only:
  // saved to attr_head.pt.
  double attr_weight = 0.0;
  // Weight of a patch-target loss on the vision tokens as they enter the LLM (0 = off; needs the
  // instruction FiLM): the same target as `patch_weight` (which patches show the current goal's
  // object / destination), from a second probe, so the FiLM-ed tokens themselves must say which
  // object the instruction names. Training only: saved to film_patch_head.pt.
  double film_patch_weight = 0.0;
  // Weight of the attention-grounding loss (0 = off): at each of `attn_layers` (default: from
  // round(L / 3) to the last layer), -log of the share of the prompt rows' attention over the
  // vision tokens (SpecPrune's Score_l, renormalized over the vision columns) that falls on the
  // current goal's object, plus the same for its destination (BcBatch::patch_labels, both cameras).
  // It gives the policy the property the paper measured on OpenVLA-OFT (Insight 1: middle and deep
  // layers' text->image attention concentrates on the task's objects); a from-scratch 6-layer
  // model does not develop it (its text->object attention share is about the object's share of
  // the tokens), so no attention-based pruning can find the objects in it.
  double attn_weight = 0.0;
  std::vector<int> attn_layers;
  // Layers of `attn_layers` whose target is every item the instruction names (all goals' objects
  // and destinations, BcBatch::named_labels) instead of the current goal's. For the layers
  // SpecPrune reads the current step's V_local from: in `long` the early layers cannot tell which
  // sub-task is current, and a target they cannot meet left the second sub-task's object out of
  // the kept set after the switch (docs/training.md).
  std::vector<int> attn_named_layers;
  // Weight of the mention-grounding loss (0 = off): at each of `mention_layers` (default: 1 to the
  // last layer), -log of the share of the attention of the token that ends each item mention
  // (BcBatch::mention_rows: "cube" in "the red cube", "plate" in "the blue plate"), renormalized
  // over the vision tokens, that falls on the item it names (BcBatch::mention_labels). Where the
  // attention-grounding loss pools every prompt row, this targets the one row that has read the
  // colour word and the shape word and can bind them (layer 0's query has not yet seen the colour
  // word, so it is not a default layer).
  double mention_weight = 0.0;
  std::vector<int> mention_layers;
  // Weight of the colour-word loss (0 = off): the same for the token of each colour word
  // (BcBatch::colour_rows) at each of `colour_word_layers` (default: every layer), whose target
  // is every patch showing that colour (BcBatch::patch_attributes). No binding is needed: at
  // layer 0 the row's query is the word's own embedding, so this asks whether the colour word
  // can find its colour among the vision tokens at all.
  double colour_word_weight = 0.0;
  std::vector<int> colour_word_layers;
  // Start from the weights in `init` (and its aux_head.pt / patch_head.pt when present, and its
  // dataset statistics when they have the simulator key) instead of a random initialization;
  // ignored when resuming from `out`.
  bool init_weights = false;
  // Turn on ModelConfig::instruction_film for a run starting from `init` (ignored when resuming:
  // the run's own config.json has it). With --init_weights, the new module starts at zero, so the
  // run starts from init's behaviour. Its parameters learn at `film_lr_mult` x the trunk's LR (and
  // not during head_warmup).
  bool instruction_film = false;
  std::string film_pooling = "mean";  // ModelConfig::instruction_film_pooling for such a run
  double film_lr_mult = 1.0;
  // Fraction of samples drawn from the first `early_steps` steps after a goal becomes current
  // (episode start; in `long`, also the switch to the second goal) instead of uniformly: the
  // transit towards the goal's object is where the scene and instruction decide the action, and
  // it is a small part of a demo.
  double early_frac = 0.5;
  int early_steps = 24;
  // DAgger: every `dagger_every` steps (0 = off) the current policy drives `dagger_episodes`
  // training episodes closed loop (suites and distractors as the curriculum draws them, no noise);
  // the traces join a pool of at most `dagger_pool` (oldest dropped), and `dagger_frac` of every
  // batch is drawn from the pool's visited states, labelled by the expert taking over there.
  int64_t dagger_every = 0;
  // Steps (counted from 0) in which only the training-only heads learn, at the constant `head_lr`;
  // the trunk's gradients are dropped and its LR schedule (warm-up, cosine) starts afterwards. For
  // fine-tuning from weights whose heads were not kept: freshly initialized heads would otherwise
  // push random gradients into the trained trunk.
  int64_t head_warmup = 0;
  double head_lr = 1e-3;
  int dagger_episodes = 48;
  double dagger_frac = 0.5;
  int dagger_pool = 1500;
  // Which visited states are labelled: "empty" = only where the gripper holds nothing (choosing and
  // approaching what to grasp: wrong-object and copycat errors), "all" = every step. With "all",
  // states holding a wrong object get the expert's "let go at once" label, which looks like the
  // legitimate second sub-task of `long` and taught a fine-tune to drop objects mid-air. "goal" =
  // "empty" plus the steps holding an object some goal moves (carrying it; in `long` also the
  // second sub-task's object taken first, which the expert now carries to its own plate).
  std::string dagger_states = "empty";
  // Training under vision-token dropping (0 = off), so the policy learns to act on the subset a
  // pruner keeps: this fraction of each batch's samples loses vision tokens from LLM layer
  // `drop_layer` on: the layer after SpecPrune's last local layer, where its static pruning
  // removes tokens (1 for the 6-layer `tiny`, whose scaled local layers are {0}; 2 for
  // OpenVLA-OFT's 32 layers).
  // A dropped sample keeps each patch of the items its instruction names (BcBatch::patch_labels
  // and named_labels: what SpecPrune's V_global and V_local are trained to find) with probability
  // `drop_item_keep`, and random other patches until its kept share of the vision tokens reaches
  // one drawn uniformly from [drop_keep_min, drop_keep_max]. The held-out check then also reports
  // the L1 with every sample dropped at the middle of that range.
  double drop_frac = 0.0;
  int drop_layer = 1;
  double drop_keep_min = 0.2;
  double drop_keep_max = 0.5;
  double drop_item_keep = 0.9;
  // Share of the dropped samples whose kept set is instead the one SpecPrune's static pruning
  // keeps (SpecPruneStaticKeep) on that sample: a no-grad bf16/fp32 pass without dropping gives
  // Score_l at the local layers and the global prior (mean Score_l of the global layers; the served
  // prior is the previous pass's), and the sample's target chunk stands for the previous chunk
  // that sets the controller's mode. Teaches the policy the subset the served pruner keeps rather
  // than random ones. The pruning config: `drop_pruning` (a file as specprune_eval's --pruning)
  // over the defaults scaled to the model; drop_layer must be the layer after its last local one.
  double drop_specprune = 0.0;
  std::string drop_pruning;
};

void SetAutocast(bool on) {
  SetCpuAutocast(on);
  if (!on) at::autocast::clear_cache();
}

// "0,2,5" -> {0, 2, 5}, "1,2.5" -> {1.0, 2.5}; std::stoi / std::stod throw on a bad entry
// (ParseArgs reports it).
template <typename T>
std::vector<T> ParseList(const std::string& v) {
  std::vector<T> out;
  for (absl::string_view part : absl::StrSplit(v, ',', absl::SkipEmpty())) {
    if constexpr (std::is_same_v<T, int>)
      out.push_back(std::stoi(std::string(part)));
    else
      out.push_back(std::stod(std::string(part)));
  }
  return out;
}

// --dagger_states: "empty", "goal", "all"; nullopt otherwise.
std::optional<LabelledStates> ParseDaggerStates(const std::string& v) {
  if (v == "empty") return LabelledStates::kEmptyGripper;
  if (v == "goal") return LabelledStates::kEmptyOrGoalObject;
  if (v == "all") return LabelledStates::kAll;
  return std::nullopt;
}

bool ParseArgs(int argc, char** argv, TrainOptions* o) {
  const auto parsed = ParseFlagMap(argc, argv);
  if (!parsed.has_value()) return false;
  const std::map<std::string, std::string>& kv = *parsed;
  try {
    for (const auto& [k, v] : kv) {
      if (k == "out")
        o->out = v;
      else if (k == "init")
        o->init = v;
      else if (k == "steps")
        o->steps = std::stoll(v);
      else if (k == "batch")
        o->batch = std::stoi(v);
      else if (k == "lr")
        o->lr = std::stod(v);
      else if (k == "min_lr_ratio")
        o->min_lr_ratio = std::stod(v);
      else if (k == "weight_decay")
        o->weight_decay = std::stod(v);
      else if (k == "warmup")
        o->warmup = std::stoll(v);
      else if (k == "clip")
        o->clip = std::stod(v);
      else if (k == "threads")
        o->threads = std::stoi(v);
      else if (k == "data_threads")
        o->data_threads = std::stoi(v);
      else if (k == "dtype")
        o->dtype = v;
      else if (k == "log_every")
        o->log_every = std::stoll(v);
      else if (k == "holdout_every")
        o->holdout_every = std::stoll(v);
      else if (k == "eval_every")
        o->eval_every = std::stoll(v);
      else if (k == "eval_episodes")
        o->eval_episodes = std::stoi(v);
      else if (k == "ckpt_every")
        o->ckpt_every = std::stoll(v);
      else if (k == "max_shift")
        o->max_shift = std::stoi(v);
      else if (k == "noise_frac")
        o->curriculum.noise_frac = std::stod(v);
      else if (k == "noise_std")
        o->curriculum.noise_std = std::stod(v);
      else if (k == "train_seeds")
        o->curriculum.train_seeds = std::stoi(v);
      else if (k == "stage1")
        o->curriculum.stage1 = std::stoll(v);
      else if (k == "stage2")
        o->curriculum.stage2 = std::stoll(v);
      else if (k == "stats_episodes")
        o->stats_episodes = std::stoi(v);
      else if (k == "seed")
        o->seed = std::stoull(v);
      else if (k == "benchmark")
        o->benchmark = std::stoll(v);
      else if (k == "check_demos")
        o->check_demos = std::stoi(v);
      else if (k == "diagnose")
        o->diagnose = std::stoi(v);
      else if (k == "diagnose_seed")
        o->diagnose_seed = std::stoull(v);
      else if (k == "aux_weight")
        o->aux_weight = std::stod(v);
      else if (k == "aux_targets")
        o->aux_targets = std::stoi(v);
      else if (k == "aux_per_row")
        o->aux_per_row = v != "0" && v != "false";
      else if (k == "patch_weight")
        o->patch_weight = std::stod(v);
      else if (k == "patch_layer")
        o->patch_layer = std::stoi(v);
      else if (k == "text_aux_weight")
        o->text_aux_weight = std::stod(v);
      else if (k == "attr_weight")
        o->attr_weight = std::stod(v);
      else if (k == "film_patch_weight")
        o->film_patch_weight = std::stod(v);
      else if (k == "attn_weight")
        o->attn_weight = std::stod(v);
      else if (k == "attn_named_layers")
        o->attn_named_layers = ParseList<int>(v);
      else if (k == "attn_layers")
        o->attn_layers = ParseList<int>(v);
      else if (k == "mention_weight")
        o->mention_weight = std::stod(v);
      else if (k == "mention_layers")
        o->mention_layers = ParseList<int>(v);
      else if (k == "colour_word_weight")
        o->colour_word_weight = std::stod(v);
      else if (k == "colour_word_layers")
        o->colour_word_layers = ParseList<int>(v);
      else if (k == "init_weights")
        o->init_weights = v != "0" && v != "false";
      else if (k == "instruction_film")
        o->instruction_film = v != "0" && v != "false";
      else if (k == "film_pooling")
        o->film_pooling = v;
      else if (k == "film_lr_mult")
        o->film_lr_mult = std::stod(v);
      else if (k == "early_frac")
        o->early_frac = std::stod(v);
      else if (k == "early_steps")
        o->early_steps = std::stoi(v);
      else if (k == "long_frac")
        o->curriculum.long_frac = std::stod(v);
      else if (k == "easy_mix")
        o->curriculum.easy_mix = ParseList<double>(v);
      else if (k == "colour_frac")
        o->curriculum.colour_frac = std::stod(v);
      else if (k == "fixed_tasks")
        o->curriculum.fixed_tasks = std::stoi(v);
      else if (k == "head_warmup")
        o->head_warmup = std::stoll(v);
      else if (k == "head_lr")
        o->head_lr = std::stod(v);
      else if (k == "dagger_every")
        o->dagger_every = std::stoll(v);
      else if (k == "dagger_episodes")
        o->dagger_episodes = std::stoi(v);
      else if (k == "dagger_frac")
        o->dagger_frac = std::stod(v);
      else if (k == "dagger_pool")
        o->dagger_pool = std::stoi(v);
      else if (k == "dagger_states")
        o->dagger_states = v;
      else if (k == "drop_frac")
        o->drop_frac = std::stod(v);
      else if (k == "drop_layer")
        o->drop_layer = std::stoi(v);
      else if (k == "drop_keep_min")
        o->drop_keep_min = std::stod(v);
      else if (k == "drop_keep_max")
        o->drop_keep_max = std::stod(v);
      else if (k == "drop_item_keep")
        o->drop_item_keep = std::stod(v);
      else if (k == "drop_specprune")
        o->drop_specprune = std::stod(v);
      else if (k == "drop_pruning")
        o->drop_pruning = v;
      else {
        std::fprintf(stderr, "unknown flag --%s\n", k.c_str());
        return false;
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bad flag value: %s\n", e.what());
    return false;
  }
  if (!(o->drop_frac >= 0 && o->drop_frac <= 1) ||
      !(o->drop_item_keep >= 0 && o->drop_item_keep <= 1) ||
      !(o->drop_specprune >= 0 && o->drop_specprune <= 1)) {
    std::fprintf(stderr, "--drop_frac, --drop_item_keep and --drop_specprune must be in [0, 1]\n");
    return false;
  }
  if (!(o->drop_keep_min > 0 && o->drop_keep_min <= o->drop_keep_max && o->drop_keep_max <= 1)) {
    std::fprintf(stderr, "--drop_keep_min/--drop_keep_max: need 0 < min <= max <= 1\n");
    return false;
  }
  if (o->dtype != "bf16" && o->dtype != "fp32") {
    std::fprintf(stderr, "--dtype: use bf16 or fp32\n");
    return false;
  }
  if (o->aux_targets != 4 && o->aux_targets != kAuxTargetDim) {
    std::fprintf(stderr, "--aux_targets: use 4 or %d\n", kAuxTargetDim);
    return false;
  }
  if (o->curriculum.easy_mix.size() != 3 ||
      std::any_of(o->curriculum.easy_mix.begin(), o->curriculum.easy_mix.end(),
                  [](double w) { return !(w >= 0); }) ||
      o->curriculum.easy_mix[0] + o->curriculum.easy_mix[1] + o->curriculum.easy_mix[2] <= 0) {
    std::fprintf(stderr,
                 "--easy_mix: three non-negative weights (spatial,object,goal), not all 0\n");
    return false;
  }
  if (o->early_frac < 0 || o->early_frac > 1 || o->early_steps < 1 || o->curriculum.long_frac < 0 ||
      o->curriculum.long_frac > 1 ||
      !(o->curriculum.colour_frac >= 0 && o->curriculum.colour_frac <= 1)) {
    std::fprintf(stderr,
                 "--early_frac, --long_frac, --colour_frac must be in [0, 1], --early_steps "
                 "positive\n");
    return false;
  }
  if (o->curriculum.fixed_tasks < 0 || o->curriculum.fixed_tasks > sim::kMaxFixedTasks) {
    std::fprintf(stderr, "--fixed_tasks: must be in [0, %d]\n", sim::kMaxFixedTasks);
    return false;
  }
  if (o->curriculum.fixed_tasks > 0 && o->dagger_every > 0) {
    std::fprintf(stderr, "--fixed_tasks: not supported with DAgger (--dagger_every)\n");
    return false;
  }
  if (o->dagger_every < 0 || o->dagger_episodes < 1 || o->dagger_frac < 0 || o->dagger_frac > 1 ||
      o->dagger_pool < 1) {
    std::fprintf(stderr,
                 "--dagger_every must be >= 0, --dagger_episodes and --dagger_pool positive, "
                 "--dagger_frac in [0, 1]\n");
    return false;
  }
  if (!ParseDaggerStates(o->dagger_states).has_value()) {
    std::fprintf(stderr, "--dagger_states: use empty, goal or all\n");
    return false;
  }
  if (o->batch < 1 || o->steps < 1 || o->threads < 1 || o->data_threads < 1) {
    std::fprintf(stderr, "--batch, --steps, --threads, --data_threads must be positive\n");
    return false;
  }
  return true;
}

// Held-out and training seeds never overlap: held-out seeds start here.
constexpr uint64_t kHoldoutSeedBase = 1000000;

// DAgger aggregate of policy traces (TrainOptions::dagger_*). Thread-safe: the training loop adds,
// the producer samples.
class DaggerPool {
 public:
  // `states`: the steps of a trace that are sampled (TrainOptions::dagger_states).
  DaggerPool(size_t capacity, int image_size, LabelledStates states)
      : capacity_(capacity), image_size_(image_size), states_(states) {}

  absl::Status Add(std::vector<PolicyTrace> traces) {
    std::vector<Entry> entries;
    for (auto& t : traces) {
      if (t.executed.empty()) continue;
      Entry e;
      auto steps = TraceStepsToLabel(t, image_size_, states_);
      if (!steps.ok()) return steps.status();
      if (steps->empty()) continue;
      e.steps = *std::move(steps);
      e.trace = std::make_shared<const PolicyTrace>(std::move(t));
      entries.push_back(std::move(e));
    }
    std::lock_guard<std::mutex> l(mu_);
    for (auto& e : entries) entries_.push_back(std::move(e));
    while (entries_.size() > capacity_) entries_.pop_front();
    return absl::OkStatus();
  }

  // A trace and a step to label, or a null trace while the pool is empty. The suite is drawn
  // uniformly among those in the pool (failed `long` rollouts are long and many, and would
  // otherwise dominate), then a trace of it, then one of its eligible steps.
  std::pair<std::shared_ptr<const PolicyTrace>, int> Sample(std::mt19937_64& rng) const {
    std::lock_guard<std::mutex> l(mu_);
    if (entries_.empty()) return {nullptr, 0};
    std::vector<int> suites;
    for (const Entry& e : entries_) {
      const int s = static_cast<int>(e.trace->spec.suite);
      if (std::find(suites.begin(), suites.end(), s) == suites.end()) suites.push_back(s);
    }
    const int suite = suites[rng() % suites.size()];
    std::vector<const Entry*> of_suite;
    for (const Entry& e : entries_)
      if (static_cast<int>(e.trace->spec.suite) == suite) of_suite.push_back(&e);
    const Entry& e = *of_suite[rng() % of_suite.size()];
    return {e.trace, e.steps[rng() % e.steps.size()]};
  }

  size_t size() const {
    std::lock_guard<std::mutex> l(mu_);
    return entries_.size();
  }

  // Text file, one trace per line: suite seed distractors success n, then n x 7 actions.
  absl::Status Save(const std::string& path) const {
    std::lock_guard<std::mutex> l(mu_);
    std::FILE* f = std::fopen((path + ".tmp").c_str(), "w");
    if (f == nullptr) return absl::InternalError(absl::StrCat("cannot write ", path, ".tmp"));
    for (const Entry& e : entries_) {
      const PolicyTrace* t = e.trace.get();
      std::fprintf(f, "%d %llu %d %d %zu", static_cast<int>(t->spec.suite),
                   static_cast<unsigned long long>(t->spec.seed), t->spec.num_distractors,
                   t->success ? 1 : 0, t->executed.size());
      for (const sim::Action& a : t->executed)
        for (float v : a) std::fprintf(f, " %.9g", v);
      std::fputc('\n', f);
    }
    const bool ok = std::fclose(f) == 0;
    std::error_code ec;
    if (ok) fs::rename(path + ".tmp", path, ec);
    if (!ok || ec) return absl::InternalError(absl::StrCat("cannot write ", path));
    return absl::OkStatus();
  }

  absl::Status Load(const std::string& path) {
    std::ifstream f(path);
    if (!f) return absl::NotFoundError(absl::StrCat("cannot read ", path));
    std::vector<PolicyTrace> loaded;
    int suite, distractors, success;
    unsigned long long seed;
    size_t n;
    while (f >> suite >> seed >> distractors >> success >> n) {
      if (suite < 0 || suite > 3 || n > 100000)
        return absl::DataLossError(absl::StrCat(path, ": bad trace header"));
      PolicyTrace t;
      t.spec.suite = static_cast<sim::Suite>(suite);
      t.spec.seed = seed;
      t.spec.num_distractors = distractors;
      t.success = success != 0;
      t.executed.resize(n);
      for (auto& a : t.executed)
        for (float& v : a)
          if (!(f >> v)) return absl::DataLossError(absl::StrCat(path, ": truncated trace"));
      loaded.push_back(std::move(t));
    }
    return Add(std::move(loaded));
  }

 private:
  struct Entry {
    std::shared_ptr<const PolicyTrace> trace;
    std::vector<int> steps;  // the steps that may be sampled (TraceStepsToLabel)
  };
  const size_t capacity_;
  const int image_size_;
  const LabelledStates states_;
  mutable std::mutex mu_;
  std::deque<Entry> entries_;
};

// Background batch producer (bounded queue).
class Producer {
 public:
  Producer(const TrainOptions& o, const ModelConfig& c, const Tokenizer& tok,
           const DatasetStats& stats, std::atomic<int64_t>* step, const DaggerPool* pool)
      : o_(o), c_(c), tok_(tok), stats_(stats), step_(step), pool_(pool) {
    for (int i = 0; i < o.data_threads; ++i)
      threads_.emplace_back([this, i] { Run(o_.seed * 1000 + i + 17 * step_->load()); });
  }
  ~Producer() {
    {
      std::lock_guard<std::mutex> l(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }
  absl::StatusOr<BcBatch> Next() {
    std::unique_lock<std::mutex> l(mu_);
    cv_.wait(l, [&] { return !queue_.empty() || !error_.ok(); });
    if (!error_.ok()) return error_;
    BcBatch b = std::move(queue_.front());
    queue_.pop_front();
    cv_.notify_all();
    return b;
  }

 private:
  void Run(uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::map<std::tuple<int, uint64_t, int, float>, DemoSummary> demos;
    while (true) {
      std::vector<RawSample> raw;
      while (static_cast<int>(raw.size()) < o_.batch) {
        if (pool_ != nullptr && o_.dagger_frac > 0 &&
            std::uniform_real_distribution<double>(0, 1)(rng) < o_.dagger_frac) {
          if (auto [trace, t] = pool_->Sample(rng); trace != nullptr) {
            auto r = MakeTraceSample(*trace, t, static_cast<int>(c_.chunk_size),
                                     static_cast<int>(c_.image_size));
            if (!r.ok()) return Fail(r.status());
            raw.push_back(*std::move(r));
            continue;
          }
        }
        EpisodeSpec s = DrawSpec(o_.curriculum, step_->load(), rng);
        auto key =
            std::make_tuple(static_cast<int>(s.suite), s.seed, s.num_distractors, s.noise_std);
        auto it = demos.find(key);
        if (it == demos.end()) {
          auto d = RunDemo(s, static_cast<int>(c_.image_size));
          if (!d.ok()) return Fail(d.status());
          it = demos.emplace(key, *std::move(d)).first;
        }
        const DemoSummary& demo = it->second;
        if (!demo.success || demo.length == 0) continue;
        int t = static_cast<int>(rng() % static_cast<uint64_t>(demo.length));
        if (std::uniform_real_distribution<double>(0, 1)(rng) < o_.early_frac &&
            !demo.goal_starts.empty()) {
          const int start = demo.goal_starts[rng() % demo.goal_starts.size()];
          const int span = std::max(1, std::min(o_.early_steps, demo.length - start));
          t = start + static_cast<int>(rng() % static_cast<uint64_t>(span));
        }
        auto r =
            MakeRawSample(s, t, static_cast<int>(c_.chunk_size), static_cast<int>(c_.image_size));
        if (!r.ok()) return Fail(r.status());
        raw.push_back(*std::move(r));
      }
      auto b = MakeBatch(raw, c_, tok_, stats_, o_.max_shift, &rng);
      if (!b.ok()) return Fail(b.status());
      std::unique_lock<std::mutex> l(mu_);
      cv_.wait(l, [&] { return queue_.size() < 4 || stop_; });
      if (stop_) return;
      queue_.push_back(*std::move(b));
      cv_.notify_all();
    }
  }
  void Fail(absl::Status s) {
    std::lock_guard<std::mutex> l(mu_);
    error_ = s;
    cv_.notify_all();
  }

  const TrainOptions& o_;
  const ModelConfig& c_;
  const Tokenizer& tok_;
  const DatasetStats& stats_;
  std::atomic<int64_t>* step_;
  const DaggerPool* pool_;  // may be null
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<BcBatch> queue_;
  bool stop_ = false;
  absl::Status error_;
  std::vector<std::thread> threads_;
};

double LearningRate(const TrainOptions& o, int64_t step) {
  if (step < o.head_warmup) return o.head_lr;
  step -= o.head_warmup;
  if (step < o.warmup) return o.lr * static_cast<double>(step + 1) / static_cast<double>(o.warmup);
  const double p = std::min(
      1.0, static_cast<double>(step - o.warmup) /
               static_cast<double>(std::max<int64_t>(1, o.steps - o.head_warmup - o.warmup)));
  const double cosine = 0.5 * (1 + std::cos(M_PI * p));
  return o.lr * (o.min_lr_ratio + (1 - o.min_lr_ratio) * cosine);
}

// Training-only grounding head (TrainOptions::aux_weight).
struct AuxHeadImpl : torch::nn::Module {
  AuxHeadImpl(int64_t hidden, int64_t targets, bool per_row) : per_row(per_row) {
    fc1 = register_module("fc1", torch::nn::Linear(hidden, hidden));
    fc2 = register_module("fc2", torch::nn::Linear(hidden, targets));
  }
  // [B, A, D] -> [B, A, targets] (per row) or [B, 1, targets] (from the mean row).
  torch::Tensor forward(const torch::Tensor& action_hidden) {
    auto x = action_hidden.to(torch::kFloat32);
    if (!per_row) x = x.mean(1, /*keepdim=*/true);
    return fc2(torch::gelu(fc1(x)));
  }
  bool per_row;
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
};
TORCH_MODULE(AuxHead);

// Training-only patch-grounding probe (TrainOptions::patch_weight): LayerNorm + linear, per vision
// row, one logit per kPatchTargetItems.
struct PatchHeadImpl : torch::nn::Module {
  explicit PatchHeadImpl(int64_t hidden) {
    norm = register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({hidden})));
    fc = register_module("fc", torch::nn::Linear(hidden, kPatchTargetItems));
  }
  // [B, P, D] -> [B, P, kPatchTargetItems] logits.
  torch::Tensor forward(const torch::Tensor& vision_hidden) {
    return fc(norm(vision_hidden.to(torch::kFloat32)));
  }
  torch::nn::LayerNorm norm{nullptr};
  torch::nn::Linear fc{nullptr};
};
TORCH_MODULE(PatchHead);

// Training-only patch-attribute probe (TrainOptions::attr_weight): LayerNorm + linear per vision
// token, kShapeClasses then kColorClasses logits.
struct AttrHeadImpl : torch::nn::Module {
  explicit AttrHeadImpl(int64_t hidden) {
    norm = register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({hidden})));
    fc = register_module("fc", torch::nn::Linear(hidden, kShapeClasses + kColorClasses));
  }
  torch::Tensor forward(const torch::Tensor& tokens) {
    return fc(norm(tokens.to(torch::kFloat32)));
  }
  torch::nn::LayerNorm norm{nullptr};
  torch::nn::Linear fc{nullptr};
};
TORCH_MODULE(AttrHead);

struct Heads {
  AuxHead aux{nullptr};
  PatchHead patch{nullptr};
  int patch_layer = -1;
  AuxHead text{nullptr};          // per prompt row; null when TrainOptions::text_aux_weight == 0
  AttrHead attr{nullptr};         // null when TrainOptions::attr_weight == 0
  PatchHead film_patch{nullptr};  // null when TrainOptions::film_patch_weight == 0
  std::vector<int>
      attn_layers;         // attention-grounding layers (the held-out share always reads them)
  bool attn_loss = false;  // TrainOptions::attn_weight > 0
  // Per entry of attn_layers: its target is BcBatch::named_labels
  // (TrainOptions::attn_named_layers).
  std::vector<bool> attn_named;
  // Mention-grounding layers (the held-out share always reads them).
  std::vector<int> mention_layers;
  bool mention_loss = false;  // TrainOptions::mention_weight > 0
  // Colour-word layers (the held-out share always reads them).
  std::vector<int> colour_word_layers;
  bool colour_word_loss = false;  // TrainOptions::colour_word_weight > 0

  // Every training head's parameters, in a fixed order (aux, patch, text, attr, film_patch): the
  // optimizer's groups and a resumed optimizer.pt depend on it.
  std::vector<torch::Tensor> Parameters() const {
    std::vector<torch::Tensor> out;
    const auto add = [&](const auto& head) {
      if (head.is_empty()) return;
      for (const auto& p : head->parameters()) out.push_back(p);
    };
    add(aux);
    add(patch);
    add(text);
    add(attr);
    add(film_patch);
    return out;
  }
};

// Attention-grounding loss (TrainOptions::attn_weight) and, optionally, the mean share of the
// vision attention on the target items over layers and samples.
// `named` (optional, per entry of `scores`): that layer's target is `named_labels` instead.
torch::Tensor AttnLoss(const std::vector<torch::Tensor>& scores, const torch::Tensor& labels,
                       double* mean_share = nullptr, const std::vector<bool>& named = {},
                       const torch::Tensor& named_labels = {}) {
  torch::Tensor loss = torch::zeros({}, torch::kFloat32);
  double share_sum = 0, share_n = 0;
  for (size_t li = 0; li < scores.size(); ++li) {
    const torch::Tensor& sc = scores[li];
    const torch::Tensor& layer_labels =
        li < named.size() && named[li] && named_labels.defined() ? named_labels : labels;
    auto dist = sc / sc.sum(1, /*keepdim=*/true).clamp_min(1e-12);  // [B, P]
    for (int item = 0; item < kPatchTargetItems; ++item) {
      auto target = layer_labels.select(2, item);  // [B, P]
      auto shown = target.sum(1).gt(0).to(torch::kFloat32);
      auto share = (dist * target).sum(1);
      const double n = shown.sum().item<double>();
      if (n == 0) continue;
      loss = loss - ((share + 1e-4).log() * shown).sum() / n;
      if (mean_share != nullptr) {
        share_sum += (share.detach() * shown).sum().item<double>();
        share_n += n;
      }
    }
  }
  if (mean_share != nullptr) *mean_share = share_n > 0 ? share_sum / share_n : NAN;
  return scores.empty() ? loss : loss / (kPatchTargetItems * static_cast<double>(scores.size()));
}

// Cross-entropy of the attribute logits [B, P, shape + colour classes] against
// BcBatch::patch_attributes, shape and colour averaged. `accuracy` (optional out): the fraction of
// patches showing an object or plate whose shape and colour are both right.
torch::Tensor AttrLoss(const torch::Tensor& logits, const torch::Tensor& attrs,
                       double* accuracy = nullptr, double* shape_accuracy = nullptr,
                       double* color_accuracy = nullptr) {
  auto shape = logits.slice(2, 0, kShapeClasses).reshape({-1, kShapeClasses});
  auto color = logits.slice(2, kShapeClasses).reshape({-1, kColorClasses});
  auto ts = attrs.select(2, 0).reshape({-1}), tc = attrs.select(2, 1).reshape({-1});
  auto shown = ts.gt(0);
  const double n = shown.sum().item<double>();
  const auto rate = [&](const torch::Tensor& right) {
    return n > 0 ? right.logical_and(shown).sum().item<double>() / n : NAN;
  };
  auto shape_right = shape.argmax(1).eq(ts), color_right = color.argmax(1).eq(tc);
  if (accuracy != nullptr) *accuracy = rate(shape_right.logical_and(color_right));
  if (shape_accuracy != nullptr) *shape_accuracy = rate(shape_right);
  if (color_accuracy != nullptr) *color_accuracy = rate(color_right);
  namespace F = torch::nn::functional;
  return 0.5 * (F::cross_entropy(shape, ts) + F::cross_entropy(color, tc));
}

// Mention-grounding loss (TrainOptions::mention_weight) and, optionally, the mean share of the
// mention rows' vision attention on the items they name, over layers, samples and mentions.
// `row_scores`: per layer [B, M, P] (ForwardTaps::text_row_vision_attention).
torch::Tensor MentionLoss(const std::vector<torch::Tensor>& row_scores, const torch::Tensor& rows,
                          const torch::Tensor& labels, double* mean_share = nullptr) {
  torch::Tensor loss = torch::zeros({}, torch::kFloat32);
  if (mean_share != nullptr) *mean_share = NAN;
  if (row_scores.empty()) return loss;
  const int64_t p = labels.size(1);
  auto target = labels.transpose(1, 2);                                          // [B, K, P]
  auto valid = rows.ge(0).logical_and(target.sum(2).gt(0)).to(torch::kFloat32);  // [B, K]
  const double n = valid.sum().item<double>();
  if (n == 0) return loss;
  auto idx = rows.clamp_min(0).unsqueeze(2).expand({rows.size(0), rows.size(1), p});
  double share_sum = 0;
  for (const auto& sc : row_scores) {
    auto att = sc.to(torch::kFloat32).gather(1, idx.to(sc.device()));  // [B, K, P]
    auto dist = att / att.sum(2, /*keepdim=*/true).clamp_min(1e-12);
    auto share = (dist * target).sum(2);
    loss = loss - ((share + 1e-4).log() * valid).sum() / n;
    share_sum += (share.detach() * valid).sum().item<double>();
  }
  const double layers = static_cast<double>(row_scores.size());
  if (mean_share != nullptr) *mean_share = share_sum / (n * layers);
  return loss / layers;
}

struct Losses {
  torch::Tensor action;      // L1 on normalized actions
  torch::Tensor aux;         // L1 on grounding targets
  torch::Tensor patch;       // BCE on patch labels
  torch::Tensor text;        // L1 on grounding targets from the prompt rows (0 without the head)
  torch::Tensor attr;        // CE on patch attributes (0 without the head)
  torch::Tensor attn;        // attention grounding (0 when off)
  torch::Tensor mention;     // mention grounding (0 when off)
  torch::Tensor colour;      // colour-word grounding (0 when off)
  torch::Tensor film_patch;  // patch targets on the LLM's vision input (0 when off)
};

// Per colour word of the batch, the patches showing its colour: [B, P, kMaxColourWords].
torch::Tensor ColourWordLabels(const BcBatch& b) {
  auto colour = b.patch_attributes.select(2, 1).unsqueeze(2);  // [B, P, 1]
  auto wanted = b.colour_classes.unsqueeze(1);                 // [B, 1, K]
  return colour.eq(wanted).logical_and(wanted.gt(0)).to(torch::kFloat32);
}

// The taps every loss and diagnostic here reads.
struct Tapped {
  torch::Tensor action_hidden, vision_hidden, text_hidden, text_mask, vision_tokens,
      llm_vision_input;
  std::vector<torch::Tensor> attention, row_attention;
  std::vector<int> row_layers;  // the layers of row_attention, in order
  // `with_attention`: also tap the text->vision attention pooled over the prompt rows;
  // `with_mentions` / `with_colour_words`: per row, at the mention / colour-word layers (the
  // held-out check taps all of them even when the losses are off, to report the shares on an
  // untouched model).
  ForwardTaps Taps(const Heads& heads, bool with_attention, bool with_mentions,
                   bool with_colour_words) {
    ForwardTaps t;
    if (with_attention && !heads.attn_layers.empty()) {
      t.attention_layers = heads.attn_layers;
      t.text_vision_attention = &attention;
    }
    std::set<int> layers;
    if (with_mentions) layers.insert(heads.mention_layers.begin(), heads.mention_layers.end());
    if (with_colour_words)
      layers.insert(heads.colour_word_layers.begin(), heads.colour_word_layers.end());
    if (!layers.empty()) {
      row_layers.assign(layers.begin(), layers.end());
      t.row_attention_layers = row_layers;
      if (!row_layers.empty()) t.text_row_vision_attention = &row_attention;
    }
    if (!heads.attr.is_empty()) t.vision_tokens = &vision_tokens;
    if (!heads.film_patch.is_empty()) t.llm_vision_input = &llm_vision_input;
    t.action_hidden = &action_hidden;
    t.vision_layer = heads.patch_layer;
    t.vision_hidden = &vision_hidden;
    if (!heads.text.is_empty()) {
      t.text_hidden = &text_hidden;
      t.text_mask = &text_mask;
    }
    return t;
  }
  // The entries of row_attention for `layers` (each must have been tapped).
  std::vector<torch::Tensor> RowAttention(const std::vector<int>& layers) const {
    std::vector<torch::Tensor> out;
    if (row_attention.empty()) return out;
    for (int l : layers)
      out.push_back(
          row_attention[std::find(row_layers.begin(), row_layers.end(), l) - row_layers.begin()]);
    return out;
  }
};

// Mean L1 of the text head's per-row predictions [B, M, T] against targets [B, >= T] over the real
// rows of `mask` [B, M].
torch::Tensor TextAuxLoss(const torch::Tensor& pred, const torch::Tensor& targets,
                          const torch::Tensor& mask) {
  auto err = (pred - targets.slice(1, 0, pred.size(2)).unsqueeze(1)).abs().mean(2);
  return (err * mask).sum() / mask.sum().clamp_min(1.0);
}

// Per-sample mean over the real rows of the text head's predictions: [B, T].
torch::Tensor TextAuxMean(const torch::Tensor& pred, const torch::Tensor& mask) {
  return (pred * mask.unsqueeze(2)).sum(1) / mask.sum(1, /*keepdim=*/true).clamp_min(1.0);
}

// Positives are a few patches per image; weighting them keeps the probe from settling on "none".
constexpr double kPatchPositiveWeight = 4.0;

// The kept vision tokens of TrainOptions::drop_* for a batch, [B, vision tokens] bool: samples
// not chosen (with probability 1 - `frac`) keep every token. `keep_min`/`keep_max` bound the
// share of kept tokens each chosen sample draws. The chosen samples are appended to `chosen`.
torch::Tensor DropKeepMask(const BcBatch& b, double frac, double keep_min, double keep_max,
                           double item_keep, std::mt19937_64* rng,
                           std::vector<int64_t>* chosen = nullptr) {
  const int64_t bsz = b.patch_labels.size(0), p = b.patch_labels.size(1);
  auto items = (b.patch_labels.sum(2) + b.named_labels.sum(2)).gt(0).to(torch::kCPU);
  auto keep = torch::ones({bsz, p}, torch::kBool);
  auto item_acc = items.accessor<bool, 2>();
  auto keep_acc = keep.accessor<bool, 2>();
  std::uniform_real_distribution<double> u(0, 1);
  std::vector<int64_t> others;
  for (int64_t i = 0; i < bsz; ++i) {
    if (u(*rng) >= frac) continue;
    if (chosen != nullptr) chosen->push_back(i);
    const int64_t target = std::lround((keep_min + (keep_max - keep_min) * u(*rng)) * p);
    int64_t kept = 0;
    others.clear();
    for (int64_t v = 0; v < p; ++v) {
      const bool k = item_acc[i][v] && u(*rng) < item_keep;
      keep_acc[i][v] = k;
      if (k)
        ++kept;
      else
        others.push_back(v);
    }
    std::shuffle(others.begin(), others.end(), *rng);
    for (size_t j = 0; kept < target && j < others.size(); ++j, ++kept)
      keep_acc[i][others[j]] = true;
  }
  return keep;
}

// Replaces the rows of `keep` ([B, P] bool) of `samples` with the set SpecPrune's static pruning
// keeps on each (TrainOptions::drop_specprune), from one no-grad pass without dropping that taps
// Score_l at SpecPruneScoreLayers(config).
absl::Status SetServedKeep(VlaModule& m, const ModelConfig& c, const BcBatch& b, bool bf16,
                           const PruningConfig& config, const std::vector<int64_t>& samples,
                           torch::Tensor* keep) {
  if (samples.empty()) return absl::OkStatus();
  torch::NoGradGuard ng;
  auto index = torch::tensor(samples, torch::kLong);
  std::vector<std::vector<int64_t>> prompts;
  for (int64_t i : samples) prompts.push_back(b.prompt_ids[i]);
  const std::vector<int> tap_layers = SpecPruneScoreLayers(config);
  std::vector<torch::Tensor> scores;
  ForwardTaps taps;
  taps.attention_layers = tap_layers;
  taps.text_vision_attention = &scores;
  SetAutocast(bf16);
  TrainingForward(m, c, b.pixels.index_select(0, index), b.proprio.index_select(0, index), prompts,
                  taps);
  SetAutocast(false);
  if (scores.size() != tap_layers.size())
    return absl::InternalError("SetServedKeep: one score tensor per tapped layer expected");
  const int layers = static_cast<int>(c.llm.layers);
  for (size_t j = 0; j < samples.size(); ++j) {
    std::vector<torch::Tensor> by_layer(layers);
    for (size_t t = 0; t < tap_layers.size(); ++t) by_layer[tap_layers[t]] = scores[t][j];
    auto row = SpecPruneStaticKeep(config, layers, by_layer, b.actions[samples[j]]);
    if (!row.ok()) return row.status();
    (*keep)[samples[j]] = *row;
  }
  return absl::OkStatus();
}

Losses Loss(VlaModule& m, Heads& heads, const ModelConfig& c, const BcBatch& b, bool bf16,
            const VisionTokenDrop& drop = {}) {
  SetAutocast(bf16);
  Tapped tap;
  auto pred = TrainingForward(
      m, c, b.pixels, b.proprio, b.prompt_ids,
      tap.Taps(heads, heads.attn_loss, heads.mention_loss, heads.colour_word_loss), drop);
  SetAutocast(false);
  Losses l;
  l.action = (pred.to(torch::kFloat32) - b.actions).abs().mean();
  auto aux_pred = heads.aux->forward(tap.action_hidden);
  l.aux = (aux_pred - b.aux.slice(1, 0, aux_pred.size(2)).unsqueeze(1)).abs().mean();
  auto patch_bce = [&](PatchHead& head, const torch::Tensor& tokens) {
    return torch::binary_cross_entropy_with_logits(
        head->forward(tokens), b.patch_labels, /*weight=*/{},
        torch::full({kPatchTargetItems}, kPatchPositiveWeight), at::Reduction::Mean);
  };
  l.patch = patch_bce(heads.patch, tap.vision_hidden);
  l.film_patch = heads.film_patch.is_empty() ? torch::zeros({}, torch::kFloat32)
                                             : patch_bce(heads.film_patch, tap.llm_vision_input);
  l.text = heads.text.is_empty()
               ? torch::zeros({}, torch::kFloat32)
               : TextAuxLoss(heads.text->forward(tap.text_hidden), b.aux, tap.text_mask);
  l.attr = heads.attr.is_empty()
               ? torch::zeros({}, torch::kFloat32)
               : AttrLoss(heads.attr->forward(tap.vision_tokens), b.patch_attributes);
  l.attn = AttnLoss(tap.attention, b.patch_labels, nullptr, heads.attn_named, b.named_labels);
  l.mention = heads.mention_loss ? MentionLoss(tap.RowAttention(heads.mention_layers),
                                               b.mention_rows, b.mention_labels)
                                 : torch::zeros({}, torch::kFloat32);
  l.colour = heads.colour_word_loss ? MentionLoss(tap.RowAttention(heads.colour_word_layers),
                                                  b.colour_rows, ColourWordLabels(b))
                                    : torch::zeros({}, torch::kFloat32);
  return l;
}

// Fraction of images (with the item in view) whose highest-scoring patch shows the item.
double PatchTop1(const torch::Tensor& logits, const torch::Tensor& labels, int64_t pp, int camera,
                 int item) {
  auto lg = logits.slice(1, camera * pp, (camera + 1) * pp).select(2, item);
  auto lb = labels.slice(1, camera * pp, (camera + 1) * pp).select(2, item);
  auto visible = lb.sum(1).gt(0);
  if (visible.sum().item<int64_t>() == 0) return NAN;
  auto hit = lb.gather(1, lg.argmax(1, /*keepdim=*/true)).squeeze(1).gt(0);
  return hit.logical_and(visible).sum().item<double>() / visible.sum().item<double>();
}

double Pearson(const torch::Tensor& x, const torch::Tensor& y) {
  auto xc = x - x.mean(), yc = y - y.mean();
  auto den = (xc.pow(2).sum() * yc.pow(2).sum()).sqrt().item<double>();
  return den > 0 ? (xc * yc).sum().item<double>() / den : 0.0;
}

struct Holdout {
  std::vector<BcBatch> batches;
};

absl::StatusOr<Holdout> MakeHoldout(const ModelConfig& c, const Tokenizer& tok,
                                    const DatasetStats& stats, int n, int fixed_tasks) {
  Holdout h;
  std::mt19937_64 rng(424242);
  std::vector<RawSample> raw;
  for (int i = 0; i < n; ++i) {
    EpisodeSpec s;
    s.suite = sim::kAllSuites[i % 4];
    s.seed = kHoldoutSeedBase + i;
    s.fixed_tasks = fixed_tasks;
    auto d = RunDemo(s, static_cast<int>(c.image_size));
    if (!d.ok()) return d.status();
    if (!d->success) continue;
    auto r = MakeRawSample(s, static_cast<int>(rng() % d->length), static_cast<int>(c.chunk_size),
                           static_cast<int>(c.image_size));
    if (!r.ok()) return r.status();
    raw.push_back(*std::move(r));
    if (raw.size() == 64) {
      auto b = MakeBatch(raw, c, tok, stats, 0, nullptr);
      if (!b.ok()) return b.status();
      h.batches.push_back(*std::move(b));
      raw.clear();
    }
  }
  return h;
}

// Held-out L1, and the correlations of predicted vs expert first-action dx, dy (normalized) and
// of the grounding head's object x / destination x.
// Patch probe: top-1 hit rate of the object / destination in the main view.
struct HoldoutResult {
  double l1 = 0, corr_x = 0, corr_y = 0, corr_obj_x = 0, corr_dest_x = 0, corr_rel_x = NAN;
  double l1_dropped = NAN;       // the action L1 under vision-token dropping (when asked)
  double corr_text_obj_x = NAN;  // the text-row head's object x (when it is on)
  double attr_accuracy = NAN;    // the attribute probe on patches showing something (when on)
  double attn_share = NAN;       // mean vision-attention share on each target item (when on)
  double mention_share = NAN;    // mean vision-attention share of each mention row on its item
  double colour_share = NAN;     // the same for each colour word's row on its colour's patches
  double patch_object = NAN, patch_destination = NAN;
  // The instruction FiLM (when on) over the held-out prompts: mean |gamma| and |beta|, and how
  // much gamma varies between instructions (per-channel standard deviation, averaged).
  double film_gamma = NAN, film_beta = NAN, film_gamma_spread = NAN;
  // The FiLM's pooling weight on the instruction's colour words and the words ending each item
  // mention (MentionRows, ColourWordRows), summed per prompt and averaged.
  double film_item_weight = NAN;
  // The LLM-input patch probe (when on): top-1 hit rate of the goal's object in the main view.
  double film_patch_object = NAN;
};

// gamma and beta ([B, 2 x hidden]) of the instruction FiLM for each prompt of a batch; adds the
// pooling weight on each prompt's item words (see HoldoutResult) to *item_weight.
torch::Tensor FilmOfBatch(VlaModule& m, const BcBatch& b, double* item_weight) {
  auto embed = m->language_model->model->embed_tokens;
  const auto device = embed->weight.device();
  std::vector<torch::Tensor> films;
  for (size_t i = 0; i < b.prompt_ids.size(); ++i) {
    auto e = embed->forward(
        torch::tensor(b.prompt_ids[i], torch::TensorOptions().dtype(torch::kLong)).to(device));
    films.push_back(m->instruction_film->Film(e));
    auto w = m->instruction_film->PoolingWeights(e).cpu();
    for (const auto& rows : {b.mention_rows[i], b.colour_rows[i]})
      for (int64_t j = 0; j < rows.size(0); ++j)
        if (const int64_t r = rows[j].item<int64_t>(); r >= 0 && r < w.size(0))
          *item_weight += w[r].item<double>();
  }
  return torch::stack(films).to(torch::kFloat32);
}

// `drop` (optional): also report the action L1 with every sample's vision tokens dropped at this
// layer, keeping the share `drop_keep` (TrainOptions::drop_*, fixed seed).
HoldoutResult EvalHoldout(VlaModule& m, Heads& heads, const ModelConfig& c, const Holdout& h,
                          int drop_layer = -1, double drop_keep = 0, double drop_item_keep = 1) {
  torch::NoGradGuard ng;
  AuxHead& aux = heads.aux;
  std::vector<torch::Tensor> preds, targets, aux_preds, aux_targets, patch_logits, patch_labels;
  std::vector<torch::Tensor> text_preds, films, film_patch_logits;
  double attr_right = 0, attr_batches = 0, attn_share = 0, attn_batches = 0;
  double mention_share = 0, mention_batches = 0, colour_share = 0, colour_batches = 0;
  double film_item_weight = 0;
  double sum = 0, dropped_sum = 0;
  int64_t n = 0;
  std::mt19937_64 drop_rng(12345);
  for (const auto& b : h.batches) {
    if (drop_layer >= 0) {
      const auto keep = DropKeepMask(b, 1.0, drop_keep, drop_keep, drop_item_keep, &drop_rng);
      auto dropped =
          TrainingForward(m, c, b.pixels, b.proprio, b.prompt_ids, {}, {drop_layer, keep})
              .to(torch::kFloat32);
      dropped_sum += (dropped - b.actions).abs().mean().item<double>() * b.actions.size(0);
    }
    Tapped tap;
    auto pred =
        TrainingForward(m, c, b.pixels, b.proprio, b.prompt_ids, tap.Taps(heads, true, true, true))
            .to(torch::kFloat32);
    const torch::Tensor& hidden = tap.action_hidden;
    patch_logits.push_back(heads.patch->forward(tap.vision_hidden));
    if (!heads.text.is_empty())
      text_preds.push_back(TextAuxMean(heads.text->forward(tap.text_hidden), tap.text_mask));
    if (!heads.attr.is_empty()) {
      double acc = NAN;
      AttrLoss(heads.attr->forward(tap.vision_tokens), b.patch_attributes, &acc);
      if (std::isfinite(acc)) attr_right += acc, attr_batches += 1;
    }
    if (!tap.attention.empty()) {
      double share = NAN;
      AttnLoss(tap.attention, b.patch_labels, &share);
      if (std::isfinite(share)) attn_share += share, attn_batches += 1;
    }
    if (!tap.row_attention.empty()) {
      double share = NAN;
      MentionLoss(tap.RowAttention(heads.mention_layers), b.mention_rows, b.mention_labels, &share);
      if (std::isfinite(share)) mention_share += share, mention_batches += 1;
      share = NAN;
      MentionLoss(tap.RowAttention(heads.colour_word_layers), b.colour_rows, ColourWordLabels(b),
                  &share);
      if (std::isfinite(share)) colour_share += share, colour_batches += 1;
    }
    if (!m->instruction_film.is_empty()) films.push_back(FilmOfBatch(m, b, &film_item_weight));
    if (!heads.film_patch.is_empty())
      film_patch_logits.push_back(heads.film_patch->forward(tap.llm_vision_input));
    patch_labels.push_back(b.patch_labels);
    sum += (pred - b.actions).abs().mean().item<double>() * b.actions.size(0);
    n += b.actions.size(0);
    preds.push_back(pred.select(1, 0));
    targets.push_back(b.actions.select(1, 0));
    aux_preds.push_back(aux->forward(hidden).mean(1));
    aux_targets.push_back(b.aux);
  }
  auto p = torch::cat(preds), t = torch::cat(targets);
  auto ap = torch::cat(aux_preds), at = torch::cat(aux_targets);
  HoldoutResult r;
  r.l1 = n > 0 ? sum / n : 0;
  if (drop_layer >= 0 && n > 0) r.l1_dropped = dropped_sum / n;
  r.corr_x = Pearson(p.select(1, 0), t.select(1, 0));
  r.corr_y = Pearson(p.select(1, 1), t.select(1, 1));
  r.corr_obj_x = Pearson(ap.select(1, 0), at.select(1, 0));
  r.corr_dest_x = Pearson(ap.select(1, 2), at.select(1, 2));
  if (ap.size(1) > 4) r.corr_rel_x = Pearson(ap.select(1, 4), at.select(1, 4));
  if (attr_batches > 0) r.attr_accuracy = attr_right / attr_batches;
  if (attn_batches > 0) r.attn_share = attn_share / attn_batches;
  if (mention_batches > 0) r.mention_share = mention_share / mention_batches;
  if (colour_batches > 0) r.colour_share = colour_share / colour_batches;
  if (!films.empty()) {
    auto film = torch::cat(films).chunk(2, 1);
    r.film_gamma = film[0].abs().mean().item<double>();
    r.film_beta = film[1].abs().mean().item<double>();
    r.film_gamma_spread = film[0].std(0).mean().item<double>();
    r.film_item_weight = film_item_weight / static_cast<double>(std::max<int64_t>(1, n));
  }
  if (!text_preds.empty())
    r.corr_text_obj_x = Pearson(torch::cat(text_preds).select(1, 0), at.select(1, 0));
  auto pl = torch::cat(patch_logits), pt = torch::cat(patch_labels);
  r.patch_object = PatchTop1(pl, pt, c.patches_per_image(), 0, 0);
  r.patch_destination = PatchTop1(pl, pt, c.patches_per_image(), 0, 1);
  if (!film_patch_logits.empty())
    r.film_patch_object = PatchTop1(torch::cat(film_patch_logits), pt, c.patches_per_image(), 0, 0);
  return r;
}

absl::StatusOr<std::vector<double>> ClosedLoop(const VlaModel& model, const Tokenizer& tok,
                                               const DatasetStats& stats, int episodes,
                                               int fixed_tasks) {
  std::vector<sim::Episode> eps;
  for (sim::Suite s : sim::kAllSuites)
    for (int i = 0; i < episodes; ++i) {
      EpisodeSpec spec;
      spec.suite = s;
      spec.fixed_tasks = fixed_tasks;
      auto e =
          sim::Episode::Create(s, kHoldoutSeedBase + 500000 + i,
                               SpecSimOptions(spec, static_cast<int>(model.config().image_size)));
      if (!e.ok()) return e.status();
      eps.push_back(*std::move(e));
    }
  auto out = RunPolicyEpisodes(PolicyStep(model, tok), stats, std::move(eps), RolloutOptions{});
  if (!out.ok()) return out.status();
  std::vector<double> rate(4, 0);
  for (size_t i = 0; i < out->size(); ++i) rate[i / episodes] += (*out)[i].success ? 1.0 : 0.0;
  for (double& r : rate) r /= episodes;
  return rate;
}

// One DAgger round: the policy drives `o.dagger_episodes` training episodes drawn as the
// curriculum draws demos at `step` (without execution noise). Returns the traces; prints the
// per-suite success (a closed-loop check on training seeds, with more episodes than ClosedLoop).
absl::StatusOr<std::vector<PolicyTrace>> CollectDaggerTraces(const VlaModel& model,
                                                             const Tokenizer& tok,
                                                             const DatasetStats& stats,
                                                             const TrainOptions& o, int64_t step,
                                                             std::mt19937_64& rng) {
  std::vector<PolicyTrace> traces;
  std::vector<sim::Episode> eps;
  for (int i = 0; i < o.dagger_episodes; ++i) {
    PolicyTrace t;
    t.spec = DrawSpec(o.curriculum, step, rng);
    t.spec.noise_std = 0;
    auto e =
        sim::Episode::Create(t.spec.suite, t.spec.seed,
                             SpecSimOptions(t.spec, static_cast<int>(model.config().image_size)));
    if (!e.ok()) return e.status();
    eps.push_back(*std::move(e));
    traces.push_back(std::move(t));
  }
  RolloutOptions ro;
  ro.record_actions = true;
  auto out = RunPolicyEpisodes(PolicyStep(model, tok), stats, std::move(eps), ro);
  if (!out.ok()) return out.status();
  int runs[4] = {0, 0, 0, 0}, wins[4] = {0, 0, 0, 0};
  for (size_t i = 0; i < traces.size(); ++i) {
    traces[i].executed = std::move((*out)[i].executed);
    traces[i].success = (*out)[i].success;
    const int s = static_cast<int>(traces[i].spec.suite);
    ++runs[s];
    wins[s] += traces[i].success ? 1 : 0;
  }
  std::printf("dagger step %lld rollouts on training seeds:", static_cast<long long>(step));
  for (sim::Suite s : sim::kAllSuites) {
    const int k = static_cast<int>(s);
    std::printf(" %s %d/%d", std::string(sim::SuiteName(s)).c_str(), wins[k], runs[k]);
  }
  std::printf("\n");
  return traces;
}

absl::Status SaveAll(const VlaModel& model, const DatasetStatistics& stats_file,
                     const std::string& tokenizer_src, const std::string& dir) {
  if (auto s = SaveWeights(model, dir, "fp32"); !s.ok()) return s;
  if (auto s = stats_file.Save(dir + "/dataset_statistics.json"); !s.ok()) return s;
  std::error_code ec;
  if (fs::absolute(tokenizer_src) != fs::absolute(dir + "/tokenizer.model"))
    fs::copy_file(tokenizer_src, dir + "/tokenizer.model", fs::copy_options::overwrite_existing,
                  ec);
  if (ec) return absl::InternalError(absl::StrCat("copying tokenizer: ", ec.message()));
  return absl::OkStatus();
}

constexpr char kUsage[] =
    "usage: specprune_train [flags]   (flags: --name value or --name=value)\n"
    "Behaviour cloning of the tabletop expert into a servable checkpoint (docs/training.md).\n"
    "Rerunning the same command resumes from the checkpoint in --out.\n"
    "  run:        --out DIR --init DIR --init_weights 0|1 --steps N --seed S --threads N\n"
    "              --data_threads N --dtype bf16|fp32 --instruction_film 0|1\n"
    "              --film_pooling mean|attention --film_lr_mult X\n"
    "  optimizer:  --batch N --lr X --min_lr_ratio X --weight_decay X --warmup N --clip X\n"
    "              --head_warmup N --head_lr X\n"
    "  data:       --max_shift PX --noise_frac X --noise_std X --train_seeds N --stage1 N\n"
    "              --stage2 N --stats_episodes N --early_frac X --early_steps N --long_frac X\n"
    "              --easy_mix S,O,G --colour_frac X --fixed_tasks N (0 = procedural)\n"
    "  grounding:  --aux_weight X --aux_targets 4|8 --aux_per_row 0|1 --patch_weight X\n"
    "              --patch_layer L --text_aux_weight X --attr_weight X --attn_weight X\n"
    "              --film_patch_weight X\n"
    "              --attn_layers a,b,... --attn_named_layers a,b,...\n"
    "              --mention_weight X --mention_layers a,b,...\n"
    "              --colour_word_weight X --colour_word_layers a,b,...\n"
    "  DAgger:     --dagger_every N --dagger_episodes N --dagger_frac X --dagger_pool N\n"
    "              --dagger_states empty|goal|all\n"
    "  dropping:   --drop_frac X --drop_layer L --drop_keep_min X --drop_keep_max X\n"
    "              --drop_item_keep X --drop_specprune X --drop_pruning FILE\n"
    "  progress:   --log_every N --holdout_every N --eval_every N --eval_episodes N\n"
    "              --ckpt_every N\n"
    "  one-shot:   --benchmark N (fp32 vs bf16 step time) --check_demos N --diagnose N\n"
    "              --diagnose_seed S\n"
    "Defaults and meanings: TrainOptions in tools/train_main.cc.\n";

int Main(int argc, char** argv) {
  if (WantsHelp(argc, argv)) return std::fputs(kUsage, stdout), 0;
  TrainOptions o;
  if (!ParseArgs(argc, argv, &o)) return std::fputs("(--help lists the flags)\n", stderr), 2;
  torch::set_num_threads(o.threads);
  // The log records how the run was started, so a checkpoint's lineage can be re-run.
  std::string command = "command:";
  for (int i = 0; i < argc; ++i) absl::StrAppend(&command, " ", argv[i]);
  std::printf("%s\n", command.c_str());
  if (o.check_demos > 0) {
    for (double noise : {0.0, o.curriculum.noise_std})
      for (sim::Suite s : sim::kAllSuites)
        for (int distractors : {0, -1}) {
          int ok = 0;
          int64_t len = 0;
          auto t0 = Clock::now();
          for (int i = 0; i < o.check_demos; ++i) {
            EpisodeSpec e{s, static_cast<uint64_t>(i), distractors, static_cast<float>(noise)};
            auto d = RunDemo(e, 64);
            if (!d.ok()) {
              std::fprintf(stderr, "%s\n", d.status().ToString().c_str());
              return 1;
            }
            ok += d->success;
            len += d->success ? d->length : 0;
          }
          std::printf(
              "noise %.2f %-7s distractors %2d: %d/%d succeed, mean length "
              "%.1f, %.2f ms/demo\n",
              noise, std::string(sim::SuiteName(s)).c_str(), distractors, ok, o.check_demos,
              ok ? static_cast<double>(len) / ok : 0.0,
              1e3 * std::chrono::duration<double>(Clock::now() - t0).count() / o.check_demos);
        }
    return 0;
  }
  const std::string state_path = o.out + "/train_state.json";
  const bool resume = fs::exists(state_path);
  if (o.patch_layer < 0) {
    std::fprintf(stderr, "--patch_layer: must be >= 0\n");
    return 2;
  }
  auto config = LoadModelConfig(resume ? o.out : o.init);
  if (!config.ok()) {
    std::fprintf(stderr, "config: %s\n", config.status().ToString().c_str());
    return 1;
  }
  if (!resume && !o.instruction_film && o.film_pooling != "mean") {
    std::fprintf(stderr, "--film_pooling: needs --instruction_film 1\n");
    return 2;
  }
  if (!resume && o.instruction_film) {
    config->instruction_film = true;
    config->instruction_film_pooling = o.film_pooling;
    if (auto s = ValidateConfig(*config); !s.ok()) {
      std::fprintf(stderr, "--film_pooling: %s\n", s.ToString().c_str());
      return 2;
    }
  }
  if (o.film_lr_mult <= 0) {
    std::fprintf(stderr, "--film_lr_mult: must be positive\n");
    return 2;
  }
  const std::string tok_path = (resume ? o.out : o.init) + "/tokenizer.model";
  auto tok = Tokenizer::Load(tok_path);
  if (!tok.ok()) {
    std::fprintf(stderr, "tokenizer: %s\n", tok.status().ToString().c_str());
    return 1;
  }
  ModelOptions mo;
  mo.seed = o.seed;
  auto model = VlaModel::Create(*config, mo);
  if (!model.ok()) {
    std::fprintf(stderr, "model: %s\n", model.status().ToString().c_str());
    return 1;
  }
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
  fs::create_directories(o.out);
  const std::string key = "specprune_sim";
  DatasetStatistics stats_file;
  int64_t start_step = 0;
  double best_success = -1;
  if (!resume && o.init_weights) {
    if (auto s = LoadWeights(o.init, **model, "instruction_film."); !s.ok()) {
      std::fprintf(stderr, "--init_weights: %s\n", s.ToString().c_str());
      return 1;
    }
    std::printf("initialized from the weights in %s\n", o.init.c_str());
  }
  if (resume) {
    if (auto s = LoadWeights(o.out, **model); !s.ok()) {
      std::fprintf(stderr, "resume: %s\n", s.ToString().c_str());
      return 1;
    }
    auto st = DatasetStatistics::Load(o.out + "/dataset_statistics.json");
    if (!st.ok()) {
      std::fprintf(stderr, "resume: %s\n", st.status().ToString().c_str());
      return 1;
    }
    stats_file = *st;
    std::ifstream f(state_path);
    auto j = nlohmann::json::parse(f, nullptr, false);
    if (j.is_discarded() || !j.contains("step")) {
      std::fprintf(stderr, "resume: %s is not valid\n", state_path.c_str());
      return 1;
    }
    start_step = j["step"].get<int64_t>();
    best_success = j.value("best_success", -1.0);
    std::printf("resuming from step %lld\n", static_cast<long long>(start_step));
  } else if (auto init_stats = DatasetStatistics::Load(o.init + "/dataset_statistics.json");
             o.init_weights && init_stats.ok() && init_stats->Get(key).ok()) {
    // Fine-tuning keeps the normalization the weights were trained with.
    stats_file = *init_stats;
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
    auto st = ComputeStatistics(specs, static_cast<int>(config->image_size), key);
    if (!st.ok()) {
      std::fprintf(stderr, "statistics: %s\n", st.status().ToString().c_str());
      return 1;
    }
    if (auto s = stats_file.Add(*st); !s.ok()) {
      std::fprintf(stderr, "statistics: %s\n", s.ToString().c_str());
      return 1;
    }
    std::printf("statistics: %lld transitions, %lld demos\n",
                static_cast<long long>(st->num_transitions),
                static_cast<long long>(st->num_trajectories));
  }
  const DatasetStats& stats = **stats_file.Get(key);

  VlaModule module = (*model)->module();
  module->train();
  if (o.patch_layer >= static_cast<int>((*model)->config().llm.layers)) {
    std::fprintf(stderr, "--patch_layer: the model has %lld layers\n",
                 static_cast<long long>((*model)->config().llm.layers));
    return 2;
  }
  Heads heads;
  PruningConfig drop_pruning;  // --drop_specprune's config
  heads.aux = AuxHead((*model)->config().llm.hidden, o.aux_targets, o.aux_per_row);
  heads.patch = PatchHead((*model)->config().llm.hidden);
  heads.patch_layer = o.patch_layer;
  if (o.text_aux_weight > 0)
    heads.text = AuxHead((*model)->config().llm.hidden, o.aux_targets, /*per_row=*/true);
  if (o.attr_weight > 0) heads.attr = AttrHead((*model)->config().llm.hidden);
  if (o.film_patch_weight > 0) {
    if (!(*model)->config().instruction_film) {
      std::fprintf(stderr, "--film_patch_weight: the model has no instruction FiLM\n");
      return 2;
    }
    heads.film_patch = PatchHead((*model)->config().llm.hidden);
  }
  {
    const int layers = static_cast<int>((*model)->config().llm.layers);
    // `requested`, or layers first_default..L-1 when empty; false (after an error naming `flag`)
    // when one is not a layer of the model.
    const auto resolve_layers = [layers](const std::vector<int>& requested, int first_default,
                                         const char* flag, std::vector<int>* out) {
      *out = requested;
      if (out->empty())
        for (int l = first_default; l < layers; ++l) out->push_back(l);
      for (int l : *out)
        if (l < 0 || l >= layers) {
          std::fprintf(stderr, "--%s: the model has %d layers\n", flag, layers);
          return false;
        }
      return true;
    };
    if (o.drop_frac > 0 && (o.drop_layer < 0 || o.drop_layer >= layers)) {
      std::fprintf(stderr, "--drop_layer: the model has %d layers\n", layers);
      return 2;
    }
    if (o.drop_frac > 0 && o.drop_specprune > 0) {
      const ModelConfig& mc = (*model)->config();
      drop_pruning = DefaultPruningConfig(layers, mc.vision_tokens(), mc.patches_per_image());
      if (!o.drop_pruning.empty()) {
        auto parsed = LoadPruningConfigFile(o.drop_pruning, drop_pruning);
        if (!parsed.ok()) {
          std::fprintf(stderr, "--drop_pruning: %s\n", parsed.status().ToString().c_str());
          return 2;
        }
        drop_pruning = *std::move(parsed);
      }
      drop_pruning.method = PruningMethod::kSpecPrune;
      const auto& local = drop_pruning.specprune.local_layers;
      const int first = local.empty() ? 0 : *std::max_element(local.begin(), local.end()) + 1;
      if (o.drop_layer != first) {
        std::fprintf(stderr, "--drop_layer: SpecPrune's static pruning acts from layer %d\n",
                     first);
        return 2;
      }
    }
    heads.attn_loss = o.attn_weight > 0;
    heads.mention_loss = o.mention_weight > 0;
    heads.colour_word_loss = o.colour_word_weight > 0;
    if (!resolve_layers(o.attn_layers, static_cast<int>(std::lround(layers / 3.0)), "attn_layers",
                        &heads.attn_layers) ||
        !resolve_layers(o.mention_layers, 1, "mention_layers", &heads.mention_layers) ||
        !resolve_layers(o.colour_word_layers, 0, "colour_word_layers", &heads.colour_word_layers))
      return 2;
    for (int l : o.attn_named_layers)
      if (std::find(heads.attn_layers.begin(), heads.attn_layers.end(), l) ==
          heads.attn_layers.end()) {
        std::fprintf(stderr, "--attn_named_layers: layer %d is not in --attn_layers\n", l);
        return 2;
      }
    for (int l : heads.attn_layers)
      heads.attn_named.push_back(std::find(o.attn_named_layers.begin(), o.attn_named_layers.end(),
                                           l) != o.attn_named_layers.end());
  }
  AuxHead& aux = heads.aux;
  const std::string aux_path = o.out + "/aux_head.pt";
  const std::string patch_path = o.out + "/patch_head.pt";
  const std::string text_path = o.out + "/text_head.pt";
  const std::string attr_path = o.out + "/attr_head.pt";
  const std::string film_patch_path = o.out + "/film_patch_head.pt";
  const std::string head_dir = resume ? o.out : (o.init_weights ? o.init : "");
  try {
    if (!head_dir.empty() && fs::exists(head_dir + "/aux_head.pt"))
      torch::load(aux, head_dir + "/aux_head.pt");
    if (!head_dir.empty() && fs::exists(head_dir + "/patch_head.pt"))
      torch::load(heads.patch, head_dir + "/patch_head.pt");
    if (!heads.text.is_empty() && !head_dir.empty() && fs::exists(head_dir + "/text_head.pt"))
      torch::load(heads.text, head_dir + "/text_head.pt");
    if (!heads.attr.is_empty() && !head_dir.empty() && fs::exists(head_dir + "/attr_head.pt"))
      torch::load(heads.attr, head_dir + "/attr_head.pt");
    if (!heads.film_patch.is_empty() && !head_dir.empty() &&
        fs::exists(head_dir + "/film_patch_head.pt"))
      torch::load(heads.film_patch, head_dir + "/film_patch_head.pt");
  } catch (const c10::Error& e) {
    std::fprintf(stderr, "%s: grounding heads: %s\n", head_dir.c_str(), e.what_without_backtrace());
    return 1;
  }
  std::vector<torch::Tensor> decay, no_decay, film;
  for (const auto& p : module->named_parameters()) {
    if (absl::StartsWith(p.key(), "instruction_film."))
      film.push_back(p.value());
    else
      (p.value().dim() >= 2 ? decay : no_decay).push_back(p.value());
  }
  for (const auto& p : heads.Parameters()) (p.dim() >= 2 ? decay : no_decay).push_back(p);
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(decay, std::make_unique<torch::optim::AdamWOptions>(
                                 torch::optim::AdamWOptions(o.lr).weight_decay(o.weight_decay)));
  groups.emplace_back(no_decay, std::make_unique<torch::optim::AdamWOptions>(
                                    torch::optim::AdamWOptions(o.lr).weight_decay(0.0)));
  // Last, so a run's optimizer.pt from before the FiLM existed still lines up with groups 0-1.
  const size_t film_group = groups.size();
  if (!film.empty())
    groups.emplace_back(film, std::make_unique<torch::optim::AdamWOptions>(
                                  torch::optim::AdamWOptions(o.lr).weight_decay(0.0)));
  torch::optim::AdamW opt(groups, torch::optim::AdamWOptions(o.lr));
  if (resume && fs::exists(o.out + "/optimizer.pt")) {
    try {
      torch::load(opt, o.out + "/optimizer.pt");
    } catch (const c10::Error& e) {
      std::fprintf(stderr, "resume: optimizer state: %s\n", e.what_without_backtrace());
      return 1;
    }
  }

  std::atomic<int64_t> step{start_step};
  const ModelConfig& c = (*model)->config();

  if (o.benchmark > 0) {
    Producer prod(o, c, **tok, stats, &step, nullptr);
    auto b = prod.Next();
    if (!b.ok()) return 1;
    for (bool bf16 : {false, true}) {
      for (int i = 0; i < 2; ++i) {  // warm-up
        opt.zero_grad();
        Loss(module, heads, c, *b, bf16).action.backward();
        opt.step();
      }
      auto t0 = Clock::now();
      for (int64_t i = 0; i < o.benchmark; ++i) {
        opt.zero_grad();
        Loss(module, heads, c, *b, bf16).action.backward();
        opt.step();
      }
      const double s = std::chrono::duration<double>(Clock::now() - t0).count();
      std::printf("benchmark %s: batch %d, threads %d: %.3f steps/s (%.1f samples/s)\n",
                  bf16 ? "bf16-autocast" : "fp32", o.batch, o.threads, o.benchmark / s,
                  o.benchmark * o.batch / s);
    }
    // Data throughput on this thread alone (the producer's queue is already
    // full here).
    std::mt19937_64 rng(o.seed);
    auto t0 = Clock::now();
    int64_t made = 0;
    while (made < 4 * o.batch) {
      EpisodeSpec spec = DrawSpec(o.curriculum, o.curriculum.stage2, rng);
      auto d = RunDemo(spec, static_cast<int>(c.image_size));
      if (!d.ok() || !d->success) continue;
      std::vector<RawSample> raw;
      for (int i = 0; i < o.batch; ++i) {
        auto r = MakeRawSample(spec, static_cast<int>(rng() % d->length),
                               static_cast<int>(c.chunk_size), static_cast<int>(c.image_size));
        if (!r.ok()) return 1;
        raw.push_back(*std::move(r));
      }
      if (!MakeBatch(raw, c, **tok, stats, o.max_shift, &rng).ok()) return 1;
      made += o.batch;
    }
    std::printf("data: %.0f samples/s on one thread\n",
                made / std::chrono::duration<double>(Clock::now() - t0).count());
    return 0;
  }

  if (o.diagnose > 0) {  // first action and grounding of step 0, default distractors, per suite
    torch::NoGradGuard ng;
    module->eval();
    aux->eval();
    for (sim::Suite suite : sim::kAllSuites) {
      std::vector<RawSample> raw;
      for (int i = 0; i < o.diagnose; ++i) {
        EpisodeSpec spec;
        spec.suite = suite;
        spec.seed = o.diagnose_seed + static_cast<uint64_t>(i);
        spec.num_distractors = -1;
        spec.fixed_tasks = o.curriculum.fixed_tasks;
        auto r =
            MakeRawSample(spec, 0, static_cast<int>(c.chunk_size), static_cast<int>(c.image_size));
        if (!r.ok()) return 1;
        raw.push_back(*std::move(r));
      }
      auto b = MakeBatch(raw, c, **tok, stats, 0, nullptr);
      if (!b.ok()) return 1;
      Tapped tap;
      auto pred = TrainingForward(module, c, b->pixels, b->proprio, b->prompt_ids,
                                  tap.Taps(heads, false, true, true));
      auto ap = aux->forward(tap.action_hidden).mean(1);
      auto pl = heads.patch->forward(tap.vision_hidden);
      std::printf("%-7s patch probe top-1 in the main view: object %.2f destination %.2f\n",
                  std::string(sim::SuiteName(suite)).c_str(),
                  PatchTop1(pl, b->patch_labels, c.patches_per_image(), 0, 0),
                  PatchTop1(pl, b->patch_labels, c.patches_per_image(), 0, 1));
      if (!heads.attr.is_empty()) {
        double both = NAN, shape = NAN, color = NAN;
        AttrLoss(heads.attr->forward(tap.vision_tokens), b->patch_attributes, &both, &shape,
                 &color);
        std::printf(
            "%-7s attribute probe on patches showing something: shape and colour %.3f, shape "
            "%.3f, colour %.3f\n",
            std::string(sim::SuiteName(suite)).c_str(), both, shape, color);
      }
      for (int i = 0; i < o.diagnose; ++i) {
        std::printf(
            "%-7s seed %d: expert a0 %+.2f %+.2f %+.2f model %+.2f %+.2f %+.2f | aux object "
            "%+.2f %+.2f pred %+.2f %+.2f | %s\n",
            std::string(sim::SuiteName(suite)).c_str(), i, b->actions[i][0][0].item<float>(),
            b->actions[i][0][1].item<float>(), b->actions[i][0][2].item<float>(),
            pred[i][0][0].item<float>(), pred[i][0][1].item<float>(), pred[i][0][2].item<float>(),
            b->aux[i][0].item<float>(), b->aux[i][1].item<float>(), ap[i][0].item<float>(),
            ap[i][1].item<float>(), raw[i].instruction.c_str());
      }
      // Scenes the colour word decides: does the grounding head's object position, and does the
      // first chunk's summed xy motion, point at the goal's object or at a look-alike of its shape?
      // And the mention-grounding view: does the attention of the row that ends the goal object's
      // mention ("cube" of "the red cube") weigh its patches above each look-alike's?
      int decided = 0, aux_right = 0, motion_right = 0;
      std::vector<int> mention_right(heads.mention_layers.size(), 0);
      std::vector<int> colour_right(heads.colour_word_layers.size(), 0);
      int colours_found = 0;
      int mentions_found = 0;
      const int patch = static_cast<int>(c.towers.at(0).patch_size);
      const auto object_patches = [&](const sim::Episode& episode, int object) {
        const std::array<ImageDisc, 2> d = ObjectDiscs(episode, object);
        std::vector<torch::Tensor> cams;
        for (int cam = 0; cam < 2; ++cam) {
          const ImageDisc one[kPatchTargetItems] = {d[cam], {}};
          cams.push_back(
              PatchLabels(one, static_cast<int>(c.image_size), patch, 0, 0).select(1, 0));
        }
        return torch::cat(cams);  // [vision tokens]
      };
      for (int i = 0; i < o.diagnose; ++i) {
        auto ep = sim::Episode::Create(suite, o.diagnose_seed + static_cast<uint64_t>(i),
                                       SpecSimOptions({suite, 0, -1, 0.0f}, c.image_size));
        if (!ep.ok()) return 1;
        const sim::World& w = ep->world();
        const sim::Goal* goal = sim::FirstUnsatisfiedGoal(w, ep->goals());
        if (goal == nullptr) continue;
        const std::vector<int> look_alikes = ColourLookAlikes(w, goal->object);
        if (look_alikes.empty()) continue;
        ++decided;
        const sim::Object& want = w.objects[goal->object];
        std::vector<float> a(static_cast<size_t>(c.chunk_size * c.action_dim));
        auto row = pred[i].to(torch::kFloat32).contiguous();
        std::copy(row.data_ptr<float>(), row.data_ptr<float>() + a.size(), a.begin());
        if (!UnnormalizeActions(stats.action, a.data(), c.chunk_size, c.action_dim).ok()) return 1;
        double mx = 0, my = 0;
        for (int r = 0; r < c.chunk_size; ++r) {
          mx += a[static_cast<size_t>(r * c.action_dim)];
          my += a[static_cast<size_t>(r * c.action_dim + 1)];
        }
        const double px = ap[i][0].item<float>() * kAuxPositionScale;
        const double py = ap[i][1].item<float>() * kAuxPositionScale;
        const sim::Vec3& tip = w.gripper.tip;
        const auto cosine = [&](const sim::Object& ob) {
          const double tx = ob.x - tip.x, ty = ob.y - tip.y;
          return (tx * mx + ty * my) / (std::hypot(tx, ty) * std::hypot(mx, my) + 1e-12);
        };
        const auto dist = [&](const sim::Object& ob) { return std::hypot(ob.x - px, ob.y - py); };
        bool aux_ok = true, motion_ok = true;
        for (int other : look_alikes) {
          aux_ok = aux_ok && dist(want) < dist(w.objects[other]);
          motion_ok = motion_ok && cosine(want) > cosine(w.objects[other]);
        }
        aux_right += aux_ok;
        motion_right += motion_ok;
        const int64_t g = goal - ep->goals().data();
        const int64_t mention_row = g * kPatchTargetItems < kMaxMentions
                                        ? b->mention_rows[i][g * kPatchTargetItems].item<int64_t>()
                                        : -1;
        if (mention_row < 0 || tap.row_attention.empty()) continue;
        ++mentions_found;
        const torch::Tensor want_patches = object_patches(*ep, goal->object);
        std::vector<torch::Tensor> look_alike_patches;
        for (int other : look_alikes) look_alike_patches.push_back(object_patches(*ep, other));
        // Whether row `r`'s attention at each of `layers` weighs the goal's object above every
        // look-alike; counts into `right`.
        const auto weigh = [&](int64_t r, const std::vector<int>& layers, std::vector<int>* right) {
          const std::vector<torch::Tensor> rows = tap.RowAttention(layers);
          for (size_t li = 0; li < rows.size(); ++li) {
            auto att = rows[li][i][r].to(torch::kFloat32);
            const double on_want = (att * want_patches).sum().item<double>();
            bool ok = true;
            for (const torch::Tensor& other : look_alike_patches)
              ok = ok && on_want > (att * other).sum().item<double>();
            (*right)[li] += ok;
          }
        };
        weigh(mention_row, heads.mention_layers, &mention_right);
        // The goal object's colour word: the last one before its mention.
        int64_t colour_row = -1;
        for (int k = 0; k < kMaxColourWords; ++k) {
          const int64_t r = b->colour_rows[i][k].item<int64_t>();
          if (r >= 0 && r < mention_row) colour_row = r;
        }
        if (colour_row < 0) continue;
        ++colours_found;
        weigh(colour_row, heads.colour_word_layers, &colour_right);
      }
      if (decided > 0)
        std::printf(
            "%-7s step 0 of %d scenes the colour word decides: grounding head nearer the goal's "
            "object than its look-alikes %d, first chunk's motion closer in angle to it %d\n",
            std::string(sim::SuiteName(suite)).c_str(), decided, aux_right, motion_right);
      const auto print_by_layer = [&](int found, const char* which, const char* row,
                                      const std::vector<int>& layers,
                                      const std::vector<int>& right) {
        if (found == 0) return;
        std::string by_layer;
        for (size_t li = 0; li < right.size(); ++li)
          absl::StrAppend(&by_layer, " ", layers[li], ":", right[li]);
        std::printf(
            "%-7s step 0 of %d of them%s: the goal object's %s row attends more to it than to its "
            "look-alikes, by layer%s\n",
            std::string(sim::SuiteName(suite)).c_str(), found, which, row, by_layer.c_str());
      };
      print_by_layer(mentions_found, " with the mention found", "mention", heads.mention_layers,
                     mention_right);
      print_by_layer(colours_found, "", "colour word", heads.colour_word_layers, colour_right);
    }
    return 0;
  }
  auto holdout = MakeHoldout(c, **tok, stats, 256, o.curriculum.fixed_tasks);
  if (!holdout.ok()) {
    std::fprintf(stderr, "holdout: %s\n", holdout.status().ToString().c_str());
    return 1;
  }
  {  // MentionRows knows the simulator's templates; an instruction it cannot parse is skipped.
    int64_t found = 0, total = 0;
    for (const auto& b : holdout->batches) {
      found += b.mention_rows.select(1, 0).ge(0).sum().item<int64_t>();
      total += b.mention_rows.size(0);
    }
    std::printf("mentions: found in %lld of %lld held-out instructions\n",
                static_cast<long long>(found), static_cast<long long>(total));
  }
  DaggerPool pool(static_cast<size_t>(o.dagger_pool), static_cast<int>(c.image_size),
                  *ParseDaggerStates(o.dagger_states));
  const std::string pool_path = o.out + "/dagger_pool.txt";
  if (resume && o.dagger_every > 0 && fs::exists(pool_path)) {
    if (auto st = pool.Load(pool_path); !st.ok()) {
      std::fprintf(stderr, "resume: %s\n", st.ToString().c_str());
      return 1;
    }
    std::printf("resumed the DAgger pool: %zu traces\n", pool.size());
  }
  std::mt19937_64 dagger_rng(o.seed * 7919 + static_cast<uint64_t>(start_step));
  const auto dagger_round = [&](int64_t at) -> bool {
    module->eval();
    auto t0 = Clock::now();
    auto traces = CollectDaggerTraces(**model, **tok, stats, o, at, dagger_rng);
    module->train();
    if (!traces.ok()) {
      std::fprintf(stderr, "dagger: %s\n", traces.status().ToString().c_str());
      return false;
    }
    if (auto st = pool.Add(*std::move(traces)); !st.ok()) {
      std::fprintf(stderr, "dagger: %s\n", st.ToString().c_str());
      return false;
    }
    if (auto st = pool.Save(pool_path); !st.ok()) {
      std::fprintf(stderr, "dagger: %s\n", st.ToString().c_str());
      return false;
    }
    std::printf("dagger pool %zu traces (%.0f s)\n", pool.size(),
                std::chrono::duration<double>(Clock::now() - t0).count());
    std::fflush(stdout);
    return true;
  };
  if (o.dagger_every > 0 && pool.size() == 0 && !dagger_round(start_step)) return 1;
  Producer prod(o, c, **tok, stats, &step, o.dagger_every > 0 ? &pool : nullptr);
  const bool bf16 = o.dtype == "bf16";
  double ema = -1, aux_ema = -1, patch_ema = -1, text_ema = -1, attr_ema = -1, attn_ema = -1;
  double mention_ema = -1, colour_ema = -1;
  int64_t served_samples = 0, served_kept = 0;  // --drop_specprune's sets since the last log line
  auto t_log = Clock::now();
  double wait_s = 0;
  for (int64_t s = start_step; s < o.steps; ++s) {
    auto tw = Clock::now();
    auto batch = prod.Next();
    wait_s += std::chrono::duration<double>(Clock::now() - tw).count();
    if (!batch.ok()) {
      std::fprintf(stderr, "data: %s\n", batch.status().ToString().c_str());
      return 1;
    }
    const double lr = LearningRate(o, s);
    for (size_t g = 0; g < opt.param_groups().size(); ++g)
      static_cast<torch::optim::AdamWOptions&>(opt.param_groups()[g].options())
          .lr(g == film_group && s >= o.head_warmup ? lr * o.film_lr_mult : lr);
    opt.zero_grad();
    VisionTokenDrop drop;
    if (o.drop_frac > 0) {
      std::mt19937_64 drop_rng(o.seed * 1000003ULL + static_cast<uint64_t>(s));
      drop.layer = o.drop_layer;
      std::vector<int64_t> chosen, served;
      drop.keep = DropKeepMask(*batch, o.drop_frac, o.drop_keep_min, o.drop_keep_max,
                               o.drop_item_keep, &drop_rng, &chosen);
      std::uniform_real_distribution<double> u(0, 1);
      for (int64_t i : chosen)
        if (u(drop_rng) < o.drop_specprune) served.push_back(i);
      if (auto st = SetServedKeep(module, c, *batch, bf16, drop_pruning, served, &drop.keep);
          !st.ok()) {
        std::fprintf(stderr, "--drop_specprune: %s\n", st.ToString().c_str());
        return 1;
      }
      for (int64_t i : served) served_kept += drop.keep[i].sum().item<int64_t>();
      served_samples += static_cast<int64_t>(served.size());
    }
    auto losses = Loss(module, heads, c, *batch, bf16, drop);
    auto loss = losses.action;
    auto total = losses.action;
    if (o.aux_weight > 0) total = total + o.aux_weight * losses.aux;
    if (o.patch_weight > 0) total = total + o.patch_weight * losses.patch;
    if (o.text_aux_weight > 0) total = total + o.text_aux_weight * losses.text;
    if (o.attr_weight > 0) total = total + o.attr_weight * losses.attr;
    if (o.film_patch_weight > 0) total = total + o.film_patch_weight * losses.film_patch;
    if (o.attn_weight > 0) total = total + o.attn_weight * losses.attn;
    if (o.mention_weight > 0) total = total + o.mention_weight * losses.mention;
    if (o.colour_word_weight > 0) total = total + o.colour_word_weight * losses.colour;
    total.backward();
    if (s < o.head_warmup) {
      for (auto& p : module->parameters()) p.mutable_grad() = torch::Tensor();
    }
    auto params = module->parameters();
    for (const auto& p : heads.Parameters()) params.push_back(p);
    const double gnorm = torch::nn::utils::clip_grad_norm_(params, o.clip);
    opt.step();
    step.store(s + 1);
    const double l = loss.item<double>();
    ema = ema < 0 ? l : 0.98 * ema + 0.02 * l;
    const double la = losses.aux.item<double>();
    aux_ema = aux_ema < 0 ? la : 0.98 * aux_ema + 0.02 * la;
    const double lp = losses.patch.item<double>();
    patch_ema = patch_ema < 0 ? lp : 0.98 * patch_ema + 0.02 * lp;
    const double lt = losses.text.item<double>();
    text_ema = text_ema < 0 ? lt : 0.98 * text_ema + 0.02 * lt;
    const double lat = losses.attr.item<double>();
    attr_ema = attr_ema < 0 ? lat : 0.98 * attr_ema + 0.02 * lat;
    const double lan = losses.attn.item<double>();
    attn_ema = attn_ema < 0 ? lan : 0.98 * attn_ema + 0.02 * lan;
    const double lmn = losses.mention.item<double>();
    mention_ema = mention_ema < 0 ? lmn : 0.98 * mention_ema + 0.02 * lmn;
    const double lcw = losses.colour.item<double>();
    colour_ema = colour_ema < 0 ? lcw : 0.98 * colour_ema + 0.02 * lcw;
    const int64_t done = s + 1;
    if (done % o.log_every == 0) {
      const double dt = std::chrono::duration<double>(Clock::now() - t_log).count();
      std::printf(
          "step %lld loss %.4f ema %.4f aux ema %.4f patch ema %.4f text ema %.4f attr ema %.4f "
          "attn ema %.4f mention ema %.4f colour word ema %.4f lr %.2e gnorm %.2f %.2f steps/s "
          "(data wait %.0f%%)\n",
          static_cast<long long>(done), l, ema, aux_ema, patch_ema, text_ema, attr_ema, attn_ema,
          mention_ema, colour_ema, lr, gnorm, o.log_every / dt, 100 * wait_s / dt);
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
    if (done % o.holdout_every == 0 || done == o.steps) {
      module->eval();
      aux->eval();
      const HoldoutResult hr =
          o.drop_frac > 0 ? EvalHoldout(module, heads, c, *holdout, o.drop_layer,
                                        (o.drop_keep_min + o.drop_keep_max) / 2, o.drop_item_keep)
                          : EvalHoldout(module, heads, c, *holdout);
      module->train();
      aux->train();
      std::printf(
          "holdout step %lld l1 %.4f corr(first dx) %.3f corr(first dy) %.3f "
          "corr(aux object x) %.3f corr(aux destination x) %.3f corr(aux object - tip x) %.3f "
          "patch top-1 object %.3f destination %.3f corr(text object x) %.3f attribute accuracy "
          "%.3f attention share %.3f mention share %.3f colour word share %.3f\n",
          static_cast<long long>(done), hr.l1, hr.corr_x, hr.corr_y, hr.corr_obj_x, hr.corr_dest_x,
          hr.corr_rel_x, hr.patch_object, hr.patch_destination, hr.corr_text_obj_x,
          hr.attr_accuracy, hr.attn_share, hr.mention_share, hr.colour_share);
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
    if (o.dagger_every > 0 && done % o.dagger_every == 0 && done < o.steps && !dagger_round(done))
      return 1;
    bool new_best = false;
    if (done % o.eval_every == 0 || done == o.steps) {
      module->eval();
      auto t0 = Clock::now();
      auto rate = ClosedLoop(**model, **tok, stats, o.eval_episodes, o.curriculum.fixed_tasks);
      module->train();
      if (!rate.ok()) {
        std::fprintf(stderr, "closed loop: %s\n", rate.status().ToString().c_str());
        return 1;
      }
      const double mean = ((*rate)[0] + (*rate)[1] + (*rate)[2] + (*rate)[3]) / 4;
      std::printf(
          "closed-loop step %lld success spatial %.2f object %.2f goal %.2f "
          "long %.2f "
          "mean %.3f (%d eps/suite, %.0f s)\n",
          static_cast<long long>(done), (*rate)[0], (*rate)[1], (*rate)[2], (*rate)[3], mean,
          o.eval_episodes, std::chrono::duration<double>(Clock::now() - t0).count());
      std::fflush(stdout);
      if (mean > best_success) {
        best_success = mean;
        new_best = true;
        if (auto st = SaveAll(**model, stats_file, tok_path, o.out + "/best"); !st.ok()) {
          std::fprintf(stderr, "checkpoint: %s\n", st.ToString().c_str());
          return 1;
        }
      }
    }
    if (done % o.ckpt_every == 0 || done == o.steps || new_best) {
      if (auto st = SaveAll(**model, stats_file, tok_path, o.out); !st.ok()) {
        std::fprintf(stderr, "checkpoint: %s\n", st.ToString().c_str());
        return 1;
      }
      try {
        torch::save(opt, o.out + "/optimizer.pt.tmp");
        fs::rename(o.out + "/optimizer.pt.tmp", o.out + "/optimizer.pt");
        torch::save(aux, aux_path + ".tmp");
        fs::rename(aux_path + ".tmp", aux_path);
        torch::save(heads.patch, patch_path + ".tmp");
        fs::rename(patch_path + ".tmp", patch_path);
        if (!heads.text.is_empty()) {
          torch::save(heads.text, text_path + ".tmp");
          fs::rename(text_path + ".tmp", text_path);
        }
        if (!heads.attr.is_empty()) {
          torch::save(heads.attr, attr_path + ".tmp");
          fs::rename(attr_path + ".tmp", attr_path);
        }
        if (!heads.film_patch.is_empty()) {
          torch::save(heads.film_patch, film_patch_path + ".tmp");
          fs::rename(film_patch_path + ".tmp", film_patch_path);
        }
      } catch (const c10::Error& e) {
        std::fprintf(stderr, "checkpoint: optimizer: %s\n", e.what_without_backtrace());
        return 1;
      }
      nlohmann::json j = {{"step", done}, {"best_success", best_success}, {"loss_ema", ema}};
      std::ofstream f(state_path + ".tmp");
      f << j.dump(2) << "\n";
      f.close();
      fs::rename(state_path + ".tmp", state_path);
    }
  }
  std::printf("done at step %lld\n", static_cast<long long>(o.steps));
  return 0;
}

}  // namespace
}  // namespace specprune

int main(int argc, char** argv) { return specprune::Main(argc, argv); }
