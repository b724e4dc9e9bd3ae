// InferenceEngine serving semantics (docs/ARCHITECTURE.md "One Predict, end to end", "Serving")
// with a fake model runner: per-robot ordering, batching across robots, overload, deadlines,
// cancellation, idempotent retries, episodes, validation, runner errors,
// shutdown and LRU eviction. The fake runner encodes each sample's robot and
// step in its proprio values and answers with actions derived from them, so
// every response can be matched to its own request.
#include "server/engine.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "tests/engine_test_fixture.h"

// Options structs are filled by designated initializers that name only the fields a test
// changes; the rest keep their in-class defaults on purpose.
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

namespace specprune {
namespace engine_testing {
namespace {

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
}  // namespace engine_testing
}  // namespace specprune
