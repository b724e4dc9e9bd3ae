// The InferenceEngine tests' fixture (tests/engine_test.cc): a deterministic fake ModelRunner that
// encodes each sample's robot and step in its answers, a collector of done callbacks, and the
// EngineTest fixture that builds an engine around them. Included by engine_test.cc only.
#pragma once

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
#include "server/engine.h"

namespace specprune {
namespace engine_testing {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// Proprio statistics q01 = -kProprioRange, q99 = +kProprioRange: the engine
// normalizes a raw value x to x / kProprioRange.
constexpr float kProprioRange = 100.0f;
inline constexpr absl::Duration kWait = absl::Seconds(15);

// The normalized action the fake runner returns for element (t, d) of the
// chunk; p0, p1 are the sample's first two normalized proprio values.
inline float FakeAction(float p0, float p1, int64_t prompt_len, int64_t t, int64_t d) {
  return p0 + 0.1f * p1 + 0.01f * static_cast<float>(t) + 0.001f * static_cast<float>(d) +
         0.0001f * static_cast<float>(prompt_len);
}

// (robot index, step) of one sample, as the runner saw it.
struct Seen {
  int robot = -1;
  int step = -1;
  bool operator==(const Seen& o) const { return robot == o.robot && step == o.step; }
};
inline void PrintTo(const Seen& s, std::ostream* os) {
  *os << "robot " << s.robot << " step " << s.step;
}

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

inline RequestContext WithDeadline(absl::Time deadline) {
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

}  // namespace engine_testing
}  // namespace specprune
