#include "server/session_store.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <random>
#include <thread>
#include <utility>
#include <vector>

namespace specprune {
namespace {

using ::testing::ElementsAre;
using ::testing::Pair;

// A manually advanced clock shared with the store.
class FakeClock {
 public:
  absl::Time Now() {
    std::lock_guard<std::mutex> lock(mu_);
    return now_;
  }
  void Advance(absl::Duration d) {
    std::lock_guard<std::mutex> lock(mu_);
    now_ += d;
  }

 private:
  std::mutex mu_;
  absl::Time now_ = absl::FromUnixSeconds(1000000);
};

// Records evictions reported by the store.
struct EvictionLog {
  std::mutex mu;
  std::vector<std::pair<std::string, EvictionReason>> entries ABSL_GUARDED_BY(mu);

  std::function<void(const Session&, EvictionReason)> Listener() {
    return [this](const Session& s, EvictionReason r) {
      std::lock_guard<std::mutex> lock(mu);
      entries.emplace_back(s.robot_id, r);
    };
  }
  std::vector<std::pair<std::string, EvictionReason>> Get() {
    std::lock_guard<std::mutex> lock(mu);
    return entries;
  }
};

// A pool of threads running closures, to complete work items asynchronously.
class Pool {
 public:
  explicit Pool(int threads) {
    for (int i = 0; i < threads; ++i) {
      threads_.emplace_back([this] {
        for (;;) {
          std::function<void()> task;
          {
            std::unique_lock<std::mutex> lock(mu_);
            cv_.wait(lock, [this] { return stop_ || !tasks_.empty(); });
            if (tasks_.empty()) return;
            task = std::move(tasks_.front());
            tasks_.pop_front();
          }
          task();
        }
      });
    }
  }
  ~Pool() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }
  void Run(std::function<void()> task) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      tasks_.push_back(std::move(task));
    }
    cv_.notify_one();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> tasks_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

SessionStoreOptions Options(size_t max_sessions, FakeClock* clock = nullptr,
                            EvictionLog* log = nullptr) {
  SessionStoreOptions o;
  o.max_sessions = max_sessions;
  if (clock != nullptr) o.clock = [clock] { return clock->Now(); };
  if (log != nullptr) o.on_evict = log->Listener();
  return o;
}

TEST(SessionStoreTest, GetOrCreateReturnsTheSameSessionPerRobot) {
  SessionStore store(Options(8));
  bool created = false;
  std::shared_ptr<Session> a = store.GetOrCreate("a", &created);
  EXPECT_TRUE(created);
  EXPECT_EQ(a->robot_id, "a");
  EXPECT_EQ(store.GetOrCreate("a", &created), a);
  EXPECT_FALSE(created);
  EXPECT_NE(store.GetOrCreate("b", &created), a);
  EXPECT_TRUE(created);
  EXPECT_EQ(store.size(), 2u);
  EXPECT_EQ(store.Find("a"), a);
  EXPECT_EQ(store.Find("zzz"), nullptr);
}

TEST(SessionStoreTest, EvictsLeastRecentlyUsedAtCapacity) {
  EvictionLog log;
  SessionStore store(Options(3, nullptr, &log));
  store.GetOrCreate("a");
  store.GetOrCreate("b");
  store.GetOrCreate("c");
  store.GetOrCreate("a");  // a is now most recently used; b is the LRU
  store.GetOrCreate("d");
  EXPECT_EQ(store.size(), 3u);
  EXPECT_EQ(store.Find("b"), nullptr);
  EXPECT_NE(store.Find("a"), nullptr);
  store.GetOrCreate("e");  // evicts c
  EXPECT_EQ(store.Find("c"), nullptr);
  EXPECT_EQ(store.evictions(), 2u);
  EXPECT_THAT(log.Get(), ElementsAre(Pair("b", EvictionReason::kCapacity),
                                     Pair("c", EvictionReason::kCapacity)));
}

TEST(SessionStoreTest, FindDoesNotRefreshRecency) {
  SessionStore store(Options(2));
  store.GetOrCreate("a");
  store.GetOrCreate("b");
  store.Find("a");
  store.GetOrCreate("c");
  EXPECT_EQ(store.Find("a"), nullptr);
  EXPECT_NE(store.Find("b"), nullptr);
}

TEST(SessionStoreTest, IdleSessionsExpireAfterTtl) {
  FakeClock clock;
  EvictionLog log;
  SessionStoreOptions o = Options(100, &clock, &log);
  o.idle_ttl = absl::Minutes(10);
  SessionStore store(o);
  store.GetOrCreate("a");
  clock.Advance(absl::Minutes(5));
  store.GetOrCreate("b");
  clock.Advance(absl::Minutes(4));
  EXPECT_EQ(store.EvictExpired(), 0u);
  clock.Advance(absl::Minutes(1));  // a idle for exactly 10 min, b for 5
  EXPECT_EQ(store.EvictExpired(), 1u);
  EXPECT_EQ(store.Find("a"), nullptr);
  EXPECT_NE(store.Find("b"), nullptr);
  clock.Advance(absl::Minutes(5));
  EXPECT_EQ(store.EvictExpired(), 1u);
  EXPECT_EQ(store.size(), 0u);
  EXPECT_EQ(store.evictions(), 2u);
  EXPECT_THAT(log.Get(), ElementsAre(Pair("a", EvictionReason::kExpired),
                                     Pair("b", EvictionReason::kExpired)));
}

TEST(SessionStoreTest, UseRefreshesTtl) {
  FakeClock clock;
  SessionStoreOptions o = Options(100, &clock);
  o.idle_ttl = absl::Minutes(10);
  SessionStore store(o);
  store.GetOrCreate("a");
  clock.Advance(absl::Minutes(9));
  store.GetOrCreate("a");
  clock.Advance(absl::Minutes(9));
  EXPECT_EQ(store.EvictExpired(), 0u);
  EXPECT_NE(store.Find("a"), nullptr);
}

TEST(SessionStoreTest, GetOrCreateExpiresOpportunistically) {
  FakeClock clock;
  SessionStoreOptions o = Options(100, &clock);
  o.idle_ttl = absl::Seconds(1);
  SessionStore store(o);
  store.GetOrCreate("old");
  clock.Advance(absl::Seconds(2));
  store.GetOrCreate("new");
  EXPECT_EQ(store.Find("old"), nullptr);
  EXPECT_EQ(store.size(), 1u);
  EXPECT_EQ(store.evictions(), 1u);
}

TEST(SessionStoreTest, ZeroTtlDisablesExpiry) {
  FakeClock clock;
  SessionStoreOptions o = Options(100, &clock);
  o.idle_ttl = absl::ZeroDuration();
  SessionStore store(o);
  store.GetOrCreate("a");
  clock.Advance(absl::Hours(1000));
  EXPECT_EQ(store.EvictExpired(), 0u);
  EXPECT_EQ(store.size(), 1u);
}

TEST(SessionStoreTest, BusySessionsAreNeverEvicted) {
  FakeClock clock;
  SessionStoreOptions o = Options(2, &clock);
  o.idle_ttl = absl::Seconds(10);
  SessionStore store(o);
  // a has a running work item that has not finished; nobody else holds a
  // reference.
  Session::Done a_done;
  store.GetOrCreate("a")->Submit([&](Session::Done done) { a_done = std::move(done); });
  store.GetOrCreate("b");
  store.GetOrCreate("c");  // a is the LRU but busy: b goes
  EXPECT_NE(store.Find("a"), nullptr);
  EXPECT_EQ(store.Find("b"), nullptr);

  clock.Advance(absl::Seconds(60));
  EXPECT_EQ(store.EvictExpired(), 1u);  // c expires, a is busy
  EXPECT_NE(store.Find("a"), nullptr);

  a_done();
  a_done = nullptr;                     // drop the last outside reference
  EXPECT_EQ(store.EvictExpired(), 1u);  // now idle: a expires too
  EXPECT_EQ(store.size(), 0u);
}

TEST(SessionStoreTest, ReferencedSessionsAreNotEvicted) {
  SessionStore store(Options(1));
  std::shared_ptr<Session> a = store.GetOrCreate("a");  // request between lookup and Submit
  store.GetOrCreate("b");
  EXPECT_EQ(store.Find("a"), a);
}

TEST(SessionStoreTest, ExceedsBoundWhenAllSessionsAreBusy) {
  SessionStore store(Options(2));
  std::vector<Session::Done> dones;
  for (const char* id : {"a", "b", "c"}) {
    store.GetOrCreate(id)->Submit([&](Session::Done done) { dones.push_back(std::move(done)); });
  }
  EXPECT_EQ(store.size(), 3u);
  EXPECT_EQ(store.evictions(), 0u);
  for (auto& done : dones) done();
  dones.clear();
  store.GetOrCreate("d");  // shrinks back: one idle LRU session goes per insertion
  EXPECT_EQ(store.size(), 3u);
  EXPECT_EQ(store.Find("a"), nullptr);
}

TEST(SessionStoreTest, EraseDropsSessionButInFlightWorkFinishes) {
  SessionStore store(Options(8));
  std::shared_ptr<Session> old = store.GetOrCreate("a");
  old->episode_id = "ep";
  Session::Done done_later;
  old->Submit([&](Session::Done done) { done_later = std::move(done); });
  std::weak_ptr<Session> weak = old;
  old.reset();

  EXPECT_TRUE(store.Erase("a"));
  EXPECT_FALSE(store.Erase("a"));
  EXPECT_EQ(store.size(), 0u);
  EXPECT_FALSE(weak.expired());  // kept alive by the pending work
  bool created = false;
  std::shared_ptr<Session> fresh = store.GetOrCreate("a", &created);
  EXPECT_TRUE(created);
  EXPECT_NE(fresh, weak.lock());
  EXPECT_EQ(fresh->episode_id, "");
  EXPECT_EQ(store.evictions(), 0u);  // erase is not an eviction

  done_later();
  done_later = nullptr;
  EXPECT_TRUE(weak.expired());
}

TEST(SessionStoreTest, NewEpisodeClearsState) {
  Session s("r");
  s.episode_id = "ep1";
  s.has_step = true;
  s.last_step = 4;
  s.episode_steps = 5;
  s.last_response = std::make_shared<v1::PredictResponse>();
  s.pruning.global_prior = torch::ones({16});
  s.pruning.frames.push_back(torch::zeros({16, 3}));
  s.pruning.steps = 5;

  const StepCheck check = DecideStep(s, "ep2", 0, /*session_created=*/false);
  EXPECT_EQ(check.decision, StepDecision::kNew);
  EXPECT_TRUE(check.episode_changed);
  EXPECT_FALSE(check.session_restarted);
  EXPECT_EQ(s.episode_id, "ep2");
  EXPECT_FALSE(s.has_step);
  EXPECT_EQ(s.episode_steps, 0u);
  EXPECT_EQ(s.last_response, nullptr);
  EXPECT_FALSE(s.pruning.global_prior.defined());
  EXPECT_TRUE(s.pruning.frames.empty());
  EXPECT_EQ(s.pruning.steps, 0);
}

TEST(SessionStoreTest, RetryAndStaleDecisions) {
  Session s("r");
  EXPECT_EQ(DecideStep(s, "ep", 0, true).decision, StepDecision::kNew);
  auto response = std::make_shared<v1::PredictResponse>();
  response->set_step(0);
  CommitStep(s, 0, response);
  s.pruning.steps = 1;

  StepCheck check = DecideStep(s, "ep", 0, false);
  EXPECT_EQ(check.decision, StepDecision::kRetry);
  EXPECT_FALSE(check.session_restarted);
  EXPECT_EQ(s.last_response, response);
  EXPECT_EQ(s.pruning.steps, 1);  // untouched

  EXPECT_EQ(DecideStep(s, "ep", 1, false).decision, StepDecision::kNew);
  CommitStep(s, 5, std::make_shared<v1::PredictResponse>());
  EXPECT_EQ(DecideStep(s, "ep", 4, false).decision, StepDecision::kStale);
  EXPECT_EQ(DecideStep(s, "ep", 0, false).decision, StepDecision::kStale);
  EXPECT_EQ(DecideStep(s, "ep", 5, false).decision, StepDecision::kRetry);
  EXPECT_EQ(DecideStep(s, "ep", 9, false).decision,
            StepDecision::kNew);  // gaps are fine
  EXPECT_EQ(s.last_step, 5u);

  // A stale step of another episode is a new episode, not stale.
  EXPECT_EQ(DecideStep(s, "ep-b", 0, false).decision, StepDecision::kNew);
}

TEST(SessionStoreTest, RetryWithoutCachedResponseIsRecomputed) {
  Session s("r");
  DecideStep(s, "ep", 2, true);
  CommitStep(s, 2, nullptr);  // step 2 failed after its state was committed
  EXPECT_EQ(DecideStep(s, "ep", 2, false).decision, StepDecision::kNew);
}

TEST(SessionStoreTest, ReportsSessionRestarted) {
  {
    Session s("r");  // freshly created, robot is mid-episode
    const StepCheck check = DecideStep(s, "ep", 7, /*session_created=*/true);
    EXPECT_EQ(check.decision, StepDecision::kNew);
    EXPECT_TRUE(check.session_restarted);
  }
  {
    Session s("r");  // freshly created at the first step: a normal start
    EXPECT_FALSE(DecideStep(s, "ep", 0, true).session_restarted);
  }
  {
    Session s("r");  // existing session, continuing episode
    DecideStep(s, "ep", 0, true);
    CommitStep(s, 0, std::make_shared<v1::PredictResponse>());
    EXPECT_FALSE(DecideStep(s, "ep", 1, false).session_restarted);
    // New episode id while the robot claims step > 0: no state for it.
    EXPECT_TRUE(DecideStep(s, "other", 3, false).session_restarted);
  }
}

TEST(SessionStoreTest, WorkRunsImmediatelyWhenIdle) {
  auto s = std::make_shared<Session>("r");
  bool ran = false;
  s->Submit([&](Session::Done done) {
    ran = true;
    done();
  });
  EXPECT_TRUE(ran);
  EXPECT_TRUE(s->idle());
}

TEST(SessionStoreTest, QueuedWorkStartsWhenPreviousIsDone) {
  auto s = std::make_shared<Session>("r");
  std::vector<int> order;
  Session::Done first_done;
  s->Submit([&](Session::Done done) {
    order.push_back(1);
    first_done = std::move(done);
  });
  s->Submit([&](Session::Done done) {
    order.push_back(2);
    done();
  });
  s->Submit([&](Session::Done done) {
    order.push_back(3);
    done();
  });
  EXPECT_THAT(order, ElementsAre(1));
  EXPECT_EQ(s->pending(), 2u);
  EXPECT_FALSE(s->idle());
  first_done();
  first_done();  // a second call is ignored
  EXPECT_THAT(order, ElementsAre(1, 2, 3));
  EXPECT_TRUE(s->idle());
}

TEST(SessionStoreTest, LongSynchronousChainsDoNotRecurse) {
  auto s = std::make_shared<Session>("r");
  Session::Done first_done;
  s->Submit([&](Session::Done done) { first_done = std::move(done); });
  constexpr int kItems = 200000;  // would overflow the stack if chained recursively
  int count = 0;
  for (int i = 0; i < kItems; ++i) {
    s->Submit([&count](Session::Done done) {
      ++count;
      done();
    });
  }
  first_done();
  EXPECT_EQ(count, kItems);
  EXPECT_TRUE(s->idle());
}

// Many threads submit to a few robots; items finish synchronously or on pool
// threads in random fashion. Per robot: items never overlap, and each
// submitter's items run in its order.
TEST(SessionStoreTest, PerRobotWorkIsSerializedAndFifoUnderConcurrency) {
  constexpr int kRobots = 3;
  constexpr int kSubmitters = 6;
  constexpr int kItemsPerSubmitter = 300;
  SessionStore store(Options(16));
  Pool pool(4);

  struct Tracker {
    std::atomic<int> running{0};
    std::atomic<bool> overlap{false};
    std::atomic<int> completed{0};
    // Only touched by the robot's running item: serialized by the session.
    std::vector<int> last_seen = std::vector<int>(kSubmitters, -1);
    bool out_of_order = false;
  };
  std::vector<Tracker> trackers(kRobots);

  std::vector<std::thread> submitters;
  for (int t = 0; t < kSubmitters; ++t) {
    submitters.emplace_back([&, t] {
      std::mt19937 rng(1234 + t);
      for (int i = 0; i < kItemsPerSubmitter; ++i) {
        const int robot = static_cast<int>(rng() % kRobots);
        const bool async = rng() % 2 == 0;
        std::shared_ptr<Session> s = store.GetOrCreate("robot-" + std::to_string(robot));
        Tracker& tr = trackers[robot];
        s->Submit([&tr, &pool, t, i, async](Session::Done done) {
          if (tr.running.fetch_add(1) != 0) tr.overlap = true;
          if (tr.last_seen[t] >= i) tr.out_of_order = true;
          tr.last_seen[t] = i;
          auto finish = [&tr, done = std::move(done)] {
            tr.running.fetch_sub(1);
            tr.completed.fetch_add(1);
            done();
          };
          if (async) {
            pool.Run(std::move(finish));
          } else {
            finish();
          }
        });
      }
    });
  }
  for (auto& t : submitters) t.join();
  // Wait for the asynchronous tail: every item completed and every robot idle
  // again.
  auto finished = [&] {
    int total = 0;
    for (auto& tr : trackers) total += tr.completed.load();
    if (total != kSubmitters * kItemsPerSubmitter) return false;
    for (int r = 0; r < kRobots; ++r) {
      std::shared_ptr<Session> s = store.Find("robot-" + std::to_string(r));
      if (s != nullptr && !s->idle()) return false;
    }
    return true;
  };
  for (int spins = 0; spins < 20000 && !finished(); ++spins) {
    absl::SleepFor(absl::Milliseconds(1));
  }
  ASSERT_TRUE(finished());
  for (int r = 0; r < kRobots; ++r) EXPECT_FALSE(trackers[r].overlap.load()) << r;
  // The per-robot state is read here only after every item finished
  // (happens-after via done()).
  for (int r = 0; r < kRobots; ++r) EXPECT_FALSE(trackers[r].out_of_order) << r;
}

// One submitter, asynchronous completions on a pool: global submission order is
// kept.
TEST(SessionStoreTest, SingleSubmitterOrderIsKeptWithAsyncCompletion) {
  auto s = std::make_shared<Session>("r");
  Pool pool(4);
  constexpr int kItems = 2000;
  std::vector<int> order;  // written only by the running item
  std::atomic<int> completed{0};
  for (int i = 0; i < kItems; ++i) {
    s->Submit([&, i](Session::Done done) {
      order.push_back(i);
      pool.Run([&completed, done = std::move(done)] {
        completed.fetch_add(1);
        done();
      });
    });
  }
  // Wait until every item completed and the last done() has returned.
  for (int spins = 0; spins < 20000 && (completed.load() < kItems || !s->idle()); ++spins) {
    absl::SleepFor(absl::Milliseconds(1));
  }
  ASSERT_TRUE(s->idle());
  ASSERT_EQ(order.size(), static_cast<size_t>(kItems));
  for (int i = 0; i < kItems; ++i) ASSERT_EQ(order[i], i);
}

}  // namespace
}  // namespace specprune
