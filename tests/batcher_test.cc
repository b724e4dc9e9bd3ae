#include "server/batcher.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

namespace specprune {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

struct Item {
  int id = 0;
  bool expired = false;
};

// A one-shot event (std primitives, so ThreadSanitizer sees the hand-off).
class Latch {
 public:
  void Notify() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      notified_ = true;
    }
    cv_.notify_all();
  }
  bool notified() {
    std::lock_guard<std::mutex> lock(mu_);
    return notified_;
  }
  void Wait() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [this] { return notified_; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool notified_ = false;
};

// Collects batches (ids) thread-safely.
class Recorder {
 public:
  Batcher<Item>::RunBatch Runner() {
    return [this](std::vector<Batcher<Item>::Queued>&& batch) {
      std::vector<int> ids;
      for (const auto& q : batch) ids.push_back(q.item.id);
      {
        std::lock_guard<std::mutex> lock(mu_);
        batches_.push_back(std::move(ids));
        for (const auto& q : batch) waits_.push_back(absl::Now() - q.enqueued);
      }
      cv_.notify_all();
    };
  }
  std::vector<std::vector<int>> batches() {
    std::lock_guard<std::mutex> lock(mu_);
    return batches_;
  }
  std::vector<absl::Duration> waits() {
    std::lock_guard<std::mutex> lock(mu_);
    return waits_;
  }
  size_t items() {
    std::lock_guard<std::mutex> lock(mu_);
    size_t n = 0;
    for (const auto& b : batches_) n += b.size();
    return n;
  }
  // Waits until at least n items were run (or 10 s passed).
  bool AwaitItems(size_t n) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, std::chrono::seconds(10), [this, n] {
      size_t total = 0;
      for (const auto& b : batches_) total += b.size();
      return total >= n;
    });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::vector<int>> batches_ ABSL_GUARDED_BY(mu_);
  std::vector<absl::Duration> waits_ ABSL_GUARDED_BY(mu_);
};

std::unique_ptr<Batcher<Item>> Make(BatcherOptions options, Batcher<Item>::RunBatch run,
                                    Batcher<Item>::IsExpired is_expired = nullptr,
                                    Batcher<Item>::OnExpired on_expired = nullptr) {
  auto batcher =
      Batcher<Item>::Create(options, std::move(run), std::move(is_expired), std::move(on_expired));
  EXPECT_TRUE(batcher.ok()) << batcher.status();
  return std::move(batcher).value();
}

TEST(BatcherTest, BatchesFillUpToMaxSize) {
  Recorder recorder;
  BatcherOptions options;
  options.max_batch_size = 4;
  options.max_queue_delay = absl::Seconds(30);  // only a full batch may leave early
  auto batcher = Make(options, recorder.Runner());
  for (int i = 0; i < 8; ++i) ASSERT_TRUE(batcher->Submit(Item{i}).ok());
  ASSERT_TRUE(recorder.AwaitItems(8));
  EXPECT_THAT(recorder.batches(), ElementsAre(ElementsAre(0, 1, 2, 3), ElementsAre(4, 5, 6, 7)));
}

TEST(BatcherTest, PartialBatchLeavesAfterMaxQueueDelay) {
  Recorder recorder;
  BatcherOptions options;
  options.max_batch_size = 8;
  options.max_queue_delay = absl::Milliseconds(50);
  auto batcher = Make(options, recorder.Runner());
  const absl::Time start = absl::Now();
  ASSERT_TRUE(batcher->Submit(Item{1}).ok());
  ASSERT_TRUE(batcher->Submit(Item{2}).ok());
  ASSERT_TRUE(recorder.AwaitItems(2));
  const absl::Duration elapsed = absl::Now() - start;
  EXPECT_THAT(recorder.batches(), ElementsAre(ElementsAre(1, 2)));
  EXPECT_GE(elapsed, absl::Milliseconds(49));
  EXPECT_LT(elapsed, absl::Seconds(5));
  // The delay counts from the oldest item: its wait is at least the delay.
  EXPECT_GE(recorder.waits()[0], absl::Milliseconds(49));
}

