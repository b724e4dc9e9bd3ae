// InferenceEngine serving semantics (docs/ARCHITECTURE.md "One Predict, end to end", "Serving")
// with a fake model runner: per-robot ordering, batching across robots, overload, deadlines,
// cancellation, idempotent retries, episodes, validation, runner errors,
// shutdown and LRU eviction. The fake runner encodes each sample's robot and
// step in its proprio values and answers with actions derived from them, so
// every response can be matched to its own request.
#include "server/engine.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <ostream>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "model/dataset_stats.h"
#include "model/flops.h"
#include "model/tokenizer.h"
#include "model/vla_model.h"
#include "pruning/pruning_config.h"

namespace specprune {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// Proprio statistics q01 = -kProprioRange, q99 = +kProprioRange: the engine
// normalizes a raw value x to x / kProprioRange.
constexpr float kProprioRange = 100.0f;
constexpr absl::Duration kWait = absl::Seconds(15);

// The normalized action the fake runner returns for element (t, d) of the
// chunk; p0, p1 are the sample's first two normalized proprio values.
float FakeAction(float p0, float p1, int64_t prompt_len, int64_t t, int64_t d) {
  return p0 + 0.1f * p1 + 0.01f * static_cast<float>(t) + 0.001f * static_cast<float>(d) +
         0.0001f * static_cast<float>(prompt_len);
}

// (robot index, step) of one sample, as the runner saw it.
struct Seen {
  int robot = -1;
  int step = -1;
  bool operator==(const Seen& o) const { return robot == o.robot && step == o.step; }
};
void PrintTo(const Seen& s, std::ostream* os) { *os << "robot " << s.robot << " step " << s.step; }

// A deterministic ModelRunner that drives each sample's pruner like VlaModel
// (StatsWanted/AfterLayer with synthetic attention statistics, Finish), records
// every batch, and can be slowed down, blocked or made to fail.
class FakeRunner : public ModelRunner {
 public:
  explicit FakeRunner(ModelConfig config) : config_(std::move(config)) {}

  const ModelConfig& config() const override { return config_; }
  int64_t parameter_count() const override { return 4242; }
  std::string device_name() const override { return "fake"; }
  std::string dtype_name() const override { return "fp32"; }

  absl::StatusOr<std::vector<SampleResult>> Forward(const std::vector<SampleInput>& batch,
                                                    ForwardTimings* timings) const override {
    std::vector<Seen> seen;
    for (const auto& in : batch) {
      const float* p = in.proprio.data_ptr<float>();
      seen.push_back({static_cast<int>(std::lround(p[0] * kProprioRange)),
                      static_cast<int>(std::lround(p[1] * kProprioRange))});
    }
    absl::Status fail;
    absl::Duration delay;
    {
      std::unique_lock<std::mutex> lock(mu_);
      batches_.push_back(seen);
      ++entered_;
      cv_.notify_all();
      cv_.wait(lock, [this] { return !blocked_; });
      fail = std::exchange(fail_next_, absl::OkStatus());
      delay = delay_;
    }
    if (delay > absl::ZeroDuration()) absl::SleepFor(delay);
    if (!fail.ok()) return fail;

    std::vector<SampleResult> results;
    for (const auto& in : batch) {
      auto r = RunSample(in);
      if (!r.ok()) return r.status();
      results.push_back(std::move(*r));
    }
    if (timings != nullptr) {
      timings->vision_seconds = 0.001;
      timings->llm_seconds = 0.002;
      timings->action_head_seconds = 0.0005;
    }
    return results;
  }

