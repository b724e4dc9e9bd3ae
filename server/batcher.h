// Dynamic batcher (docs/ARCHITECTURE.md "One Predict, end to end", "Serving"): groups ready
// requests of different robots into batches for the model.
//
// Every item is submitted with a fairness key (the engine uses the caller's credential, see
// server/admission.h). Items wait in one FIFO per key; keys with items take turns (round-robin,
// in the order they queued up, the turn carrying over from batch to batch), so a key with many
// items waiting gets as many slots of a batch as the others only while the others have items:
// a client that floods, even one posing as many robots, cannot push other clients' items behind
// its own. With one key (e.g. every item submitted with "") this is one FIFO.
//
// A worker takes a batch when max_batch_size items are queued or max_queue_delay has passed since
// the oldest queued item (of any key) was enqueued: it removes up to max_batch_size items,
// round-robin over the keys, hands expired ones (is_expired) to on_expired without computing
// them, and calls run_batch with the rest (never with an empty batch). Items of one key keep
// their order; per-robot ordering is the session's job (one item per robot is queued at a time).
//
// Thread safety: Submit, queue_depth and Shutdown may be called from any thread. Callbacks run on
// the worker threads, outside the batcher's lock; with num_workers > 1 they run concurrently.
// Shutdown (and the destructor) must not be called from a callback.
#pragma once

#include <algorithm>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace specprune {

struct BatcherOptions {
  // Largest batch handed to run_batch (>= 1).
  size_t max_batch_size = 8;
  // Longest time the oldest queued item waits for the batch to fill (>= 0; 0 =
  // take what is queued right away).
  absl::Duration max_queue_delay = absl::Milliseconds(2);
  // Most items waiting in the queue (>= 1); Submit beyond it fails with
  // RESOURCE_EXHAUSTED.
  size_t max_queue_size = 256;
  // Worker threads forming and running batches (>= 1). One per model replica /
  // device stream.
  int num_workers = 1;
};

template <typename Item>
class Batcher {
 public:
  // An item with the time it entered the queue (queue wait = dequeue time -
  // enqueued).
  struct Queued {
    Item item;
    absl::Time enqueued;
  };
  // Computes one batch (1..max_batch_size items, in round-robin order of their keys, each key's
  // oldest first). Owns the items.
  using RunBatch = std::function<void(std::vector<Queued>&& batch)>;
  // True when an item must not be computed (deadline passed, client cancelled).
  // Optional.
  using IsExpired = std::function<bool(const Item& item)>;
  // Receives each expired item instead of run_batch (e.g. to finish it with
  // DEADLINE_EXCEEDED or CANCELLED). Optional; without it expired items are
  // destroyed.
  using OnExpired = std::function<void(Queued&& item)>;

  // Validates the options and starts the workers. InvalidArgument names the bad
  // option.
  static absl::StatusOr<std::unique_ptr<Batcher>> Create(BatcherOptions options, RunBatch run_batch,
                                                         IsExpired is_expired = nullptr,
                                                         OnExpired on_expired = nullptr) {
    if (options.max_batch_size < 1) {
      return absl::InvalidArgumentError("batcher max_batch_size: must be >= 1");
    }
    if (options.max_queue_size < 1) {
      return absl::InvalidArgumentError("batcher max_queue_size: must be >= 1");
    }
    if (options.num_workers < 1) {
      return absl::InvalidArgumentError("batcher num_workers: must be >= 1");
    }
    if (options.max_queue_delay < absl::ZeroDuration() ||
        options.max_queue_delay == absl::InfiniteDuration()) {
      return absl::InvalidArgumentError("batcher max_queue_delay: must be finite and >= 0");
    }
    if (!run_batch) return absl::InvalidArgumentError("batcher run_batch: must be set");
    return std::unique_ptr<Batcher>(
        new Batcher(options, std::move(run_batch), std::move(is_expired), std::move(on_expired)));
  }

  Batcher(const Batcher&) = delete;
  Batcher& operator=(const Batcher&) = delete;

  // Shuts down (draining the queue) and joins the workers.
  ~Batcher() { Shutdown(); }