TEST(BatcherTest, ZeroDelayRunsImmediately) {
  Recorder recorder;
  BatcherOptions options;
  options.max_batch_size = 8;
  options.max_queue_delay = absl::ZeroDuration();
  auto batcher = Make(options, recorder.Runner());
  ASSERT_TRUE(batcher->Submit(Item{1}).ok());
  ASSERT_TRUE(recorder.AwaitItems(1));
  EXPECT_LT(recorder.waits()[0], absl::Seconds(1));
}

TEST(BatcherTest, FullQueueIsResourceExhaustedAndKeepsTheItem) {
  Latch started, release;
  BatcherOptions options;
  options.max_batch_size = 1;
  options.max_queue_delay = absl::ZeroDuration();
  options.max_queue_size = 3;
  std::atomic<int> ran{0};
  auto batcher = Batcher<std::unique_ptr<int>>::Create(
      options, [&](std::vector<Batcher<std::unique_ptr<int>>::Queued>&& batch) {
        if (!started.notified()) {
          started.Notify();
          release.Wait();
        }
        ran += static_cast<int>(batch.size());
      });
  ASSERT_TRUE(batcher.ok());
  auto& b = **batcher;
  ASSERT_TRUE(b.Submit(std::make_unique<int>(0)).ok());
  started.Wait();  // the worker is busy with item 0
  for (int i = 1; i <= 3; ++i) ASSERT_TRUE(b.Submit(std::make_unique<int>(i)).ok());
  EXPECT_EQ(b.queue_depth(), 3u);

  auto rejected = std::make_unique<int>(42);
  const absl::Status status = b.Submit(std::move(rejected));
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(status.message(), HasSubstr("queue full"));
  EXPECT_THAT(status.message(), HasSubstr("3"));
  ASSERT_NE(rejected, nullptr);  // not moved from on failure
  EXPECT_EQ(*rejected, 42);

  release.Notify();
  b.Shutdown();
  EXPECT_EQ(ran.load(), 4);
}

// Runs the first batch only once released, so that the test can queue items behind it.
class BlockingRecorder {
 public:
  Batcher<Item>::RunBatch Runner() {
    return [this](std::vector<Batcher<Item>::Queued>&& batch) {
      if (!started_.notified()) {
        started_.Notify();
        release_.Wait();
      }
      recorder_.Runner()(std::move(batch));
    };
  }
  Latch& started() { return started_; }
  Latch& release() { return release_; }
  Recorder& recorder() { return recorder_; }

 private:
  Latch started_, release_;
  Recorder recorder_;
};

TEST(BatcherTest, KeysTakeTurnsSoAFloodingKeyDoesNotPushOthersBack) {
  BlockingRecorder run;
  BatcherOptions options;
  options.max_batch_size = 4;
  options.max_queue_delay = absl::ZeroDuration();
  auto batcher = Make(options, run.Runner());
  ASSERT_TRUE(batcher->Submit(Item{100}, "robot-a").ok());
  run.started().Wait();  // the worker holds item 100; everything below queues up behind it
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(batcher->Submit(Item{i}, "flooder").ok());
  ASSERT_TRUE(batcher->Submit(Item{200}, "robot-b").ok());
  ASSERT_TRUE(batcher->Submit(Item{300}, "robot-c").ok());
  EXPECT_EQ(batcher->queue_depth(), 12u);
  run.release().Notify();
  ASSERT_TRUE(run.recorder().AwaitItems(13));
  // One FIFO would run 200 and 300 only in the third and fourth batch, behind 0..9.
  EXPECT_THAT(run.recorder().batches(),
              ElementsAre(ElementsAre(100), ElementsAre(0, 200, 300, 1), ElementsAre(2, 3, 4, 5),
                          ElementsAre(6, 7, 8, 9)));
}