  // While blocked, Forward waits (after recording its batch) until Unblock.
  void Block() {
    std::lock_guard<std::mutex> lock(mu_);
    blocked_ = true;
  }
  void Unblock() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      blocked_ = false;
    }
    cv_.notify_all();
  }
  // Sleeps this long in every Forward.
  void SetDelay(absl::Duration d) {
    std::lock_guard<std::mutex> lock(mu_);
    delay_ = d;
  }
  // The next Forward returns `s` for the whole batch.
  void FailNext(absl::Status s) {
    std::lock_guard<std::mutex> lock(mu_);
    fail_next_ = std::move(s);
  }
  // Waits until Forward has been entered `n` times in total.
  bool WaitEntered(int n) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, absl::ToChronoNanoseconds(kWait), [&] { return entered_ >= n; });
  }
  std::vector<std::vector<Seen>> batches() const {
    std::lock_guard<std::mutex> lock(mu_);
    return batches_;
  }
  // Every sample seen, in order.
  std::vector<Seen> samples() const {
    std::vector<Seen> all;
    for (const auto& b : batches())
      for (const auto& s : b) all.push_back(s);
    return all;
  }

 private:
  absl::StatusOr<SampleResult> RunSample(const SampleInput& in) const {
    const auto& c = config_;
    const int64_t prompt_len = static_cast<int64_t>(in.prompt_ids.size());
    SampleResult r;
    r.total_vision_tokens = c.vision_tokens();
    std::vector<int64_t> ids(c.vision_tokens());
    for (int64_t i = 0; i < c.vision_tokens(); ++i) ids[i] = i;
    std::vector<int64_t> tokens_per_layer;
    for (int l = 0; l < static_cast<int>(c.llm.layers); ++l) {
      r.vision_tokens_per_layer.push_back(static_cast<int32_t>(ids.size()));
      tokens_per_layer.push_back(SequenceLength(c, prompt_len, static_cast<int64_t>(ids.size())));
      if (in.pruner == nullptr) continue;
      LayerAttentionStats stats;
      const LayerAttentionStats* stats_ptr = nullptr;
      if (in.pruner->StatsWanted(l) != StatsRows::kNone) {
        // Synthetic attention: a fixed pseudo-random preference per token id.
        std::vector<float> s(ids.size());
        for (size_t i = 0; i < ids.size(); ++i)
          s[i] = 1.0f + static_cast<float>((ids[i] * 37 + l * 11) % 29);
        auto t = torch::tensor(s, torch::kFloat32);
        stats.scores = t / (t.sum() * 2.0f);
        stats.vision_entropy = std::log(static_cast<double>(ids.size()));
        stats_ptr = &stats;
      }
      auto keep = in.pruner->AfterLayer(l, ids, stats_ptr);
      if (!keep.has_value() || l + 1 == c.llm.layers) continue;
      std::set<int64_t> present(ids.begin(), ids.end()), kept;
      for (int64_t id : *keep) {
        if (present.count(id) == 0)
          return absl::InternalError(absl::StrCat("pruner kept absent token ", id));
        kept.insert(id);
      }
      ids.assign(kept.begin(), kept.end());
    }
    const float* p = in.proprio.data_ptr<float>();
    auto actions = torch::empty({c.chunk_size, c.action_dim}, torch::kFloat32);
    float* a = actions.data_ptr<float>();
    for (int64_t t = 0; t < c.chunk_size; ++t)
      for (int64_t d = 0; d < c.action_dim; ++d)
        a[t * c.action_dim + d] = FakeAction(p[0], p[1], prompt_len, t, d);
    r.normalized_actions = actions;
    const auto f = ForwardFlops(c, tokens_per_layer);
    r.llm_flops = f.llm;
    r.llm_flops_unpruned = UnprunedForwardFlops(c, prompt_len).llm;
    r.other_flops = f.vision + f.projector + f.action_head;
    if (in.pruner != nullptr) in.pruner->Finish(r.normalized_actions);
    return r;
  }

  const ModelConfig config_;
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  mutable std::vector<std::vector<Seen>> batches_;
  mutable int entered_ = 0;
  mutable absl::Status fail_next_;
  bool blocked_ = false;
  absl::Duration delay_ = absl::ZeroDuration();
};

RequestContext WithDeadline(absl::Time deadline) {
  RequestContext ctx;
  ctx.deadline = deadline;
  return ctx;
}

// What one done callback delivered.
struct Outcome {
  absl::Status status;
  std::shared_ptr<const v1::PredictResponse> response;
};

// Collects done callbacks by tag, counting how often each was called.
class Collector {
 public:
  InferenceEngine::Done Callback(int tag) {
    return [this, tag](absl::Status s, std::shared_ptr<const v1::PredictResponse> r) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        outcomes_[tag] = {std::move(s), std::move(r)};
        ++calls_[tag];
      }
      cv_.notify_all();
    };
  }
  // Waits until `n` distinct tags have been answered.
  bool WaitFor(size_t n) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, absl::ToChronoNanoseconds(kWait),
                        [&] { return outcomes_.size() >= n; });
  }
  Outcome Get(int tag) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = outcomes_.find(tag);
    return it == outcomes_.end() ? Outcome{absl::UnknownError("no answer"), nullptr} : it->second;
  }
  int calls(int tag) {
    std::lock_guard<std::mutex> lock(mu_);
    return calls_[tag];
  }
  size_t answered() {
    std::lock_guard<std::mutex> lock(mu_);
    return outcomes_.size();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<int, Outcome> outcomes_;
  std::map<int, int> calls_;
};

class EngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto c = PresetConfig("tiny");
    ASSERT_TRUE(c.ok()) << c.status();
    config_ = *c;
    ASSERT_EQ(config_.image_size, 64);
    ASSERT_EQ(config_.cameras.size(), 2u);
    ASSERT_EQ(config_.proprio_dim, 8);
    auto tok = Tokenizer::Load(TokenizerPath());
    ASSERT_TRUE(tok.ok()) << tok.status();
    tokenizer_ = std::move(*tok);
    options_.batcher.max_batch_size = 8;
    options_.batcher.max_queue_delay = absl::Milliseconds(1);
    options_.batcher.max_queue_size = 64;
    options_.preprocess_threads = 2;
    options_.sessions.on_evict = [this](const Session& s, EvictionReason) {
      std::lock_guard<std::mutex> lock(evicted_mu_);
      evicted_.push_back(s.robot_id);
    };
  }

  void TearDown() override {
    if (runner_ != nullptr) runner_->Unblock();
    if (engine_ != nullptr) engine_->Shutdown();
    engine_.reset();
  }

  static std::string TokenizerPath() {
    return std::string(SPECPRUNE_SOURCE_DIR) + "/tests/data/tokenizer_test.model";
  }

  // Creates the engine with options_ and SpecPrune defaults for the model.
  void Start() {
    auto runner = std::make_unique<FakeRunner>(config_);
    runner_ = runner.get();
    auto tok = Tokenizer::Load(TokenizerPath());
    ASSERT_TRUE(tok.ok()) << tok.status();
    DatasetStatistics stats;
    DatasetStats s;
    s.key = "fake";
    s.action.q01.assign(config_.action_dim, -1.0f);
    s.action.q99.assign(config_.action_dim, 1.0f);
    s.proprio.q01.assign(config_.proprio_dim, -kProprioRange);
    s.proprio.q99.assign(config_.proprio_dim, kProprioRange);
    ASSERT_TRUE(stats.Add(s).ok());
    PruningConfig pruning = DefaultPruningConfig(
        static_cast<int>(config_.llm.layers), config_.vision_tokens(), config_.patches_per_image());
    ASSERT_EQ(pruning.method, PruningMethod::kSpecPrune);
    auto engine = InferenceEngine::Create(
        EngineModel{"fake-model", std::move(runner), std::move(*tok), std::move(stats)}, pruning,
        options_, &metrics_);
    ASSERT_TRUE(engine.ok()) << engine.status();
    engine_ = std::move(*engine);
  }

  // Robot `robot` (index r, id "robot-r") at `step`; the instruction's length
  // depends on r so prompts differ between robots.
  static std::shared_ptr<v1::PredictRequest> Request(int robot, uint64_t step,
                                                     const std::string& episode = "ep") {
    auto req = std::make_shared<v1::PredictRequest>();
    req->set_robot_id(absl::StrCat("robot-", robot));
    req->set_episode_id(episode);
    req->set_step(step);
    for (const char* cam : {"main", "wrist"}) {
      auto* img = req->add_images();
      img->set_camera(cam);
      auto* raw = img->mutable_raw();
      raw->set_height(64);
      raw->set_width(64);
      raw->set_channels(3);
      std::string pixels(64 * 64 * 3, '\0');
      for (size_t i = 0; i < pixels.size(); ++i)
        pixels[i] = static_cast<char>((i * 7 + robot * 31 + step * 13) % 251);
      raw->set_pixels(std::move(pixels));
    }
    req->set_instruction(Instruction(robot));
    req->add_proprio(static_cast<float>(robot));
    req->add_proprio(static_cast<float>(step));
    for (int i = 2; i < 8; ++i) req->add_proprio(0.5f * i);
    return req;
  }
  static std::string Instruction(int robot) {
    std::string s = "pick up the red block";
    for (int i = 0; i < robot; ++i) s += " and the blue one";
    return s;
  }

  void Submit(int tag, std::shared_ptr<v1::PredictRequest> req, RequestContext ctx = {}) {
    engine_->Predict(std::move(req), std::move(ctx), collector_.Callback(tag));
  }

  // Submits and waits for the answer.
  Outcome Call(std::shared_ptr<v1::PredictRequest> req, RequestContext ctx = {}) {
    const int tag = next_call_tag_++;
    const size_t before = collector_.answered();
    Submit(tag, std::move(req), std::move(ctx));
    EXPECT_TRUE(collector_.WaitFor(before + 1)) << "no answer for tag " << tag;
    return collector_.Get(tag);
  }

  // Checks that `resp` answers robot r's step with r's own actions.
  void ExpectOwnAnswer(const Outcome& o, int robot, uint64_t step) {
    ASSERT_TRUE(o.status.ok()) << o.status;
    ASSERT_NE(o.response, nullptr);
    const auto& r = *o.response;
    EXPECT_EQ(r.robot_id(), absl::StrCat("robot-", robot));
    EXPECT_EQ(r.step(), step);
    ASSERT_EQ(r.actions_size(), config_.chunk_size * config_.action_dim);
    const int64_t prompt_len =
        static_cast<int64_t>(BuildPromptIds(config_, *tokenizer_, Instruction(robot)).size());
    for (int64_t t = 0; t < config_.chunk_size; ++t)
      for (int64_t d = 0; d < config_.action_dim; ++d)
        EXPECT_NEAR(r.actions(t * config_.action_dim + d),
                    FakeAction(robot / kProprioRange, step / kProprioRange, prompt_len, t, d), 2e-5)
            << "robot " << robot << " step " << step << " t " << t << " d " << d;
    EXPECT_EQ(r.total_vision_tokens(), config_.vision_tokens());
    EXPECT_EQ(r.pruning().retained_per_layer_size(), config_.llm.layers);
  }

  std::vector<std::string> evicted() {
    std::lock_guard<std::mutex> lock(evicted_mu_);
    return evicted_;
  }

  ModelConfig config_;
  std::unique_ptr<Tokenizer> tokenizer_;
  EngineOptions options_;
  ServerMetrics metrics_;
  FakeRunner* runner_ = nullptr;  // owned by engine_
  std::unique_ptr<InferenceEngine> engine_;
  Collector collector_;
  int next_call_tag_ = 100000;
  std::mutex evicted_mu_;
  std::vector<std::string> evicted_;
};

