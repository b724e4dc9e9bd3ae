// Dynamic batcher (docs/ARCHITECTURE.md "One Predict, end to end", "Serving"): groups ready
// requests of different robots into batches for the model.
//
// Items wait in one bounded FIFO queue. A worker takes the oldest item and
// waits until either max_batch_size items are queued or max_queue_delay has
// passed since the oldest item was enqueued, then removes up to max_batch_size
// items from the front, hands expired ones (is_expired) to on_expired without
// computing them, and calls run_batch with the rest (never with an empty
// batch). The batcher does not reorder items; per-robot ordering is the
// session's job (one item per robot is queued at a time).
//
// Thread safety: Submit, queue_depth and Shutdown may be called from any
// thread. Callbacks run on the worker threads, outside the batcher's lock; with
// num_workers > 1 they run concurrently. Shutdown (and the destructor) must not
// be called from a callback.
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
  // Computes one batch (1..max_batch_size items, oldest first). Owns the items.
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

  // Enqueues `item`. On success the batcher owns it (moved from); on failure
  // `item` is left untouched so the caller can finish it: RESOURCE_EXHAUSTED
  // when the queue holds max_queue_size items, FAILED_PRECONDITION after
  // Shutdown.
  absl::Status Submit(Item&& item) ABSL_LOCKS_EXCLUDED(mu_) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (shutdown_) {
        return absl::FailedPreconditionError("batcher is shutting down");
      }
      if (queue_.size() >= options_.max_queue_size) {
        return absl::ResourceExhaustedError(absl::StrCat(
            "request queue full (", options_.max_queue_size, " requests waiting); retry later"));
      }
      queue_.push_back(Queued{std::move(item), absl::Now()});
    }
    cv_.notify_all();
    return absl::OkStatus();
  }

  // Items waiting in the queue (not counting batches being computed).
  size_t queue_depth() const ABSL_LOCKS_EXCLUDED(mu_) {
    std::lock_guard<std::mutex> lock(mu_);
    return queue_.size();
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

  // Waits for a batch to be ready and removes it from the queue. Returns an
  // empty vector when the batcher is shut down and drained.
  std::vector<Queued> NextBatch() ABSL_LOCKS_EXCLUDED(mu_) {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      cv_.wait(lock, [this] { return !queue_.empty() || shutdown_; });
      if (queue_.empty()) return {};  // shut down and drained
      const absl::Time deadline = queue_.front().enqueued + options_.max_queue_delay;
      const absl::Time now = absl::Now();
      if (shutdown_ || queue_.size() >= options_.max_batch_size || now >= deadline) {
        break;
      }
      // Woken by a new item, shutdown, the deadline or spuriously; another
      // worker may take the items meanwhile. Re-check from the top.
      cv_.wait_for(lock, absl::ToChronoNanoseconds(deadline - now));
    }
    const size_t n = std::min(queue_.size(), options_.max_batch_size);
    std::vector<Queued> batch;
    batch.reserve(n);
    for (size_t i = 0; i < n; ++i) {
      batch.push_back(std::move(queue_.front()));
      queue_.pop_front();
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
  std::deque<Queued> queue_ ABSL_GUARDED_BY(mu_);
  bool shutdown_ ABSL_GUARDED_BY(mu_) = false;

  std::mutex join_mu_ ABSL_ACQUIRED_AFTER(mu_);
  std::vector<std::thread> workers_ ABSL_GUARDED_BY(join_mu_);
};

}  // namespace specprune