  // Enqueues `item` under fairness key `key`. On success the batcher owns it (moved from); on
  // failure `item` is left untouched so the caller can finish it: RESOURCE_EXHAUSTED when the
  // queue holds max_queue_size items (all keys together), FAILED_PRECONDITION after Shutdown.
  absl::Status Submit(Item&& item, const std::string& key = std::string())
      ABSL_LOCKS_EXCLUDED(mu_) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (shutdown_) {
        return absl::FailedPreconditionError("batcher is shutting down");
      }
      if (queued_ >= options_.max_queue_size) {
        return absl::ResourceExhaustedError(absl::StrCat(
            "request queue full (", options_.max_queue_size, " requests waiting); retry later"));
      }
      std::deque<Queued>& fifo = by_key_[key];
      if (fifo.empty()) turns_.push_back(key);  // the key joins the round
      fifo.push_back(Queued{std::move(item), absl::Now()});
      ++queued_;
    }
    cv_.notify_all();
    return absl::OkStatus();
  }

  // Items waiting in the queue (not counting batches being computed).
  size_t queue_depth() const ABSL_LOCKS_EXCLUDED(mu_) {
    std::lock_guard<std::mutex> lock(mu_);
    return queued_;
  }

  // Stops accepting items, runs (or expires) every queued item without waiting
  // for batches to fill, and joins the workers. Idempotent; blocks until the
  // workers have finished.
  void Shutdown() ABSL_LOCKS_EXCLUDED(mu_, join_mu_) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      shutdown_ = true;
    }
    cv_.notify_all();
    std::lock_guard<std::mutex> join_lock(join_mu_);
    for (std::thread& worker : workers_) {
      if (worker.joinable()) worker.join();
    }
  }

  const BatcherOptions& options() const { return options_; }

 private:
  Batcher(BatcherOptions options, RunBatch run_batch, IsExpired is_expired, OnExpired on_expired)
      : options_(options),
        run_batch_(std::move(run_batch)),
        is_expired_(std::move(is_expired)),
        on_expired_(std::move(on_expired)) {
    std::lock_guard<std::mutex> join_lock(join_mu_);
    workers_.reserve(static_cast<size_t>(options_.num_workers));
    for (int i = 0; i < options_.num_workers; ++i) {
      workers_.emplace_back([this] { WorkerLoop(); });
    }
  }

  // Enqueue time of the oldest queued item (queue not empty).
  absl::Time OldestEnqueued() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    absl::Time oldest = absl::InfiniteFuture();
    for (const std::string& key : turns_) {
      oldest = std::min(oldest, by_key_.find(key)->second.front().enqueued);
    }
    return oldest;
  }

  // Waits for a batch to be ready and removes it from the queue, round-robin over the keys.
  // Returns an empty vector when the batcher is shut down and drained.
  std::vector<Queued> NextBatch() ABSL_LOCKS_EXCLUDED(mu_) {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      cv_.wait(lock, [this] { return queued_ > 0 || shutdown_; });
      if (queued_ == 0) return {};  // shut down and drained
      const absl::Time deadline = OldestEnqueued() + options_.max_queue_delay;
      const absl::Time now = absl::Now();
      if (shutdown_ || queued_ >= options_.max_batch_size || now >= deadline) {
        break;
      }
      // Woken by a new item, shutdown, the deadline or spuriously; another
      // worker may take the items meanwhile. Re-check from the top.
      cv_.wait_for(lock, absl::ToChronoNanoseconds(deadline - now));
    }
    const size_t n = std::min(queued_, options_.max_batch_size);
    std::vector<Queued> batch;
    batch.reserve(n);
    while (batch.size() < n) {
      std::string key = std::move(turns_.front());
      turns_.pop_front();
      auto it = by_key_.find(key);
      batch.push_back(std::move(it->second.front()));
      it->second.pop_front();
      --queued_;
      if (it->second.empty()) {
        by_key_.erase(it);
      } else {
        turns_.push_back(std::move(key));  // next turn after the others
      }
    }
    return batch;
  }

  void WorkerLoop() {
    for (;;) {
      std::vector<Queued> batch = NextBatch();
      if (batch.empty()) return;
      if (is_expired_) {
        std::vector<Queued> live;
        live.reserve(batch.size());
        for (Queued& queued : batch) {
          if (is_expired_(queued.item)) {
            if (on_expired_) on_expired_(std::move(queued));
          } else {
            live.push_back(std::move(queued));
          }
        }
        batch = std::move(live);
      }
      if (!batch.empty()) run_batch_(std::move(batch));
    }
  }

  const BatcherOptions options_;
  const RunBatch run_batch_;
  const IsExpired is_expired_;
  const OnExpired on_expired_;

  // std::mutex rather than absl::Mutex so ThreadSanitizer sees the hand-offs
  // (the distribution's libabsl is not TSAN-instrumented).
  mutable std::mutex mu_;
  std::condition_variable cv_;  // signalled on Submit and Shutdown
  // Queued items per fairness key (no empty FIFOs), the keys with items in turn order, and the
  // number of queued items of all keys.
  std::unordered_map<std::string, std::deque<Queued>> by_key_ ABSL_GUARDED_BY(mu_);
  std::deque<std::string> turns_ ABSL_GUARDED_BY(mu_);
  size_t queued_ ABSL_GUARDED_BY(mu_) = 0;
  bool shutdown_ ABSL_GUARDED_BY(mu_) = false;

  std::mutex join_mu_ ABSL_ACQUIRED_AFTER(mu_);
  std::vector<std::thread> workers_ ABSL_GUARDED_BY(join_mu_);
};

}  // namespace specprune