TEST_F(EngineTest, StepsOfOneRobotRunInOrderAndNeverShareABatch) {
  options_.batcher.max_queue_delay = absl::Milliseconds(5);
  ASSERT_NO_FATAL_FAILURE(Start());
  runner_->SetDelay(absl::Milliseconds(5));
  constexpr int kSteps = 8;
  // Two robots, steps submitted back to back without waiting.
  for (int step = 0; step < kSteps; ++step) {
    Submit(step, Request(1, step));
    Submit(100 + step, Request(2, step));
  }
  ASSERT_TRUE(collector_.WaitFor(2 * kSteps));
  for (int step = 0; step < kSteps; ++step) {
    for (int robot : {1, 2}) {
      const int tag = (robot == 1 ? 0 : 100) + step;
      const Outcome o = collector_.Get(tag);
      ExpectOwnAnswer(o, robot, step);
      ASSERT_NE(o.response, nullptr);
      EXPECT_FALSE(o.response->cached());
      EXPECT_EQ(o.response->episode_steps(), static_cast<uint64_t>(step + 1));
      EXPECT_EQ(collector_.calls(tag), 1);
    }
  }
  std::map<int, std::vector<int>> steps_seen;
  for (const auto& batch : runner_->batches()) {
    std::set<int> robots;
    for (const Seen& s : batch) {
      EXPECT_TRUE(robots.insert(s.robot).second) << "robot " << s.robot << " twice in one batch";
      steps_seen[s.robot].push_back(s.step);
    }
  }
  EXPECT_THAT(steps_seen[1], ElementsAre(0, 1, 2, 3, 4, 5, 6, 7));
  EXPECT_THAT(steps_seen[2], ElementsAre(0, 1, 2, 3, 4, 5, 6, 7));
}