TEST(BatcherTest, TurnsCarryOverFromBatchToBatch) {
  BlockingRecorder run;
  BatcherOptions options;
  options.max_batch_size = 3;
  options.max_queue_delay = absl::ZeroDuration();
  auto batcher = Make(options, run.Runner());
  ASSERT_TRUE(batcher->Submit(Item{100}, "x").ok());
  run.started().Wait();
  // a: 0..3, b: 10..13 (interleaved arrival would not matter: each key keeps its order).
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(batcher->Submit(Item{i}, "a").ok());
  for (int i = 10; i < 14; ++i) ASSERT_TRUE(batcher->Submit(Item{i}, "b").ok());
  run.release().Notify();
  ASSERT_TRUE(run.recorder().AwaitItems(9));
  // The second batch ends on a's turn, so the third starts with b's.
  EXPECT_THAT(run.recorder().batches(), ElementsAre(ElementsAre(100), ElementsAre(0, 10, 1),
                                                    ElementsAre(11, 2, 12), ElementsAre(3, 13)));
}

TEST(BatcherTest, QueueBoundCountsTheItemsOfAllKeys) {
  BlockingRecorder run;
  BatcherOptions options;
  options.max_batch_size = 1;
  options.max_queue_delay = absl::ZeroDuration();
  options.max_queue_size = 3;
  auto batcher = Make(options, run.Runner());
  ASSERT_TRUE(batcher->Submit(Item{0}, "a").ok());
  run.started().Wait();
  ASSERT_TRUE(batcher->Submit(Item{1}, "a").ok());
  ASSERT_TRUE(batcher->Submit(Item{2}, "b").ok());
  ASSERT_TRUE(batcher->Submit(Item{3}, "c").ok());
  EXPECT_EQ(batcher->Submit(Item{4}, "d").code(), absl::StatusCode::kResourceExhausted);
  run.release().Notify();
  ASSERT_TRUE(run.recorder().AwaitItems(4));
}

TEST(BatcherTest, ExpiredItemsAreDroppedBeforeCompute) {
  Recorder recorder;
  std::mutex mu;
  std::vector<int> expired_ids;
  BatcherOptions options;
  options.max_batch_size = 8;
  options.max_queue_delay = absl::Seconds(30);
  auto batcher = Make(
      options, recorder.Runner(), [](const Item& item) { return item.expired; },
      [&](Batcher<Item>::Queued&& q) {
        std::lock_guard<std::mutex> lock(mu);
        expired_ids.push_back(q.item.id);
      });
  for (int i = 0; i < 8; ++i) ASSERT_TRUE(batcher->Submit(Item{i, i % 3 == 0}).ok());
  batcher->Shutdown();
  EXPECT_THAT(recorder.batches(), ElementsAre(ElementsAre(1, 2, 4, 5, 7)));
  std::lock_guard<std::mutex> lock(mu);
  EXPECT_THAT(expired_ids, ElementsAre(0, 3, 6));
}

TEST(BatcherTest, AllExpiredBatchDoesNotCallRunBatch) {
  Recorder recorder;
  std::atomic<int> expired{0};
  BatcherOptions options;
  options.max_queue_delay = absl::ZeroDuration();
  auto batcher = Make(
      options, recorder.Runner(), [](const Item&) { return true; },
      [&](Batcher<Item>::Queued&&) { ++expired; });
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(batcher->Submit(Item{i}).ok());
  batcher->Shutdown();
  EXPECT_EQ(expired.load(), 5);
  EXPECT_TRUE(recorder.batches().empty());
}

