// A fixed-size pool of worker threads running closures in FIFO order.
//
// Locks are std::mutex / std::condition_variable (pthread) rather than
// absl::Mutex: the distribution's libabsl is not built with ThreadSanitizer, so
// absl::Mutex hand-offs would be invisible to TSAN and the engine's
// tsan-labelled tests would report false races on the queued closures.
//
// Thread safety: Schedule() and pending() may be called from any thread,
// including from a running closure. The destructor runs every scheduled
// closure (also those scheduled while it drains), then joins; it must not be
// called from a closure of this pool.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"

namespace specprune {

class ThreadPool {
 public:
  // Starts max(1, num_threads) workers.
  explicit ThreadPool(int num_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  void Schedule(std::function<void()> fn) ABSL_LOCKS_EXCLUDED(mu_);
  // Closures queued and not yet started.
  size_t pending() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  void Loop();

  mutable std::mutex mu_;
  std::condition_variable cv_;  // signalled on Schedule and on stop
  std::deque<std::function<void()>> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace specprune