TEST_F(EngineTest, RobotsSubmittedTogetherShareABatchAndGetTheirOwnAnswers) {
  options_.batcher.max_batch_size = 4;
  options_.batcher.max_queue_delay = absl::Seconds(2);
  ASSERT_NO_FATAL_FAILURE(Start());
  for (int robot = 1; robot <= 4; ++robot) Submit(robot, Request(robot, 0));
  ASSERT_TRUE(collector_.WaitFor(4));
  const auto batches = runner_->batches();
  ASSERT_EQ(batches.size(), 1u);
  std::set<int> robots;
  for (const Seen& s : batches[0]) robots.insert(s.robot);
  EXPECT_EQ(robots, (std::set<int>{1, 2, 3, 4}));
  for (int robot = 1; robot <= 4; ++robot) ExpectOwnAnswer(collector_.Get(robot), robot, 0);
}

TEST_F(EngineTest, FullQueueRejectsWithResourceExhaustedAndQueuedWorkCompletes) {
  options_.batcher.max_batch_size = 1;
  options_.batcher.max_queue_delay = absl::ZeroDuration();
  options_.batcher.max_queue_size = 2;
  options_.preprocess_threads = 1;  // requests reach the queue in order
  ASSERT_NO_FATAL_FAILURE(Start());
  runner_->Block();
  Submit(1, Request(1, 0));
  ASSERT_TRUE(runner_->WaitEntered(1));  // robot 1 is being computed
  Submit(2, Request(2, 0));
  Submit(3, Request(3, 0));
  Submit(4, Request(4, 0));  // queue holds 2 and 3
  ASSERT_TRUE(collector_.WaitFor(1));
  const Outcome rejected = collector_.Get(4);
  EXPECT_EQ(rejected.status.code(), absl::StatusCode::kResourceExhausted) << rejected.status;
  EXPECT_THAT(rejected.status.message(), HasSubstr("queue full"));
  EXPECT_EQ(rejected.response, nullptr);
  runner_->Unblock();
  ASSERT_TRUE(collector_.WaitFor(4));
  for (int robot = 1; robot <= 3; ++robot) ExpectOwnAnswer(collector_.Get(robot), robot, 0);
  for (const Seen& s : runner_->samples()) EXPECT_NE(s.robot, 4);
  EXPECT_THAT(metrics_.Serialize(),
              HasSubstr("specprune_rejected_requests_total{reason=\"queue_full\"} 1"));
  // The rejected robot's session is usable: its retry is computed.
  ExpectOwnAnswer(Call(Request(4, 0)), 4, 0);
}

TEST_F(EngineTest, TooManyRequestsWaitingForOneRobotAreRejected) {
  options_.max_pending_per_robot = 3;
  ASSERT_NO_FATAL_FAILURE(Start());
  runner_->Block();
  Submit(0, Request(1, 0));
  ASSERT_TRUE(runner_->WaitEntered(1));
  for (uint64_t step = 1; step <= 4; ++step) Submit(static_cast<int>(step), Request(1, step));
  ASSERT_TRUE(collector_.WaitFor(1));
  const Outcome rejected = collector_.Get(4);  // steps 1-3 wait behind step 0
  EXPECT_EQ(rejected.status.code(), absl::StatusCode::kResourceExhausted) << rejected.status;
  EXPECT_THAT(rejected.status.message(), HasSubstr("robot-1"));
  runner_->Unblock();
  ASSERT_TRUE(collector_.WaitFor(5));
  for (uint64_t step = 0; step <= 3; ++step)
    ExpectOwnAnswer(collector_.Get(static_cast<int>(step)), 1, step);
}

TEST_F(EngineTest, ExpiredDeadlineIsNotComputed) {
  options_.batcher.max_batch_size = 1;
  options_.batcher.max_queue_delay = absl::ZeroDuration();
  ASSERT_NO_FATAL_FAILURE(Start());
  // Already expired on arrival.
  const Outcome late = Call(Request(1, 0), WithDeadline(absl::Now() - absl::Seconds(1)));
  EXPECT_EQ(late.status.code(), absl::StatusCode::kDeadlineExceeded) << late.status;
  EXPECT_TRUE(runner_->batches().empty());

  // Expires while queued behind a blocked runner.
  runner_->Block();
  Submit(2, Request(2, 0));
  ASSERT_TRUE(runner_->WaitEntered(1));
  Submit(3, Request(3, 0), WithDeadline(absl::Now() + absl::Milliseconds(300)));
  absl::SleepFor(absl::Milliseconds(600));
  runner_->Unblock();
  ASSERT_TRUE(collector_.WaitFor(3));
  EXPECT_EQ(collector_.Get(3).status.code(), absl::StatusCode::kDeadlineExceeded)
      << collector_.Get(3).status;
  ExpectOwnAnswer(collector_.Get(2), 2, 0);
  EXPECT_THAT(runner_->samples(), ElementsAre(Seen{2, 0}));
}

