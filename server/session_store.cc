#include "server/session_store.h"

#include <mutex>
#include <utility>
#include <vector>

namespace specprune {

// --- Session
// -------------------------------------------------------------------------------------

void Session::Submit(Work work) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (running_) {
      queue_.push_back(std::move(work));
      return;
    }
    running_ = true;
  }
  RunChain(std::move(work));
}

bool Session::idle() const {
  std::lock_guard<std::mutex> lock(mu_);
  return !running_ && queue_.empty();
}

size_t Session::pending() const {
  std::lock_guard<std::mutex> lock(mu_);
  return queue_.size();
}

Session::Work Session::Advance() {
  std::lock_guard<std::mutex> lock(mu_);
  if (queue_.empty()) {
    running_ = false;
    return Work();
  }
  Work next = std::move(queue_.front());
  queue_.pop_front();
  return next;
}

namespace {

// Tracks one work item: whether its done() ran and whether the item's call has
// returned. The one of the two events that happens second continues the chain.
struct Invocation {
  std::mutex mu;
  bool done ABSL_GUARDED_BY(mu) = false;
  bool returned ABSL_GUARDED_BY(mu) = false;
};

}  // namespace

void Session::RunChain(Work work) {
  while (work) {
    auto invocation = std::make_shared<Invocation>();
    std::shared_ptr<Session> self = shared_from_this();
    Done done = [self, invocation] {
      bool continue_here;
      {
        std::lock_guard<std::mutex> lock(invocation->mu);
        if (invocation->done) return;  // extra calls are ignored
        invocation->done = true;
        continue_here = invocation->returned;
      }
      if (continue_here) {
        Work next = self->Advance();
        if (next) self->RunChain(std::move(next));
      }
    };
    work(std::move(done));
    work = nullptr;  // release the item's captures before running the next one
    bool finished_synchronously;
    {
      std::lock_guard<std::mutex> lock(invocation->mu);
      invocation->returned = true;
      finished_synchronously = invocation->done;
    }
    if (!finished_synchronously) return;  // done() will continue the chain
    work = Advance();
  }
}

// --- Episode logic
// -------------------------------------------------------------------------------

StepCheck DecideStep(Session& session, std::string_view episode_id, uint64_t step,
                     bool session_created) {
  StepCheck check;
  if (episode_id != session.episode_id) {
    check.episode_changed = !session.episode_id.empty() || session.has_step;
    session.episode_id = std::string(episode_id);
    session.has_step = false;
    session.last_step = 0;
    session.last_response.reset();
    session.pruning.Clear();
    session.episode_steps = 0;
  } else if (session.has_step) {
    if (step < session.last_step) {
      check.decision = StepDecision::kStale;
    } else if (step == session.last_step && session.last_response != nullptr) {
      check.decision = StepDecision::kRetry;
    }
  }
  check.session_restarted =
      check.decision == StepDecision::kNew && step > 0 && (session_created || !session.has_step);
  return check;
}

void CommitStep(Session& session, uint64_t step,
                std::shared_ptr<const v1::PredictResponse> response) {
  session.has_step = true;
  session.last_step = step;
  session.last_response = std::move(response);
}

// --- SessionStore
// --------------------------------------------------------------------------------

namespace {
// Expired entries examined per GetOrCreate (keeps lookups O(1) amortized).
constexpr size_t kOpportunisticExpiry = 2;
}  // namespace

SessionStore::SessionStore(SessionStoreOptions options)
    : options_([&] {
        SessionStoreOptions o = std::move(options);
        if (o.max_sessions < 1) o.max_sessions = 1;
        return o;
      }()) {}

bool SessionStore::Evictable(const Entry& entry) {
  return entry.session.use_count() == 1 && entry.session->idle();
}

void SessionStore::RemoveLocked(Lru::iterator it, EvictionReason reason,
                                std::vector<Evicted>& out) {
  out.push_back({std::move(it->session), reason});
  index_.erase(out.back().session->robot_id);
  lru_.erase(it);
  ++evictions_;
}

void SessionStore::ExpireLocked(absl::Time now, size_t max_scan, std::vector<Evicted>& out) {
  if (options_.idle_ttl <= absl::ZeroDuration()) return;
  auto it = lru_.end();
  size_t scanned = 0;
  while (it != lru_.begin() && scanned < max_scan) {
    --it;
    if (now - it->last_used < options_.idle_ttl) break;  // the rest is more recent
    ++scanned;
    if (Evictable(*it)) {
      auto victim = it++;
      RemoveLocked(victim, EvictionReason::kExpired, out);
    }
  }
}

void SessionStore::Notify(const std::vector<Evicted>& evicted) const {
  if (!options_.on_evict) return;
  for (const Evicted& e : evicted) options_.on_evict(*e.session, e.reason);
}

std::shared_ptr<Session> SessionStore::GetOrCreate(std::string_view robot_id, bool* created) {
  std::vector<Evicted> evicted;
  std::shared_ptr<Session> session;
  bool was_created = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    const absl::Time now = Now();
    ExpireLocked(now, kOpportunisticExpiry, evicted);
    auto found = index_.find(absl::string_view(robot_id.data(), robot_id.size()));
    if (found != index_.end()) {
      Lru::iterator it = found->second;
      it->last_used = now;
      lru_.splice(lru_.begin(), lru_, it);
      session = it->session;
    } else {
      if (lru_.size() >= options_.max_sessions) {
        for (auto it = lru_.end(); it != lru_.begin();) {
          --it;
          if (Evictable(*it)) {
            RemoveLocked(it, EvictionReason::kCapacity, evicted);
            break;
          }
        }
      }
      session = std::make_shared<Session>(std::string(robot_id));
      lru_.push_front(Entry{session, now});
      index_.emplace(session->robot_id, lru_.begin());
      was_created = true;
    }
  }
  if (created != nullptr) *created = was_created;
  Notify(evicted);
  return session;
}

std::shared_ptr<Session> SessionStore::Find(std::string_view robot_id) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto found = index_.find(absl::string_view(robot_id.data(), robot_id.size()));
  return found == index_.end() ? nullptr : found->second->session;
}

bool SessionStore::Erase(std::string_view robot_id) {
  std::shared_ptr<Session> dropped;  // destroyed outside the lock
  std::lock_guard<std::mutex> lock(mu_);
  auto found = index_.find(absl::string_view(robot_id.data(), robot_id.size()));
  if (found == index_.end()) return false;
  Lru::iterator it = found->second;
  dropped = std::move(it->session);
  index_.erase(found);
  lru_.erase(it);
  return true;
}

size_t SessionStore::EvictExpired() {
  std::vector<Evicted> evicted;
  {
    std::lock_guard<std::mutex> lock(mu_);
    ExpireLocked(Now(), lru_.size(), evicted);
  }
  Notify(evicted);
  return evicted.size();
}

size_t SessionStore::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return lru_.size();
}

uint64_t SessionStore::evictions() const {
  std::lock_guard<std::mutex> lock(mu_);
  return evictions_;
}

}  // namespace specprune
