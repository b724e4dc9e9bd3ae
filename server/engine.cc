#include "server/engine.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>

#include "absl/hash/hash.h"
#include "absl/strings/str_cat.h"
#include "image/image_codec.h"
#include "model/flops.h"
#include "nlohmann/json.hpp"
#include "pruning/policies.h"
#include "server/action_seam.h"
#include "util/blas_runtime.h"

namespace specprune {
namespace {

using Clock = std::chrono::steady_clock;
double SecondsSince(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

std::optional<PruningMethod> ToMethod(v1::PruningMethod m) {
  switch (m) {
    case v1::PRUNING_METHOD_NONE:
      return PruningMethod::kNone;
    case v1::PRUNING_METHOD_SPECPRUNE:
      return PruningMethod::kSpecPrune;
    case v1::PRUNING_METHOD_FASTV:
      return PruningMethod::kFastV;
    case v1::PRUNING_METHOD_RANDOM:
      return PruningMethod::kRandom;
    default:
      return std::nullopt;
  }
}

v1::PruningMethod ToProto(PruningMethod m) {
  switch (m) {
    case PruningMethod::kNone:
      return v1::PRUNING_METHOD_NONE;
    case PruningMethod::kSpecPrune:
      return v1::PRUNING_METHOD_SPECPRUNE;
    case PruningMethod::kFastV:
      return v1::PRUNING_METHOD_FASTV;
    case PruningMethod::kRandom:
      return v1::PRUNING_METHOD_RANDOM;
  }
  return v1::PRUNING_METHOD_UNSPECIFIED;
}

v1::ControllerMode ToProto(ControllerMode m) {
  switch (m) {
    case ControllerMode::kCoarse:
      return v1::CONTROLLER_MODE_COARSE;
    case ControllerMode::kFine:
      return v1::CONTROLLER_MODE_FINE;
    default:
      return v1::CONTROLLER_MODE_UNSPECIFIED;
  }
}

// Row-major values of a [chunk, action_dim] chunk tensor (any device); empty when undefined.
std::vector<float> ChunkValues(const torch::Tensor& chunk) {
  if (!chunk.defined() || chunk.dim() != 2) return {};
  const torch::Tensor c = chunk.detach().to(torch::kCPU, torch::kFloat).contiguous();
  return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
}

// Action-quality metrics of one computed step: the seam between the robot's previous chunk
// (normalized, undefined on an episode's first pass) and this one, and the diagnostic deviation.
void RecordActionQuality(ServerMetrics& metrics, const torch::Tensor& previous,
                         const StepResult& result, const PruningConfig& pruning,
                         const v1::PredictResponse& response) {
  const v1::PruningMethod method = response.pruning().method();
  if (response.pruning().has_action_deviation()) {
    metrics.RecordActionDeviation(method, response.pruning().action_deviation());
  }
  if (!previous.defined()) return;
  const torch::Tensor& next = result.model.normalized_actions;
  if (!next.defined() || next.dim() != 2 || !previous.sizes().equals(next.sizes())) return;
  const std::optional<SeamMetrics> seam =
      ComputeSeam(ChunkValues(previous), ChunkValues(next), next.size(0), next.size(1),
                  pruning.specprune.executed_rows);
  if (seam) metrics.RecordActionSeam(method, seam->position_jump, seam->jerk);
}

}  // namespace

// One Predict in flight.
struct InferenceEngine::Job {
  std::shared_ptr<const v1::PredictRequest> request;
  RequestContext ctx;
  Done done;
  std::shared_ptr<Session> session;
  bool session_created = false;
  Session::Done session_done;  // starts the robot's next request
  bool session_restarted = false;
  Clock::time_point received = Clock::now();
  bool finished = false;