TEST_F(EngineTest, CancelledRequestIsNotComputed) {
  options_.batcher.max_batch_size = 1;
  options_.batcher.max_queue_delay = absl::ZeroDuration();
  ASSERT_NO_FATAL_FAILURE(Start());
  auto cancelled = std::make_shared<std::atomic<bool>>(false);
  runner_->Block();
  Submit(1, Request(1, 0));
  ASSERT_TRUE(runner_->WaitEntered(1));
  Submit(2, Request(2, 0), {.cancelled = [cancelled] { return cancelled->load(); }});
  cancelled->store(true);
  runner_->Unblock();
  ASSERT_TRUE(collector_.WaitFor(2));
  const Outcome o = collector_.Get(2);
  EXPECT_EQ(o.status.code(), absl::StatusCode::kCancelled) << o.status;
  EXPECT_EQ(o.response, nullptr);
  ExpectOwnAnswer(collector_.Get(1), 1, 0);
  EXPECT_THAT(runner_->samples(), ElementsAre(Seen{1, 0}));
  // The robot's next request is computed normally.
  ExpectOwnAnswer(Call(Request(2, 0)), 2, 0);
}

TEST_F(EngineTest, RetryOfTheLastStepReturnsTheCachedResponse) {
  ASSERT_NO_FATAL_FAILURE(Start());
  ExpectOwnAnswer(Call(Request(1, 0)), 1, 0);
  const Outcome first = Call(Request(1, 1));
  ExpectOwnAnswer(first, 1, 1);
  ASSERT_NE(first.response, nullptr);
  EXPECT_FALSE(first.response->cached());
  EXPECT_EQ(first.response->episode_steps(), 2u);
  const size_t passes = runner_->samples().size();

  const Outcome retry = Call(Request(1, 1));
  ASSERT_TRUE(retry.status.ok()) << retry.status;
  EXPECT_TRUE(retry.response->cached());
  EXPECT_EQ(retry.response->step(), 1u);
  EXPECT_EQ(retry.response->episode_steps(), 2u);
  ASSERT_EQ(retry.response->actions_size(), first.response->actions_size());
  for (int i = 0; i < first.response->actions_size(); ++i)
    EXPECT_EQ(retry.response->actions(i), first.response->actions(i));
  EXPECT_EQ(runner_->samples().size(), passes);

  // The episode continues where it was.
  const Outcome next = Call(Request(1, 2));
  ExpectOwnAnswer(next, 1, 2);
  EXPECT_EQ(next.response->episode_steps(), 3u);
}

TEST_F(EngineTest, StepBelowTheLastIsRejectedWithFailedPrecondition) {
  ASSERT_NO_FATAL_FAILURE(Start());
  for (uint64_t step : {0u, 1u, 2u}) ExpectOwnAnswer(Call(Request(1, step)), 1, step);
  const size_t passes = runner_->samples().size();
  const Outcome stale = Call(Request(1, 1));
  EXPECT_EQ(stale.status.code(), absl::StatusCode::kFailedPrecondition) << stale.status;
  EXPECT_THAT(stale.status.message(), HasSubstr("step"));
  EXPECT_EQ(runner_->samples().size(), passes);
  const Outcome next = Call(Request(1, 3));
  ExpectOwnAnswer(next, 1, 3);
  EXPECT_EQ(next.response->episode_steps(), 4u);
}

TEST_F(EngineTest, NewEpisodeIdClearsTheSessionsPruningState) {
  ASSERT_NO_FATAL_FAILURE(Start());
  const Outcome first = Call(Request(1, 0, "episode-a"));
  ExpectOwnAnswer(first, 1, 0);
  EXPECT_TRUE(first.response->pruning().used_fallback());  // no prior yet
  Outcome o;
  for (uint64_t step : {1u, 2u}) {
    o = Call(Request(1, step, "episode-a"));
    ExpectOwnAnswer(o, 1, step);
  }
  EXPECT_EQ(o.response->episode_steps(), 3u);
  EXPECT_FALSE(o.response->pruning().used_fallback());  // prior from step 1
  EXPECT_LT(o.response->retained_vision_tokens(), config_.vision_tokens());

  const Outcome fresh = Call(Request(1, 0, "episode-b"));
  ExpectOwnAnswer(fresh, 1, 0);
  EXPECT_EQ(fresh.response->episode_id(), "episode-b");
  EXPECT_EQ(fresh.response->episode_steps(), 1u);
  EXPECT_FALSE(fresh.response->session_restarted());
  EXPECT_FALSE(fresh.response->cached());
  EXPECT_TRUE(fresh.response->pruning().used_fallback());  // prior was dropped
}

