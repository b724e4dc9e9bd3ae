#include "tools/policy_rollout.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>

#include "absl/strings/str_cat.h"
#include "tools/failure_analysis.h"
#include "util/status_macros.h"

namespace specprune {

absl::StatusOr<PolicyObservation> EpisodeObservation(const sim::Episode& episode,
                                                     const ModelConfig& config) {
  if (config.cameras.size() != 2)
    return absl::InvalidArgumentError("config.cameras: the simulator renders exactly 2 cameras");
  PolicyObservation o;
  o.images = {episode.RenderMain(), episode.RenderWrist()};
  o.instruction = episode.instruction();
  const sim::Proprio raw = episode.proprio();
  o.proprio.assign(raw.begin(), raw.end());
  return o;
}

namespace {

// Failure analysis while the first goal's object is not grasped yet: the closest the fingertips
// come to it in xy (EpisodeOutcome::min_xy_error).
void TrackApproach(const sim::Episode& ep, EpisodeOutcome* out) {
  if (ep.goals().empty() || out->grasped_goal_object) return;
  const sim::Object& o = ep.world().objects[ep.goals().front().object];
  const sim::Vec3& tip = ep.world().gripper.tip;
  out->min_xy_error = std::min(out->min_xy_error, std::hypot(o.x - tip.x, o.y - tip.y));
}

// RolloutOptions::trace_episode: the scene at the first pass, then the state and first action of
// every pass (stderr).
void PrintTrace(const sim::Episode& ep, const float* a) {
  const sim::World& w = ep.world();
  const sim::Object& o = w.objects[ep.goals().front().object];
  if (ep.steps() == 0) {
    std::fprintf(stderr, "trace \"%s\"\n", ep.instruction().c_str());
    for (size_t i = 0; i < w.objects.size(); ++i)
      std::fprintf(stderr, "trace object %zu %s %s at %+.3f %+.3f\n", i,
                   std::string(sim::ColorName(w.objects[i].color)).c_str(),
                   std::string(sim::ShapeName(w.objects[i].shape)).c_str(), w.objects[i].x,
                   w.objects[i].y);
    for (const sim::Plate& p : w.plates)
      std::fprintf(stderr, "trace plate %s at %+.3f %+.3f\n",
                   std::string(sim::ColorName(p.color)).c_str(), p.x, p.y);
    for (const sim::Goal& g : ep.goals()) {
      const sim::Object& go = w.objects[g.object];
      std::fprintf(stderr, "trace goal object %d at %+.3f %+.3f -> target %d\n", g.object, go.x,
                   go.y, g.target);
    }
  }
  std::fprintf(stderr,
               "trace step %3d tip %+.3f %+.3f %.3f held %d | object %+.3f %+.3f %.3f | "
               "a0 %+.2f %+.2f %+.2f grip %+.2f\n",
               ep.steps(), w.gripper.tip.x, w.gripper.tip.y, w.gripper.tip.z, w.gripper.held, o.x,
               o.y, o.z, a[0], a[1], a[2], a[6]);
}

// Executes the first execute_steps rows of the chunk `a` ([chunk, action_dim]) while the episode
// runs, with the grasp analysis of each step.
absl::Status ExecuteChunk(const float* a, int action_dim, const RolloutOptions& options,
                          sim::Episode* ep, EpisodeOutcome* out) {
  for (int s = 0; s < options.execute_steps && !ep->done(); ++s) {
    sim::Action act;
    for (int d = 0; d < sim::kActionDim; ++d) act[d] = a[s * action_dim + d];
    for (float& v : act)
      if (!std::isfinite(v)) v = 0.0f;  // a diverged model fails the episode, not the run
    const sim::World before = ep->world();
    SP_ASSIGN_OR_RETURN(const sim::StepResult st, ep->Step(act));
    if (st.grasped >= 0) {
      const GraspAssessment g = AssessGrasp(before, ep->goals(), st.grasped);
      if (g.goal_object) {
        ++out->goal_object_grasps;
      } else if (out->wrong_object_grasps++ == 0) {
        out->first_wrong_same_color = g.same_color;
        out->first_wrong_same_shape = g.same_shape;
        out->first_wrong_confusion = g.confusion;
      }
    }
    if (options.record_actions) out->executed.push_back(act);
    TrackApproach(*ep, out);
    if (!ep->goals().empty() && st.grasped == ep->goals().front().object)
      out->grasped_goal_object = true;
  }
  return absl::OkStatus();
}

// One batched forward pass over the episodes `batch` (indices into `episodes`), then the
// execution of each one's chunk.
absl::Status RunPass(const PolicyStep& policy, const DatasetStats& stats,
                     const RolloutOptions& options, const RolloutHooks& hooks,
                     const std::vector<size_t>& batch, std::vector<sim::Episode>* episodes,
                     std::vector<EpisodeOutcome>* out, RolloutTimings* timings) {
  const ModelConfig& c = policy.config();
  std::vector<PreparedObservation> observations;
  std::vector<std::unique_ptr<SamplePruner>> pruners;
  for (const size_t e : batch) {
    SP_ASSIGN_OR_RETURN(const PolicyObservation observation, EpisodeObservation((*episodes)[e], c));
    SP_ASSIGN_OR_RETURN(PreparedObservation prepared, policy.Prepare(observation, &stats));
    std::unique_ptr<SamplePruner> pruner;
    if (hooks.make_pruner) {
      SP_ASSIGN_OR_RETURN(pruner, hooks.make_pruner(e, prepared.frame_patches));
    }
    observations.push_back(std::move(prepared));
    pruners.push_back(std::move(pruner));
  }
  std::vector<StepInput> inputs;
  for (size_t k = 0; k < observations.size(); ++k)
    inputs.push_back({&observations[k], pruners[k].get()});
  const auto t0 = std::chrono::steady_clock::now();
  ForwardTimings forward;
  SP_ASSIGN_OR_RETURN(const std::vector<StepResult> results, policy.Run(inputs, &forward));
  if (timings != nullptr) {
    timings->forward_seconds +=
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    timings->samples += static_cast<int64_t>(inputs.size());
    timings->AddPass(forward);
  }
  for (size_t k = 0; k < batch.size(); ++k) {
    const size_t e = batch[k];
    sim::Episode& ep = (*episodes)[e];
    const StepResult& r = results[k];
    if (hooks.observe) SP_RETURN_IF_ERROR(hooks.observe(e, ep, inputs[k], r));
    const float* a = r.actions.data();
    ++(*out)[e].forward_passes;
    if (static_cast<int>(e) == options.trace_episode && !ep.goals().empty()) PrintTrace(ep, a);
    SP_RETURN_IF_ERROR(ExecuteChunk(a, static_cast<int>(c.action_dim), options, &ep, &(*out)[e]));
  }
  return absl::OkStatus();
}

// Adds every field of t to *total.
void SumForwardTimings(const ForwardTimings& t, ForwardTimings* total) {
  total->vision_seconds += t.vision_seconds;
  total->llm_seconds += t.llm_seconds;
  total->action_head_seconds += t.action_head_seconds;
  total->pruning_seconds += t.pruning_seconds;
  total->llm_row_layers += t.llm_row_layers;
  total->llm_valid_row_layers += t.llm_valid_row_layers;
  total->llm_gemm_row_layers += t.llm_gemm_row_layers;
  total->llm_attention_scores += t.llm_attention_scores;
  total->llm_query_row_layers += t.llm_query_row_layers;
  auto& layers = total->llm_layer_seconds;
  layers.resize(std::max(layers.size(), t.llm_layer_seconds.size()), 0.0);
  for (size_t l = 0; l < t.llm_layer_seconds.size(); ++l) layers[l] += t.llm_layer_seconds[l];
  total->llm_sub_batches += t.llm_sub_batches;
}

}  // namespace

void RolloutTimings::Add(const RolloutTimings& other) {
  forward_seconds += other.forward_seconds;
  samples += other.samples;
  passes += other.passes;
  SumForwardTimings(other.model, &model);
}

void RolloutTimings::AddPass(const ForwardTimings& pass) {
  ++passes;
  SumForwardTimings(pass, &model);
}

absl::StatusOr<std::vector<EpisodeOutcome>> RunPolicyEpisodes(
    const PolicyStep& policy, const DatasetStats& stats, std::vector<sim::Episode> episodes,
    const RolloutOptions& options, const RolloutHooks& hooks, RolloutTimings* timings) {
  const ModelConfig& c = policy.config();
  if (options.execute_steps < 1 || options.execute_steps > c.chunk_size)
    return absl::InvalidArgumentError(
        absl::StrCat("execute_steps: must be in [1, ", c.chunk_size, "]"));
  if (options.max_batch < 1) return absl::InvalidArgumentError("max_batch: must be positive");
  std::vector<EpisodeOutcome> out(episodes.size());
  for (size_t e = 0; e < episodes.size(); ++e) {
    out[e].min_xy_error = std::numeric_limits<double>::infinity();
    TrackApproach(episodes[e], &out[e]);
  }
  while (true) {
    std::vector<size_t> active;
    for (size_t i = 0; i < episodes.size(); ++i)
      if (!episodes[i].done()) active.push_back(i);
    if (active.empty()) break;
    for (size_t begin = 0; begin < active.size(); begin += options.max_batch) {
      const size_t end = std::min(active.size(), begin + options.max_batch);
      const std::vector<size_t> batch(active.begin() + begin, active.begin() + end);
      SP_RETURN_IF_ERROR(RunPass(policy, stats, options, hooks, batch, &episodes, &out, timings));
    }
  }
  for (size_t i = 0; i < episodes.size(); ++i) {
    out[i].success = episodes[i].success();
    out[i].steps = episodes[i].steps();
    out[i].goals_satisfied = episodes[i].goals_satisfied();
    out[i].wrong_destination = OnWrongDestination(episodes[i].world(), episodes[i].goals());
    out[i].holding_at_end = episodes[i].world().gripper.held >= 0;
  }
  return out;
}

}  // namespace specprune
