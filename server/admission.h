// Admission control (issue #25 "fair share"; docs/SECURITY.md, docs/operations.md "Limits"): a
// cheap check that runs on the gRPC thread BEFORE a call's bytes are parsed, so that a client
// sending as fast as it can is turned away for the price of a hash lookup instead of a parse,
// validation and a session lookup, and cannot take more than its share of the server.
//
// Two keys per call:
//   - the credential: the authentication grant's name (server/auth.h) or, with authentication
//     off, the peer address ("ipv4:10.0.0.7:53422", i.e. one key per connection);
//   - the robot: the "x-robot-id" metadata when the call sends it, scoped by the credential (one
//     credential cannot use up another's budget by naming its robots). Calls without the header
//     are bounded per robot later, by the engine's max_pending_per_robot after the parse.
// Per key, two limits (each 0 = off):
//   - calls in flight (admitted, not answered yet): a Ticket holds one until it is destroyed;
//   - a token bucket: `rate_hz` calls per second sustained, `burst` at once.
// A call over a limit is RESOURCE_EXHAUSTED with a message naming the limit (the config key) and
// the key; nothing is charged for it.
//
// Memory: one entry per key with calls in flight or a bucket that is not full yet; idle entries
// are dropped. More than max_tracked_keys busy entries refuse new keys (RESOURCE_EXHAUSTED).
//
// Thread safety: Admit and every const method may be called concurrently; a Ticket may be
// destroyed on any thread, and must not outlive its controller.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace specprune {

// Defaults are the server's (config keys of the same names, server/server_config.h).
struct AdmissionOptions {
  // Calls of one credential in flight at once (0 = unbounded). With authentication off a
  // credential is one connection, so a gateway that multiplexes many robots over one upstream
  // connection needs this above its robots per connection.
  size_t max_inflight_per_credential = 64;
  // Calls in flight for one robot ("x-robot-id") of one credential (0 = unbounded). A controller
  // has one step in flight, two while a retry overlaps the call it abandoned.
  size_t max_inflight_per_robot = 4;
  // Sustained calls per second of one credential (0 = no rate limit) and the bucket's size (>= 1
  // when the rate is on): a credential may send `burst` calls at once, then `rate_hz` per second.
  // The burst is small on purpose: admitted at once, a burst of steps of many robot ids lands in
  // the batcher together and every robot step queued behind it waits for all of them
  // (docs/BENCHMARKS.md "Fair share with admission control": burst 50 cost the other robots 23x
  // in p99, burst 5 nothing measurable).
  double credential_rate_hz = 0;
  double credential_burst = 5;
  // The same per robot ("x-robot-id") of one credential. A robot calls Predict once per action
  // chunk; 0 = no rate limit.
  double robot_rate_hz = 0;
  double robot_burst = 10;
  // Most keys (credentials + robots) with state kept at once; idle ones are dropped first.
  size_t max_tracked_keys = 100000;
  // A refused unary Predict is answered this long after the refusal (0 = at once), so a client
  // that re-sends at once is paced by the server: with k calls in flight it gets at most
  // k / refusal_delay refusals per second instead of as many as the server can answer (each still
  // costs the server an HTTP/2 stream and the message bytes). Applied by the service
  // (server/service.cc); StreamPredict messages are answered at once (one at a time per stream).
  absl::Duration refusal_delay = absl::Milliseconds(100);
  // Most refusals waiting for their delay at once (process-wide); beyond, answered at once.
  size_t max_delayed_refusals = 4096;
};

// Which limit refused a call (for metrics: specprune_rejected_requests_total{reason}).
enum class AdmissionLimit { kNone = 0, kInflight, kRate, kTooManyClients };

class AdmissionController {
 public:
  using Clock = std::function<absl::Time()>;

  // One admitted call; releases its in-flight slots when destroyed. Move-only.
  class Ticket {
   public:
    Ticket() = default;
    Ticket(Ticket&& other) noexcept { *this = std::move(other); }
    Ticket& operator=(Ticket&& other) noexcept;
    Ticket(const Ticket&) = delete;
    Ticket& operator=(const Ticket&) = delete;
    ~Ticket() { Release(); }
    // Releases now (idempotent).
    void Release();

   private:
    friend class AdmissionController;
    AdmissionController* owner_ = nullptr;
    std::string credential_key_;
    std::string robot_key_;  // "" = no robot header
  };

  // InvalidArgument naming the option when one is out of range (negative or non-finite rates,
  // a burst below 1 with its rate on, max_tracked_keys 0). `now` defaults to absl::Now (tests
  // inject a fake clock).
  static absl::StatusOr<std::unique_ptr<AdmissionController>> Create(AdmissionOptions options,
                                                                     Clock now = nullptr);

  // Admits one call of `credential` (non-empty) for `robot` ("" when the call names none), or
  // RESOURCE_EXHAUSTED naming the limit; `limit`, when given, says which (kNone when admitted).
  absl::StatusOr<Ticket> Admit(absl::string_view credential, absl::string_view robot,
                               AdmissionLimit* limit = nullptr) ABSL_LOCKS_EXCLUDED(mu_);

  // Calls in flight of `credential` / of its `robot` (tests, debugging).
  size_t inflight(absl::string_view credential) const ABSL_LOCKS_EXCLUDED(mu_);
  size_t inflight(absl::string_view credential, absl::string_view robot) const
      ABSL_LOCKS_EXCLUDED(mu_);
  // Keys with state kept (credentials + robots).
  size_t tracked_keys() const ABSL_LOCKS_EXCLUDED(mu_);

  const AdmissionOptions& options() const { return options_; }

 private:
  struct Entry {
    size_t inflight = 0;
    double tokens = 0;  // bucket level at `refilled`
    absl::Time refilled;
  };
  struct Limits {
    size_t max_inflight;
    double rate_hz;
    double burst;
  };

  AdmissionController(AdmissionOptions options, Clock now);
  // The entry of `key` (created with a full bucket), or null when the tables are full. Dropping
  // idle entries to make room spares the credential `keep` (may be null).
  Entry* FindOrCreate(const std::string& key, const Limits& limits, absl::Time now,
                      const std::string* keep) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Refills the entry's bucket up to `now`.
  static void Refill(Entry& e, const Limits& limits, absl::Time now);
  // Whether the entry holds nothing a fresh one would not (nothing in flight, bucket full).
  static bool Idle(const Entry& e, const Limits& limits, absl::Time now);
  // Drops idle entries but `keep`'s, at most every 100 ms (a full table of busy keys must not
  // make every new key scan it).
  void DropIdle(absl::Time now, const std::string* keep) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ReleaseKeys(const std::string& credential_key, const std::string& robot_key)
      ABSL_LOCKS_EXCLUDED(mu_);

  const AdmissionOptions options_;
  const Limits credential_limits_;
  const Limits robot_limits_;
  const Clock now_;
  // std::mutex rather than absl::Mutex so ThreadSanitizer sees the hand-offs.
  mutable std::mutex mu_;
  absl::flat_hash_map<std::string, Entry> credentials_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, Entry> robots_ ABSL_GUARDED_BY(mu_);  // credential \0 robot
  absl::Time last_drop_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
};

}  // namespace specprune
