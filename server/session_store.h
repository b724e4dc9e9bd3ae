// Per-robot sessions (docs/ARCHITECTURE.md "One Predict, end to end", "Serving"): the episode state
// SpecPrune carries from one step to the next, the last response (for
// idempotent retries) and strict per-robot ordering.
//
// Ownership: sessions are held by std::shared_ptr. The store holds one
// reference; every request (and every queued or running work item) holds its
// own, so an evicted or erased session stays alive until its in-flight work
// finishes; the next request of that robot gets a fresh session.
//
// Locks are std::mutex (pthread) rather than absl::Mutex: the distribution's
// libabsl is not built with ThreadSanitizer, so absl::Mutex hand-offs are
// invisible to TSAN and these tsan-labelled components would report false
// races. The ABSL_GUARDED_BY annotations still document what each lock guards.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "pruning/episode_state.h"
#include "specprune/v1/vla_service.pb.h"

namespace specprune {

// One robot's session. Must be owned by a std::shared_ptr (it hands out
// references to itself to keep itself alive while work is pending).
//
// Thread safety: the episode fields below are NOT locked. They may only be read
// or written by the robot's currently running work item (see Submit), which
// serializes all access to them. Submit, idle() and pending() are thread-safe.
class Session : public std::enable_shared_from_this<Session> {
 public:
  // Called exactly once by a work item when it has finished with the session.
  using Done = std::function<void()>;
  // A unit of work of this robot. It may finish synchronously (call done()
  // before returning) or hand off to other threads and call done() later from
  // any thread.
  using Work = std::function<void(Done done)>;

  explicit Session(std::string robot_id) : robot_id(std::move(robot_id)) {}
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  const std::string robot_id;

  // --- Episode state (owned by the running work item; see class comment) ---
  // Current episode; "" until a request names one.
  std::string episode_id;
  // Whether a step of this episode has completed (CommitStep), and which was
  // the last.
  bool has_step = false;
  uint64_t last_step = 0;
  // Response of last_step, returned as-is to a retry of that step.
  std::shared_ptr<const v1::PredictResponse> last_response;
  // Pruning state carried across steps (global prior, frame history, last
  // actions).
  EpisodeState pruning;
  // Forward passes run in this episode (incremented by the caller per pass).
  uint64_t episode_steps = 0;

  // Runs work items of this robot strictly one after another, in submission
  // order, never two at once. If no item is running, `work` starts immediately
  // on the calling thread; otherwise it is queued and started, on the thread
  // that calls the previous item's done(), once that item is done. Items that
  // finish synchronously are chained iteratively (no unbounded recursion).
  // Every item must call its done() exactly once (later calls are ignored); an
  // item that never calls it stalls this robot. The session stays alive until
  // every submitted item is done.
  void Submit(Work work) ABSL_LOCKS_EXCLUDED(mu_);

  // True when no work item is running or queued.
  bool idle() const ABSL_LOCKS_EXCLUDED(mu_);
  // Work items waiting behind the running one.
  size_t pending() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  // Runs `work` and, while items finish synchronously, the following ones.
  void RunChain(Work work);
  // Marks the current item done: returns the next queued item (now running) or
  // an empty Work (now idle).
  Work Advance() ABSL_LOCKS_EXCLUDED(mu_);