TEST_F(EngineTest, ResetThenLaterStepReportsSessionRestarted) {
  ASSERT_NO_FATAL_FAILURE(Start());
  ExpectOwnAnswer(Call(Request(1, 0)), 1, 0);
  ExpectOwnAnswer(Call(Request(1, 1)), 1, 1);
  EXPECT_TRUE(engine_->Reset("robot-1"));
  EXPECT_FALSE(engine_->Reset("robot-9"));
  const Outcome o = Call(Request(1, 2));
  ExpectOwnAnswer(o, 1, 2);
  EXPECT_TRUE(o.response->session_restarted());
  EXPECT_EQ(o.response->episode_steps(), 1u);
  EXPECT_TRUE(o.response->pruning().used_fallback());
}

TEST_F(EngineTest, InvalidRequestIsRejectedAndNeverReachesTheRunner) {
  ASSERT_NO_FATAL_FAILURE(Start());
  auto short_proprio = Request(1, 0);
  short_proprio->mutable_proprio()->RemoveLast();
  auto bad_robot = Request(1, 0);
  bad_robot->set_robot_id("no spaces allowed");
  auto bad_pixels = Request(1, 0);
  bad_pixels->mutable_images(1)->mutable_raw()->mutable_pixels()->resize(100);
  auto nan_proprio = Request(1, 0);
  nan_proprio->set_proprio(3, std::nanf(""));
  auto bad_key = Request(1, 0);
  bad_key->set_unnorm_key("no_such_dataset");
  auto bad_jpeg = Request(1, 0);  // framing passes validation, decoding fails
  bad_jpeg->mutable_images(0)->set_encoded(std::string("\xFF\xD8\xFF\xE0garbage", 11));

  const std::vector<std::pair<std::shared_ptr<v1::PredictRequest>, std::string>> cases = {
      {short_proprio, "proprio"},  {bad_robot, "robot_id"}, {bad_pixels, "images[1]"},
      {nan_proprio, "proprio[3]"}, {bad_key, "unnorm_key"}, {bad_jpeg, "images[0]"}};
  for (const auto& [req, field] : cases) {
    const Outcome o = Call(req);
    EXPECT_EQ(o.status.code(), absl::StatusCode::kInvalidArgument) << field << ": " << o.status;
    EXPECT_THAT(std::string(o.status.message()), HasSubstr(field));
    EXPECT_EQ(o.response, nullptr);
  }
  EXPECT_TRUE(runner_->batches().empty());
  // Nothing changed: the robot's first valid request starts its episode.
  const Outcome ok = Call(Request(1, 0));
  ExpectOwnAnswer(ok, 1, 0);
  EXPECT_EQ(ok.response->episode_steps(), 1u);
}

TEST_F(EngineTest, PromptLongerThanTheTokenCapIsRejectedBeforeTheModel) {
  options_.limits.max_instruction_tokens = 64;
  ASSERT_NO_FATAL_FAILURE(Start());
  auto wordy = Request(1, 0);  // within the byte limit, beyond the token cap
  std::string instruction;
  for (int i = 0; i < 40; ++i) instruction += "put the red cube ";
  wordy->set_instruction(instruction);
  const Outcome o = Call(wordy);
  EXPECT_EQ(o.status.code(), absl::StatusCode::kInvalidArgument) << o.status;
  EXPECT_THAT(std::string(o.status.message()), HasSubstr("instruction"));
  EXPECT_THAT(std::string(o.status.message()), HasSubstr("max_instruction_tokens (64)"));
  EXPECT_TRUE(runner_->batches().empty());
  ExpectOwnAnswer(Call(Request(1, 0)), 1, 0);  // a normal instruction still fits
}