  // Prepared by Preprocess().
  PreparedObservation observation;
  PruningConfig pruning;
  bool diagnostic = false;
  double preprocess_seconds = 0;
};

absl::StatusOr<std::unique_ptr<InferenceEngine>> InferenceEngine::Create(
    EngineModel model, PruningConfig pruning_defaults, EngineOptions options,
    ServerMetrics* metrics) {
  if (model.runner == nullptr || model.tokenizer == nullptr)
    return absl::InvalidArgumentError("engine: model not loaded");
  if (model.stats.keys().empty())
    return absl::InvalidArgumentError("engine: model has no dataset statistics");
  if (auto s = ValidatePruningConfig(pruning_defaults); !s.ok()) return s;
  const auto& c = model.runner->config();
  options.limits.cameras = c.cameras;
  options.limits.proprio_dim = c.proprio_dim;
  options.limits.unnorm_keys = model.stats.keys();
  std::unique_ptr<InferenceEngine> engine(
      new InferenceEngine(std::move(model), std::move(pruning_defaults), options, metrics));
  InferenceEngine* e = engine.get();
  auto batcher = Batcher<std::shared_ptr<Job>>::Create(
      options.batcher,
      [e](std::vector<Batcher<std::shared_ptr<Job>>::Queued>&& batch) {
        e->RunBatch(std::move(batch));
      },
      [](const std::shared_ptr<Job>& job) {
        return absl::Now() > job->ctx.deadline || (job->ctx.cancelled && job->ctx.cancelled());
      },
      [e](Batcher<std::shared_ptr<Job>>::Queued&& q) {
        if (e->metrics_) e->metrics_->RecordExpired();
        auto& job = *q.item;
        const bool cancelled = job.ctx.cancelled && job.ctx.cancelled();
        e->Finish(job,
                  cancelled ? absl::CancelledError("request cancelled by the client before compute")
                            : absl::DeadlineExceededError("deadline expired before compute"),
                  nullptr);
      });
  if (!batcher.ok()) return batcher.status();
  engine->batcher_ = std::move(*batcher);
  engine->maintenance_thread_ = std::thread([e] { e->Maintenance(); });
  return engine;
}

InferenceEngine::InferenceEngine(EngineModel model, PruningConfig pruning_defaults,
                                 EngineOptions options, ServerMetrics* metrics)
    : model_(std::move(model)),
      policy_(*model_.runner, *model_.tokenizer),
      pruning_defaults_(std::move(pruning_defaults)),
      options_([&] {
        EngineOptions o = std::move(options);
        auto user_evict = o.sessions.on_evict;
        o.sessions.on_evict = [metrics, user_evict](const Session& s, EvictionReason r) {
          if (metrics) metrics->RecordSessionEvictions();
          if (user_evict) user_evict(s, r);
        };
        return o;
      }()),
      metrics_(metrics),
      sessions_(options_.sessions),
      preprocess_pool_(std::make_unique<ThreadPool>(options_.preprocess_threads)) {
  BuildModelInfo();
}

InferenceEngine::~InferenceEngine() { Shutdown(); }

void InferenceEngine::Shutdown() {
  {
    // Work queued behind a robot's running step still needs the pool and the
    // batcher: stop them only once every accepted request is answered.
    std::unique_lock<std::mutex> lock(inflight_mu_);
    shutting_down_ = true;
    inflight_cv_.wait(lock, [this] { return inflight_ == 0; });
  }
  {
    absl::MutexLock lock(&maintenance_mu_);
    if (stop_maintenance_) return;
    stop_maintenance_ = true;
  }
  if (maintenance_thread_.joinable()) maintenance_thread_.join();
  preprocess_pool_.reset();  // runs queued preprocessing, which submits to the batcher
  if (batcher_) batcher_->Shutdown();
}

void InferenceEngine::Maintenance() {
  while (true) {
    {
      absl::MutexLock lock(&maintenance_mu_);
      if (maintenance_mu_.AwaitWithTimeout(absl::Condition(&stop_maintenance_),
                                           options_.maintenance_period))
        return;
    }
    sessions_.EvictExpired();
    if (metrics_) {
      metrics_->SetActiveSessions(sessions_.size());
      if (batcher_) metrics_->SetQueueDepth(batcher_->queue_depth());
    }
  }
}

void InferenceEngine::BuildModelInfo() {
  const auto& c = model_.runner->config();
  auto& info = model_info_;
  info.set_config_name(c.name);
  info.set_model_path(model_.dir);
  for (const auto& cam : c.cameras) info.add_cameras(cam);
  info.set_image_height(c.image_size);
  info.set_image_width(c.image_size);
  info.set_action_dim(c.action_dim);
  info.set_chunk_size(c.chunk_size);
  info.set_proprio_dim(c.proprio_dim);
  for (const auto& k : model_.stats.keys()) info.add_unnorm_keys(k);
  info.set_vision_tokens_per_forward(c.vision_tokens());
  info.set_llm_layers(c.llm.layers);
  info.set_parameter_count(model_.runner->parameter_count());
  const int64_t prompt = static_cast<int64_t>(
      BuildPromptIds(c, *model_.tokenizer, "pick up the red block and place it on the blue plate")
          .size());
  info.set_tokens_per_forward(SequenceLength(c, prompt, c.vision_tokens()));
  info.set_flops_per_forward(UnprunedForwardFlops(c, prompt).total());
  info.set_dtype(model_.runner->dtype_name());
  info.set_device(model_.runner->device_name());
  info.set_blas_core(BlasCoreName());
  auto* p = info.mutable_pruning();
  p->set_method(ToProto(pruning_defaults_.method));
  p->set_alpha(pruning_defaults_.specprune.coarse_scale);
  p->set_fine_scale(pruning_defaults_.specprune.fine_scale);
  p->set_k_global(pruning_defaults_.specprune.k_global);
  p->set_k_local(pruning_defaults_.specprune.k_local);
  p->set_k_dynamic(pruning_defaults_.specprune.k_dynamic);
  p->set_fastv_keep_ratio(pruning_defaults_.fastv.keep_ratio);
  p->set_fastv_layer(pruning_defaults_.fastv.layer);
  info.set_max_batch_size(options_.batcher.max_batch_size);
}

bool InferenceEngine::Reset(const std::string& robot_id) { return sessions_.Erase(robot_id); }

void InferenceEngine::Predict(std::shared_ptr<const v1::PredictRequest> request, RequestContext ctx,
                              Done done) {
  if (shutting_down_) {
    if (metrics_) metrics_->RecordRejected(RejectReason::kShuttingDown);
    done(absl::UnavailableError("server is shutting down"), nullptr);
    return;
  }
  if (auto s = ValidatePredictRequest(*request, options_.limits); !s.ok()) {
    if (metrics_) metrics_->RecordRejected(RejectReason::kInvalid);
    done(s, nullptr);
    return;
  }
  {
    std::unique_lock<std::mutex> lock(inflight_mu_);
    if (shutting_down_) {
      lock.unlock();
      if (metrics_) metrics_->RecordRejected(RejectReason::kShuttingDown);
      done(absl::UnavailableError("server is shutting down"), nullptr);
      return;
    }
    ++inflight_;  // released by Finish
  }
  auto job = std::make_shared<Job>();
  job->request = std::move(request);
  job->ctx = std::move(ctx);
  job->done = std::move(done);
  job->session = sessions_.GetOrCreate(job->request->robot_id(), &job->session_created);
  if (job->session->pending() >= options_.max_pending_per_robot) {
    if (metrics_) metrics_->RecordRejected(RejectReason::kQueueFull);
    Finish(*job,
           absl::ResourceExhaustedError(absl::StrCat(
               "robot_id \"", job->request->robot_id(), "\": ", options_.max_pending_per_robot,
               " requests already waiting for this robot; send one step at a time")),
           nullptr);
    return;
  }
  job->session->Submit([this, job](Session::Done session_done) {
    job->session_done = std::move(session_done);
    StartStep(job);
  });
}

void InferenceEngine::StartStep(std::shared_ptr<Job> job) {
  const auto& req = *job->request;
  StepCheck check = DecideStep(*job->session, req.episode_id(), req.step(), job->session_created);
  job->session_restarted = check.session_restarted;
  if (check.decision == StepDecision::kRetry) {
    auto cached = std::make_shared<v1::PredictResponse>(*job->session->last_response);
    cached->set_cached(true);
    Finish(*job, absl::OkStatus(), std::move(cached));
    return;
  }
  if (check.decision == StepDecision::kStale) {
    if (metrics_) metrics_->RecordRejected(RejectReason::kStaleStep);
    Finish(*job,
           absl::FailedPreconditionError(absl::StrCat(
               "step: ", req.step(), " is lower than the episode's last step ",
               job->session->last_step, " (episode \"", job->session->episode_id, "\")")),
           nullptr);
    return;
  }
  // Bound the work accepted ahead of the batcher, as the batcher bounds its own queue.
  if (preprocess_pool_->pending() >= options_.batcher.max_queue_size) {
    if (metrics_) metrics_->RecordRejected(RejectReason::kQueueFull);
    Finish(*job,
           absl::ResourceExhaustedError(
               absl::StrCat("request queue full (", preprocess_pool_->pending(),
                            " requests waiting for preprocessing); retry later")),
           nullptr);
    return;
  }
  preprocess_pool_->Schedule([this, job] { Preprocess(job); });
}

absl::Status InferenceEngine::PrepareInputs(Job& job) {
  const auto& req = *job.request;
  const auto& c = model_.runner->config();
  auto images = ImagesInCameraOrder(req, options_.limits);
  if (!images.ok()) return images.status();
  DecodeLimits limits{options_.limits.max_image_width, options_.limits.max_image_height};
  PolicyObservation observation;
  for (size_t i = 0; i < images->size(); ++i) {
    const v1::Image& img = *(*images)[i];
    absl::StatusOr<RgbImage> rgb =
        img.has_raw() ? RawImageFromBytes(img.raw().height(), img.raw().width(),
                                          img.raw().channels(), img.raw().pixels(), limits)
                      : DecodeImage(img.encoded(), limits);
    if (!rgb.ok())
      return absl::InvalidArgumentError(
          absl::StrCat("images[", i, "] (", c.cameras[i], "): ", rgb.status().message()));
    observation.images.push_back(*std::move(rgb));
  }
  observation.instruction = req.instruction();
  observation.proprio.assign(req.proprio().begin(), req.proprio().end());
  auto stats = model_.stats.Get(req.unnorm_key());
  if (!stats.ok())
    return absl::InvalidArgumentError(absl::StrCat("unnorm_key: ", stats.status().message()));
  auto prepared = policy_.Prepare(observation, *stats);
  if (!prepared.ok()) return prepared.status();
  if (prepared->prompt_ids.size() > options_.limits.max_instruction_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("instruction: the prompt has ",
                                                   prepared->prompt_ids.size(),
                                                   " tokens, more than max_instruction_tokens (",
                                                   options_.limits.max_instruction_tokens, ")"));
  }
  job.observation = *std::move(prepared);
  const auto& o = req.pruning();
  auto pruning =
      ApplyOverride(pruning_defaults_, ToMethod(o.method()),
                    o.has_alpha() ? std::optional<float>(o.alpha()) : std::nullopt,
                    o.has_keep_ratio() ? std::optional<float>(o.keep_ratio()) : std::nullopt);
  if (!pruning.ok()) return pruning.status();
  if (!o.config_json().empty()) {
    if (o.config_json().size() > 4096)
      return absl::InvalidArgumentError("pruning.config_json: longer than 4096 bytes");
    nlohmann::json j = nlohmann::json::parse(o.config_json(), nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object())
      return absl::InvalidArgumentError("pruning.config_json: not a JSON object");
    pruning = ParsePruningConfig(j, *pruning);
    if (!pruning.ok())
      return absl::InvalidArgumentError(
          absl::StrCat("pruning.config_json: ", pruning.status().message()));
  }
  job.pruning = std::move(*pruning);
  job.diagnostic = o.has_diagnostic() && o.diagnostic();
  return absl::OkStatus();
}

void InferenceEngine::Preprocess(std::shared_ptr<Job> job) {
  const auto t0 = Clock::now();
  absl::Status s;
  try {
    s = PrepareInputs(*job);
  } catch (const c10::Error& e) {
    s = absl::InternalError(absl::StrCat("preprocessing: ", e.what_without_backtrace()));
  }
  job->preprocess_seconds = SecondsSince(t0);
  if (metrics_) metrics_->RecordStage(ComputeStage::kPreprocess, job->preprocess_seconds);
  if (!s.ok()) {
    if (metrics_ && s.code() == absl::StatusCode::kInvalidArgument)
      metrics_->RecordRejected(RejectReason::kInvalid);
    Finish(*job, s, nullptr);
    return;
  }
  auto submitted = batcher_->Submit(std::shared_ptr<Job>(job), job->ctx.fairness_key);
  if (!submitted.ok()) {
    if (metrics_) {
      metrics_->RecordRejected(submitted.code() == absl::StatusCode::kResourceExhausted
                                   ? RejectReason::kQueueFull
                                   : RejectReason::kShuttingDown);
    }
    if (submitted.code() == absl::StatusCode::kFailedPrecondition)
      submitted = absl::UnavailableError("server is shutting down");
    Finish(*job, submitted, nullptr);
  }
}

void InferenceEngine::RunBatch(std::vector<Batcher<std::shared_ptr<Job>>::Queued>&& batch) {
  const auto now = absl::Now();
  const auto& c = model_.runner->config();
  if (metrics_) metrics_->RecordBatchSize(batch.size());
  // Samples whose pruner could not be built fail alone; the rest run.
  std::vector<std::unique_ptr<SamplePruner>> pruners;
  std::vector<Job*> jobs;
  std::vector<StepInput> inputs;
  std::vector<double> queue_seconds;
  std::vector<torch::Tensor> previous_chunks;  // each robot's last chunk before this pass
  for (auto& q : batch) {
    Job& job = *q.item;
    const double queued = absl::ToDoubleSeconds(now - q.enqueued);
    if (metrics_) metrics_->RecordQueueWait(queued);
    PrunerContext ctx;
    ctx.config = &job.pruning;
    ctx.state = &job.session->pruning;
    ctx.frame_patches = job.observation.frame_patches;
    ctx.num_layers = static_cast<int>(c.llm.layers);
    ctx.num_vision_tokens = c.vision_tokens();
    ctx.seed =
        absl::HashOf(job.request->robot_id(), job.request->episode_id(), job.request->step());
    auto pruner = CreatePruner(ctx);
    if (!pruner.ok()) {
      Finish(job, absl::InternalError("could not build the pruning policy"), nullptr);
      continue;
    }
    pruners.push_back(*std::move(pruner));
    jobs.push_back(&job);
    inputs.push_back({&job.observation, pruners.back().get()});
    queue_seconds.push_back(queued);
    // The pass replaces last_actions with a new tensor; this handle keeps the previous chunk.
    previous_chunks.push_back(job.session->pruning.last_actions);
  }
  if (jobs.empty()) return;
  ForwardTimings timings;
  auto results = policy_.Run(inputs, &timings);
  if (!results.ok()) {
    for (Job* job : jobs) Finish(*job, results.status(), nullptr);
    return;
  }
  forward_passes_ += 1;
  if (metrics_) {
    metrics_->RecordStage(ComputeStage::kVision, timings.vision_seconds);
    metrics_->RecordStage(ComputeStage::kLlm, timings.llm_seconds);
    metrics_->RecordStage(ComputeStage::kActionHead, timings.action_head_seconds);
  }
  for (size_t i = 0; i < jobs.size(); ++i) {
    Job& job = *jobs[i];
    auto resp = BuildResponse(job, inputs[i], (*results)[i]);
    auto* timing = resp->mutable_timings();
    timing->set_preprocess_seconds(job.preprocess_seconds);
    timing->set_queue_seconds(queue_seconds[i]);
    timing->set_vision_seconds(timings.vision_seconds);
    timing->set_llm_seconds(timings.llm_seconds);
    timing->set_action_head_seconds(timings.action_head_seconds);
    job.session->episode_steps += 1;
    resp->set_episode_steps(job.session->episode_steps);
    if (metrics_) {
      metrics_->RecordRetainedTokens(resp->retained_vision_tokens(), resp->total_vision_tokens());
      metrics_->RecordControllerMode(resp->controller_mode());
      if (resp->pruning().refreshed_prior()) metrics_->RecordPriorRefresh();
      metrics_->RecordForwardPass(resp->pruning().method());
      RecordActionQuality(*metrics_, previous_chunks[i], (*results)[i], job.pruning, *resp);
    }
    timing->set_total_seconds(SecondsSince(job.received));
    CommitStep(*job.session, job.request->step(), resp);
    Finish(job, absl::OkStatus(), resp);
  }
}

std::shared_ptr<v1::PredictResponse> InferenceEngine::BuildResponse(const Job& job,
                                                                    const StepInput& input,
                                                                    const StepResult& result) {
  const auto& c = model_.runner->config();
  const auto& req = *job.request;
  auto resp = std::make_shared<v1::PredictResponse>();
  resp->set_robot_id(req.robot_id());
  resp->set_episode_id(req.episode_id());
  resp->set_step(req.step());
  resp->set_chunk_size(c.chunk_size);
  resp->set_action_dim(c.action_dim);
  for (float a : result.actions) resp->add_actions(a);
  const auto& per_layer = result.model.vision_tokens_per_layer;
  resp->set_retained_vision_tokens(per_layer.back());
  resp->set_total_vision_tokens(result.model.total_vision_tokens);
  resp->set_controller_mode(ToProto(result.mode));
  resp->set_session_restarted(job.session_restarted);
  auto* tel = resp->mutable_pruning();
  tel->set_method(ToProto(job.pruning.method));
  tel->set_total_vision_tokens(result.model.total_vision_tokens);
  tel->set_retained_after_static(per_layer.size() > 2 ? per_layer[2] : per_layer.back());
  for (int32_t n : per_layer) tel->add_retained_per_layer(n);
  tel->set_flops_ratio(result.model.flops() / result.model.flops_unpruned());
  tel->set_used_fallback(result.used_fallback);
  tel->set_refreshed_prior(result.refreshed_prior);
  if (job.diagnostic) {
    auto reference = policy_.CompareWithUnpruned(input, result, job.pruning);
    if (reference.ok()) {
      tel->set_action_deviation(reference->action_deviation);
      if (reference->global_recall) tel->set_global_recall(*reference->global_recall);
    }
  }
  return resp;
}

void InferenceEngine::Finish(Job& job, absl::Status status,
                             std::shared_ptr<const v1::PredictResponse> response) {
  if (job.finished) return;
  job.finished = true;
  Done done = std::move(job.done);
  Session::Done next = std::move(job.session_done);
  done(std::move(status), std::move(response));
  if (next) next();
  std::lock_guard<std::mutex> lock(inflight_mu_);
  if (--inflight_ == 0) inflight_cv_.notify_all();
}

}  // namespace specprune
