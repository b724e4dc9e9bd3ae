#include "tools/train_diagnostics.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "tools/batch_producer.h"
#include "tools/bc_batch.h"
#include "tools/demonstrations.h"
#include "tools/failure_analysis.h"
#include "tools/grounding_targets.h"
#include "tools/holdout_eval.h"
#include "tools/training_forward.h"
#include "tools/training_losses.h"
#include "util/status_macros.h"

namespace specprune {
namespace {

using Clock = std::chrono::steady_clock;

// Step 0 of one suite's --diagnose episodes through the model and the heads.
struct SuiteProbe {
  BcBatch batch;
  Tapped tap;
  torch::Tensor pred;  // normalized actions [B, chunk, action_dim]
  torch::Tensor aux;   // the grounding head's targets, mean over the action rows [B, targets]
};

// Runs step 0 of o.diagnose episodes of `suite` and prints the probes and first actions.
absl::Status ProbeSuite(const TrainOptions& o, VlaModule& module, Heads& heads,
                        const ModelConfig& c, const Tokenizer& tok, const DatasetStats& stats,
                        sim::Suite suite, SuiteProbe* out) {
  std::vector<RawSample> raw;
  for (int i = 0; i < o.diagnose; ++i) {
    EpisodeSpec spec;
    spec.suite = suite;
    spec.seed = o.diagnose_seed + static_cast<uint64_t>(i);
    spec.num_distractors = -1;
    spec.fixed_tasks = o.curriculum.fixed_tasks;
    auto r = MakeRawSample(spec, 0, static_cast<int>(c.chunk_size), static_cast<int>(c.image_size));
    if (!r.ok()) return r.status();
    raw.push_back(*std::move(r));
  }
  SP_ASSIGN_OR_RETURN(out->batch, MakeBatch(raw, c, tok, stats, 0, nullptr));
  const BcBatch* b = &out->batch;
  Tapped& tap = out->tap;
  out->pred = TrainingForward(module, c, b->pixels, b->proprio, b->prompt_ids,
                              tap.Taps(heads, false, true, true));
  out->aux = heads.aux->forward(tap.action_hidden).mean(1);
  const torch::Tensor& pred = out->pred;
  const torch::Tensor& ap = out->aux;
  auto pl = heads.patch->forward(tap.vision_hidden);
  std::printf("%-7s patch probe top-1 in the main view: object %.2f destination %.2f\n",
              std::string(sim::SuiteName(suite)).c_str(),
              PatchTop1(pl, b->patch_labels, c.patches_per_image(), 0, 0),
              PatchTop1(pl, b->patch_labels, c.patches_per_image(), 0, 1));
  if (!heads.attr.is_empty()) {
    double both = NAN, shape = NAN, color = NAN;
    AttrLoss(heads.attr->forward(tap.vision_tokens), b->patch_attributes, &both, &shape, &color);
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
  return absl::OkStatus();
}

// Counts over the scenes the colour word decides (see DiagnoseColourDecided).
struct ColourDecidedCounts {
  int decided = 0, aux_right = 0, motion_right = 0;
  std::vector<int> mention_right, colour_right;  // per mention / colour-word layer
  int mentions_found = 0, colours_found = 0;
};

// [vision tokens] 0/1: the patches of `object`'s top face in both cameras.
torch::Tensor ObjectPatches(const sim::Episode& episode, int object, const ModelConfig& c) {
  const int patch = static_cast<int>(c.towers.at(0).patch_size);
  const std::array<ImageDisc, 2> d = ObjectDiscs(episode, object);
  std::vector<torch::Tensor> cams;
  for (int cam = 0; cam < 2; ++cam) {
    const ImageDisc one[kPatchTargetItems] = {d[cam], {}};
    cams.push_back(PatchLabels(one, static_cast<int>(c.image_size), patch, 0, 0).select(1, 0));
  }
  return torch::cat(cams);
}

// Whether the grounding head's object position and the first chunk's summed xy motion (sample i)
// point at `want` rather than at each of `look_alikes`.
absl::Status CountAuxAndMotion(const SuiteProbe& p, int i, const sim::World& w,
                               const sim::Object& want, const std::vector<int>& look_alikes,
                               const ModelConfig& c, const DatasetStats& stats,
                               ColourDecidedCounts* n) {
  std::vector<float> a(static_cast<size_t>(c.chunk_size * c.action_dim));
  auto row = p.pred[i].to(torch::kFloat32).contiguous();
  std::copy(row.data_ptr<float>(), row.data_ptr<float>() + a.size(), a.begin());
  SP_RETURN_IF_ERROR(UnnormalizeActions(stats.action, a.data(), c.chunk_size, c.action_dim));
  double mx = 0, my = 0;
  for (int r = 0; r < c.chunk_size; ++r) {
    mx += a[static_cast<size_t>(r * c.action_dim)];
    my += a[static_cast<size_t>(r * c.action_dim + 1)];
  }
  const double px = p.aux[i][0].item<float>() * kAuxPositionScale;
  const double py = p.aux[i][1].item<float>() * kAuxPositionScale;
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
  n->aux_right += aux_ok;
  n->motion_right += motion_ok;
  return absl::OkStatus();
}

// Scene i of the suite: when the colour word decides its current goal's object, counts whether
// the head, the motion, and the attention of the row that ends the goal object's mention ("cube"
// of "the red cube") and of its colour word weigh the goal's object above each look-alike.
absl::Status CountColourDecidedScene(const SuiteProbe& p, int i, sim::Suite suite,
                                     const TrainOptions& o, const Heads& heads,
                                     const ModelConfig& c, const DatasetStats& stats,
                                     ColourDecidedCounts* n) {
  SP_ASSIGN_OR_RETURN(const sim::Episode ep,
                      sim::Episode::Create(suite, o.diagnose_seed + static_cast<uint64_t>(i),
                                           SpecSimOptions({suite, 0, -1, 0.0f}, c.image_size)));
  const sim::World& w = ep.world();
  const sim::Goal* goal = sim::FirstUnsatisfiedGoal(w, ep.goals());
  if (goal == nullptr) return absl::OkStatus();
  const std::vector<int> look_alikes = ColourLookAlikes(w, goal->object);
  if (look_alikes.empty()) return absl::OkStatus();
  ++n->decided;
  SP_RETURN_IF_ERROR(CountAuxAndMotion(p, i, w, w.objects[goal->object], look_alikes, c, stats, n));
  const BcBatch* b = &p.batch;
  const int64_t g = goal - ep.goals().data();
  const int64_t mention_row = g * kPatchTargetItems < kMaxMentions
                                  ? b->mention_rows[i][g * kPatchTargetItems].item<int64_t>()
                                  : -1;
  if (mention_row < 0 || p.tap.row_attention.empty()) return absl::OkStatus();
  ++n->mentions_found;
  const torch::Tensor want_patches = ObjectPatches(ep, goal->object, c);
  std::vector<torch::Tensor> look_alike_patches;
  for (int other : look_alikes) look_alike_patches.push_back(ObjectPatches(ep, other, c));
  // Whether row `r`'s attention at each of `layers` weighs the goal's object above every
  // look-alike; counts into `right`.
  const auto weigh = [&](int64_t r, const std::vector<int>& layers, std::vector<int>* right) {
    const std::vector<torch::Tensor> rows = p.tap.RowAttention(layers);
    for (size_t li = 0; li < rows.size(); ++li) {
      auto att = rows[li][i][r].to(torch::kFloat32);
      const double on_want = (att * want_patches).sum().item<double>();
      bool ok = true;
      for (const torch::Tensor& other : look_alike_patches)
        ok = ok && on_want > (att * other).sum().item<double>();
      (*right)[li] += ok;
    }
  };
  weigh(mention_row, heads.mention_layers, &n->mention_right);
  // The goal object's colour word: the last one before its mention.
  int64_t colour_row = -1;
  for (int k = 0; k < kMaxColourWords; ++k) {
    const int64_t r = b->colour_rows[i][k].item<int64_t>();
    if (r >= 0 && r < mention_row) colour_row = r;
  }
  if (colour_row < 0) return absl::OkStatus();
  ++n->colours_found;
  weigh(colour_row, heads.colour_word_layers, &n->colour_right);
  return absl::OkStatus();
}

// Scenes the colour word decides: does the grounding head's object position, and does the first
// chunk's summed xy motion, point at the goal's object or at a look-alike of its shape? And the
// mention-grounding view: does the attention of the row that ends the goal object's mention weigh
// its patches above each look-alike's?
absl::Status DiagnoseColourDecided(const SuiteProbe& p, sim::Suite suite, const TrainOptions& o,
                                   const Heads& heads, const ModelConfig& c,
                                   const DatasetStats& stats) {
  ColourDecidedCounts n;
  n.mention_right.assign(heads.mention_layers.size(), 0);
  n.colour_right.assign(heads.colour_word_layers.size(), 0);
  for (int i = 0; i < o.diagnose; ++i)
    SP_RETURN_IF_ERROR(CountColourDecidedScene(p, i, suite, o, heads, c, stats, &n));
  const std::string name(sim::SuiteName(suite));
  if (n.decided > 0)
    std::printf(
        "%-7s step 0 of %d scenes the colour word decides: grounding head nearer the goal's "
        "object than its look-alikes %d, first chunk's motion closer in angle to it %d\n",
        name.c_str(), n.decided, n.aux_right, n.motion_right);
  const auto print_by_layer = [&](int found, const char* which, const char* row,
                                  const std::vector<int>& layers, const std::vector<int>& right) {
    if (found == 0) return;
    std::string by_layer;
    for (size_t li = 0; li < right.size(); ++li)
      absl::StrAppend(&by_layer, " ", layers[li], ":", right[li]);
    std::printf(
        "%-7s step 0 of %d of them%s: the goal object's %s row attends more to it than to its "
        "look-alikes, by layer%s\n",
        name.c_str(), found, which, row, by_layer.c_str());
  };
  print_by_layer(n.mentions_found, " with the mention found", "mention", heads.mention_layers,
                 n.mention_right);
  print_by_layer(n.colours_found, "", "colour word", heads.colour_word_layers, n.colour_right);
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckDemos(const TrainOptions& o) {
  for (double noise : {0.0, o.curriculum.noise_std})
    for (sim::Suite s : sim::kAllSuites)
      for (int distractors : {0, -1}) {
        int ok = 0;
        int64_t len = 0;
        auto t0 = Clock::now();
        for (int i = 0; i < o.check_demos; ++i) {
          EpisodeSpec e{s, static_cast<uint64_t>(i), distractors, static_cast<float>(noise)};
          auto d = RunDemo(e, 64);
          if (!d.ok()) return d.status();
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
  return absl::OkStatus();
}

absl::Status Benchmark(const TrainOptions& o, VlaModule& module, Heads& heads, const ModelConfig& c,
                       const Tokenizer& tok, const DatasetStats& stats,
                       torch::optim::Optimizer& opt, std::atomic<int64_t>* step) {
  BatchProducer prod(o, c, tok, stats, step, nullptr);
  SP_ASSIGN_OR_RETURN(const BcBatch b, prod.Next());
  for (bool bf16 : {false, true}) {
    for (int i = 0; i < 2; ++i) {  // warm-up
      opt.zero_grad();
      Loss(module, heads, c, b, bf16).action.backward();
      opt.step();
    }
    auto t0 = Clock::now();
    for (int64_t i = 0; i < o.benchmark; ++i) {
      opt.zero_grad();
      Loss(module, heads, c, b, bf16).action.backward();
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
      if (!r.ok()) return r.status();
      raw.push_back(*std::move(r));
    }
    SP_RETURN_IF_ERROR(MakeBatch(raw, c, tok, stats, o.max_shift, &rng).status());
    made += o.batch;
  }
  std::printf("data: %.0f samples/s on one thread\n",
              made / std::chrono::duration<double>(Clock::now() - t0).count());
  return absl::OkStatus();
}

absl::Status Diagnose(const TrainOptions& o, VlaModule& module, Heads& heads, const ModelConfig& c,
                      const Tokenizer& tok, const DatasetStats& stats) {
  torch::NoGradGuard ng;
  module->eval();
  heads.aux->eval();
  for (sim::Suite suite : sim::kAllSuites) {
    SuiteProbe probe;
    SP_RETURN_IF_ERROR(ProbeSuite(o, module, heads, c, tok, stats, suite, &probe));
    SP_RETURN_IF_ERROR(DiagnoseColourDecided(probe, suite, o, heads, c, stats));
  }
  return absl::OkStatus();
}

}  // namespace specprune