TEST(BatcherTest, ShutdownDrainsWithoutWaitingAndRejectsLaterItems) {
  Recorder recorder;
  BatcherOptions options;
  options.max_batch_size = 100;
  options.max_queue_delay = absl::Seconds(60);
  auto batcher = Make(options, recorder.Runner());
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(batcher->Submit(Item{i}).ok());
  const absl::Time start = absl::Now();
  batcher->Shutdown();
  EXPECT_LT(absl::Now() - start, absl::Seconds(10));
  EXPECT_THAT(recorder.batches(), ElementsAre(ElementsAre(0, 1, 2, 3, 4)));
  Item late{9};
  EXPECT_EQ(batcher->Submit(std::move(late)).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(batcher->queue_depth(), 0u);
  batcher->Shutdown();  // idempotent
}

TEST(BatcherTest, DestructorDrainsQueuedItems) {
  Recorder recorder;
  {
    BatcherOptions options;
    options.max_queue_delay = absl::Seconds(60);
    auto batcher = Make(options, recorder.Runner());
    ASSERT_TRUE(batcher->Submit(Item{1}).ok());
  }
  EXPECT_EQ(recorder.items(), 1u);
}

TEST(BatcherTest, InvalidOptionsAreRejected) {
  auto run = [](std::vector<Batcher<Item>::Queued>&&) {};
  BatcherOptions o;
  o.max_batch_size = 0;
  EXPECT_THAT(Batcher<Item>::Create(o, run).status().message(), HasSubstr("max_batch_size"));
  o = BatcherOptions();
  o.max_queue_size = 0;
  EXPECT_THAT(Batcher<Item>::Create(o, run).status().message(), HasSubstr("max_queue_size"));
  o = BatcherOptions();
  o.num_workers = 0;
  EXPECT_THAT(Batcher<Item>::Create(o, run).status().message(), HasSubstr("num_workers"));
  o = BatcherOptions();
  o.max_queue_delay = absl::Milliseconds(-1);
  EXPECT_THAT(Batcher<Item>::Create(o, run).status().message(), HasSubstr("max_queue_delay"));
  EXPECT_THAT(Batcher<Item>::Create(BatcherOptions(), nullptr).status().message(),
              HasSubstr("run_batch"));
}

// Producers on many threads, several workers: every item runs exactly once,
// batches respect the size bound, and rejected items are retried.
TEST(BatcherTest, ConcurrentProducersAndWorkers) {
  constexpr int kProducers = 8;
  constexpr int kPerProducer = 500;
  BatcherOptions options;
  options.max_batch_size = 6;
  options.max_queue_delay = absl::Microseconds(200);
  options.max_queue_size = 16;
  options.num_workers = 3;
  std::mutex mu;
  std::multiset<int> seen;
  size_t largest = 0;
  std::atomic<int> in_flight{0};
  std::atomic<int> max_in_flight{0};
  auto batcher = Make(options, [&](std::vector<Batcher<Item>::Queued>&& batch) {
    const int now = ++in_flight;
    int prev = max_in_flight.load();
    while (now > prev && !max_in_flight.compare_exchange_weak(prev, now)) {
    }
    absl::SleepFor(absl::Microseconds(50));
    {
      std::lock_guard<std::mutex> lock(mu);
      largest = std::max(largest, batch.size());
      for (const auto& q : batch) seen.insert(q.item.id);
    }
    --in_flight;
  });
  std::atomic<int> rejections{0};
  std::vector<std::thread> producers;
  for (int p = 0; p < kProducers; ++p) {
    producers.emplace_back([&, p] {
      for (int i = 0; i < kPerProducer; ++i) {
        Item item{p * kPerProducer + i};
        for (;;) {
          const absl::Status status = batcher->Submit(std::move(item));
          if (status.ok()) break;
          ASSERT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
          ++rejections;
          absl::SleepFor(absl::Microseconds(100));
        }
      }
    });
  }
  for (auto& t : producers) t.join();
  batcher->Shutdown();
  std::lock_guard<std::mutex> lock(mu);
  ASSERT_EQ(seen.size(), static_cast<size_t>(kProducers * kPerProducer));
  for (int id = 0; id < kProducers * kPerProducer; ++id) ASSERT_EQ(seen.count(id), 1u) << id;
  EXPECT_LE(largest, options.max_batch_size);
  EXPECT_LE(max_in_flight.load(), options.num_workers);
}

}  // namespace
}  // namespace specprune