  mutable std::mutex mu_;
  bool running_ ABSL_GUARDED_BY(mu_) = false;
  std::deque<Work> queue_ ABSL_GUARDED_BY(mu_);
};

// Outcome of matching a request's (episode_id, step) against the session.
enum class StepDecision {
  kNew,    // compute this step
  kRetry,  // repeat of the last completed step: answer session.last_response
           // (cached = true)
  kStale,  // step below the last completed one: reject with FAILED_PRECONDITION
};

struct StepCheck {
  StepDecision decision = StepDecision::kNew;
  // PredictResponse.session_restarted: the server had no state for this episode
  // although step > 0 (session just created after eviction/expiry/restart, or a
  // new episode_id at step > 0).
  bool session_restarted = false;
  // A new episode_id replaced the session's episode (its state was cleared).
  bool episode_changed = false;
};

// Matches (episode_id, step) against `session` and prepares it. Call from the
// robot's running work item. A different episode_id starts a new episode:
// pruning state, steps and the cached response are cleared (decision kNew). In
// the same episode: step == last_step with a cached response -> kRetry; step <
// last_step -> kStale; otherwise kNew (state untouched). A retry of a step that
// failed (no cached response) is computed again (kNew).
StepCheck DecideStep(Session& session, std::string_view episode_id, uint64_t step,
                     bool session_created);

// Records a completed step: has_step, last_step and the response a retry
// returns. Call from the robot's running work item after the forward pass.
void CommitStep(Session& session, uint64_t step,
                std::shared_ptr<const v1::PredictResponse> response);

enum class EvictionReason { kCapacity, kExpired };

struct SessionStoreOptions {
  // Most sessions kept. At the bound, GetOrCreate evicts the
  // least-recently-used idle session. Values below 1 are treated as 1.
  size_t max_sessions = 1024;
  // A session unused for this long is dropped by EvictExpired (and
  // opportunistically by GetOrCreate). Zero or negative disables expiry.
  absl::Duration idle_ttl = absl::Minutes(10);
  // Time source (injectable for tests); null = absl::Now.
  std::function<absl::Time()> clock;
  // Called after a session is evicted, outside the store's lock, on the
  // evicting thread (e.g. to count evictions in metrics). Not called for Erase.
  // May be null.
  std::function<void(const Session&, EvictionReason)> on_evict;
};

// Thread-safe map robot_id -> session with an LRU bound and an idle TTL.
//
// Only idle sessions are ever evicted: a session with queued or running work,
// or one that a caller still references (e.g. between GetOrCreate and Submit),
// is never evicted. If every session is busy when a new robot arrives, the
// store exceeds max_sessions temporarily and shrinks back as sessions become
// idle (on later GetOrCreate / EvictExpired calls).
class SessionStore {
 public:
  explicit SessionStore(SessionStoreOptions options = {});
  SessionStore(const SessionStore&) = delete;
  SessionStore& operator=(const SessionStore&) = delete;

  // Returns the robot's session, creating it if absent (*created = true, may be
  // null). Marks it most recently used. Cheaply expires a few idle sessions
  // from the LRU tail first, and at the bound evicts the least-recently-used
  // evictable session.
  std::shared_ptr<Session> GetOrCreate(std::string_view robot_id, bool* created = nullptr)
      ABSL_LOCKS_EXCLUDED(mu_);

  // Returns the robot's session without creating it or refreshing its LRU
  // position; null if absent.
  std::shared_ptr<Session> Find(std::string_view robot_id) const ABSL_LOCKS_EXCLUDED(mu_);

  // Drops the robot's session (Reset). Returns whether one existed. Work in
  // flight finishes on the dropped session object; the robot's next request
  // gets a fresh session.
  bool Erase(std::string_view robot_id) ABSL_LOCKS_EXCLUDED(mu_);

  // Drops every evictable session idle for at least idle_ttl. Returns how many.
  // Called periodically by the server.
  size_t EvictExpired() ABSL_LOCKS_EXCLUDED(mu_);

  size_t size() const ABSL_LOCKS_EXCLUDED(mu_);
  // Sessions evicted so far (capacity + expiry; not Erase).
  uint64_t evictions() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Entry {
    std::shared_ptr<Session> session;
    absl::Time last_used;
  };
  using Lru = std::list<Entry>;  // front = most recently used
  struct Evicted {
    std::shared_ptr<Session> session;
    EvictionReason reason;
  };

  absl::Time Now() const { return options_.clock ? options_.clock() : absl::Now(); }
  // True when only the store references the session and it has no work.
  static bool Evictable(const Entry& entry);
  // Expires evictable entries idle since before `now`, scanning from the LRU
  // tail; examines at most `max_scan` expired entries (busy ones are skipped).
  void ExpireLocked(absl::Time now, size_t max_scan, std::vector<Evicted>& out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RemoveLocked(Lru::iterator it, EvictionReason reason, std::vector<Evicted>& out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Notify(const std::vector<Evicted>& evicted) const;

  const SessionStoreOptions options_;
  mutable std::mutex mu_;
  Lru lru_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, Lru::iterator> index_ ABSL_GUARDED_BY(mu_);
  uint64_t evictions_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace specprune