TEST_F(EngineTest, RunnerErrorFailsItsBatchAndTheNextBatchWorks) {
  options_.batcher.max_batch_size = 2;
  options_.batcher.max_queue_delay = absl::Seconds(2);
  ASSERT_NO_FATAL_FAILURE(Start());
  runner_->FailNext(absl::InternalError("device lost"));
  Submit(1, Request(1, 0));
  Submit(2, Request(2, 0));
  ASSERT_TRUE(collector_.WaitFor(2));
  ASSERT_EQ(runner_->batches().size(), 1u);
  EXPECT_EQ(runner_->batches()[0].size(), 2u);
  for (int tag : {1, 2}) {
    const Outcome o = collector_.Get(tag);
    EXPECT_EQ(o.status.code(), absl::StatusCode::kInternal) << o.status;
    EXPECT_THAT(o.status.message(), HasSubstr("device lost"));
    EXPECT_EQ(o.response, nullptr);
  }
  // The failed step was not committed: its retry is computed, state intact.
  Submit(3, Request(1, 0));
  Submit(4, Request(2, 0));
  ASSERT_TRUE(collector_.WaitFor(4));
  for (int robot : {1, 2}) {
    const Outcome o = collector_.Get(robot + 2);
    ExpectOwnAnswer(o, robot, 0);
    EXPECT_FALSE(o.response->cached());
    EXPECT_EQ(o.response->episode_steps(), 1u);
  }
}

TEST_F(EngineTest, ShutdownDrainsQueuedWorkThenRejectsWithUnavailable) {
  options_.batcher.max_batch_size = 2;
  ASSERT_NO_FATAL_FAILURE(Start());
  runner_->SetDelay(absl::Milliseconds(5));
  constexpr int kRobots = 3, kSteps = 4;
  for (int step = 0; step < kSteps; ++step)
    for (int robot = 1; robot <= kRobots; ++robot) Submit(robot * 100 + step, Request(robot, step));
  engine_->Shutdown();
  // Shutdown returned: every accepted request has been answered, once.
  EXPECT_EQ(collector_.answered(), static_cast<size_t>(kRobots * kSteps));
  for (int step = 0; step < kSteps; ++step) {
    for (int robot = 1; robot <= kRobots; ++robot) {
      const int tag = robot * 100 + step;
      EXPECT_EQ(collector_.calls(tag), 1) << "robot " << robot << " step " << step;
      ExpectOwnAnswer(collector_.Get(tag), robot, step);
    }
  }
  EXPECT_EQ(runner_->samples().size(), static_cast<size_t>(kRobots * kSteps));
  // Later requests are refused (inline) without reaching the runner.
  const Outcome late = Call(Request(1, kSteps));
  EXPECT_EQ(late.status.code(), absl::StatusCode::kUnavailable) << late.status;
  EXPECT_EQ(runner_->samples().size(), static_cast<size_t>(kRobots * kSteps));
  engine_->Shutdown();  // idempotent
}

TEST_F(EngineTest, LruEvictionRestartsTheEvictedRobotsSession) {
  options_.sessions.max_sessions = 2;
  // One preprocessing thread: by the time a robot's answer has arrived and the
  // next robot's request has been computed, the engine holds no reference to
  // the first robot's session any more, so it is evictable.
  options_.preprocess_threads = 1;
  ASSERT_NO_FATAL_FAILURE(Start());
  ExpectOwnAnswer(Call(Request(1, 0)), 1, 0);
  ExpectOwnAnswer(Call(Request(2, 0)), 2, 0);
  ExpectOwnAnswer(Call(Request(2, 1)), 2, 1);  // robot 1 is least recently used
  ExpectOwnAnswer(Call(Request(3, 0)), 3, 0);
  EXPECT_THAT(evicted(), ElementsAre("robot-1"));
  EXPECT_EQ(engine_->active_sessions(), 2u);

  const Outcome o = Call(Request(1, 1));
  ExpectOwnAnswer(o, 1, 1);
  EXPECT_TRUE(o.response->session_restarted());
  EXPECT_EQ(o.response->episode_steps(), 1u);
  EXPECT_THAT(evicted(), ElementsAre("robot-1", "robot-2"));
  // Robot 3 kept its session.
  const Outcome three = Call(Request(3, 1));
  ExpectOwnAnswer(three, 3, 1);
  EXPECT_FALSE(three.response->session_restarted());
  EXPECT_EQ(three.response->episode_steps(), 2u);
}

}  // namespace
}  // namespace specprune
