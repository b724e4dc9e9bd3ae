#include "server/admission.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace specprune {
namespace {

absl::Status CheckRate(const char* rate_name, double rate, const char* burst_name, double burst) {
  if (!std::isfinite(rate) || rate < 0) {
    return absl::InvalidArgumentError(absl::StrCat(rate_name, ": must be >= 0 (0 = off)"));
  }
  if (rate > 0 && !(std::isfinite(burst) && burst >= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat(burst_name, ": must be >= 1 when ", rate_name, " is on"));
  }
  return absl::OkStatus();
}

std::string RobotKey(absl::string_view credential, absl::string_view robot) {
  return absl::StrCat(credential, absl::string_view("\0", 1), robot);
}

}  // namespace

AdmissionController::Ticket& AdmissionController::Ticket::operator=(Ticket&& other) noexcept {
  if (this != &other) {
    Release();
    owner_ = std::exchange(other.owner_, nullptr);
    credential_key_ = std::move(other.credential_key_);
    robot_key_ = std::move(other.robot_key_);
  }
  return *this;
}

void AdmissionController::Ticket::Release() {
  if (owner_ == nullptr) return;
  std::exchange(owner_, nullptr)->ReleaseKeys(credential_key_, robot_key_);
}

absl::StatusOr<std::unique_ptr<AdmissionController>> AdmissionController::Create(
    AdmissionOptions options, Clock now) {
  if (auto s = CheckRate("credential_rate_hz", options.credential_rate_hz, "credential_burst",
                         options.credential_burst);
      !s.ok()) {
    return s;
  }
  if (auto s =
          CheckRate("robot_rate_hz", options.robot_rate_hz, "robot_burst", options.robot_burst);
      !s.ok()) {
    return s;
  }
  if (options.max_tracked_keys < 1) {
    return absl::InvalidArgumentError("max_tracked_keys: must be >= 1");
  }
  if (!now) now = [] { return absl::Now(); };
  return std::unique_ptr<AdmissionController>(
      new AdmissionController(std::move(options), std::move(now)));
}

AdmissionController::AdmissionController(AdmissionOptions options, Clock now)
    : options_(std::move(options)),
      credential_limits_{options_.max_inflight_per_credential, options_.credential_rate_hz,
                         options_.credential_burst},
      robot_limits_{options_.max_inflight_per_robot, options_.robot_rate_hz, options_.robot_burst},
      now_(std::move(now)) {}

void AdmissionController::Refill(Entry& e, const Limits& limits, absl::Time now) {
  if (limits.rate_hz <= 0) return;
  const double elapsed = std::max(0.0, absl::ToDoubleSeconds(now - e.refilled));
  e.tokens = std::min(limits.burst, e.tokens + elapsed * limits.rate_hz);
  e.refilled = now;
}

bool AdmissionController::Idle(const Entry& e, const Limits& limits, absl::Time now) {
  if (e.inflight > 0) return false;
  if (limits.rate_hz <= 0) return true;
  const double elapsed = std::max(0.0, absl::ToDoubleSeconds(now - e.refilled));
  return e.tokens + elapsed * limits.rate_hz >= limits.burst;
}

void AdmissionController::DropIdle(absl::Time now, const std::string* keep) {
  if (now - last_drop_ < absl::Milliseconds(100)) return;
  last_drop_ = now;
  absl::erase_if(credentials_, [&](const auto& kv) {
    return (keep == nullptr || kv.first != *keep) && Idle(kv.second, credential_limits_, now);
  });
  absl::erase_if(robots_, [&](const auto& kv) { return Idle(kv.second, robot_limits_, now); });
}

AdmissionController::Entry* AdmissionController::FindOrCreate(const std::string& key,
                                                              const Limits& limits, absl::Time now,
                                                              const std::string* keep) {
  auto& table = &limits == &credential_limits_ ? credentials_ : robots_;
  if (auto it = table.find(key); it != table.end()) return &it->second;
  if (credentials_.size() + robots_.size() >= options_.max_tracked_keys) {
    DropIdle(now, keep);
    if (credentials_.size() + robots_.size() >= options_.max_tracked_keys) return nullptr;
  }
  Entry& e = table[key];
  e.tokens = limits.burst;
  e.refilled = now;
  return &e;
}

absl::StatusOr<AdmissionController::Ticket> AdmissionController::Admit(absl::string_view credential,
                                                                       absl::string_view robot,
                                                                       AdmissionLimit* limit) {
  AdmissionLimit unused;
  if (limit == nullptr) limit = &unused;
  *limit = AdmissionLimit::kNone;
  Ticket ticket;
  ticket.credential_key_ = std::string(credential);
  if (!robot.empty()) ticket.robot_key_ = RobotKey(credential, robot);
  const absl::Time now = now_();
  std::lock_guard<std::mutex> lock(mu_);
  Entry* cred = FindOrCreate(ticket.credential_key_, credential_limits_, now, nullptr);
  Entry* bot = cred == nullptr || robot.empty()
                   ? nullptr
                   : FindOrCreate(ticket.robot_key_, robot_limits_, now, &ticket.credential_key_);
  if (cred == nullptr || (!robot.empty() && bot == nullptr)) {
    // FindOrCreate may have made `cred` for this call alone: drop it again if it holds nothing.
    if (cred != nullptr && Idle(*cred, credential_limits_, now))
      credentials_.erase(ticket.credential_key_);
    *limit = AdmissionLimit::kTooManyClients;
    return absl::ResourceExhaustedError(absl::StrCat("server tracks max_tracked_keys (",
                                                     options_.max_tracked_keys,
                                                     ") busy clients already; retry later"));
  }
  Refill(*cred, credential_limits_, now);
  if (bot != nullptr) Refill(*bot, robot_limits_, now);
  absl::Status refused;
  if (credential_limits_.max_inflight > 0 && cred->inflight >= credential_limits_.max_inflight) {
    *limit = AdmissionLimit::kInflight;
    refused = absl::ResourceExhaustedError(
        absl::StrCat("credential \"", credential, "\": ", cred->inflight,
                     " calls already in flight (max_inflight_per_credential); wait for an answer"));
  } else if (bot != nullptr && robot_limits_.max_inflight > 0 &&
             bot->inflight >= robot_limits_.max_inflight) {
    *limit = AdmissionLimit::kInflight;
    refused = absl::ResourceExhaustedError(
        absl::StrCat("robot \"", robot, "\": ", bot->inflight,
                     " calls already in flight (max_inflight_per_robot); wait for an answer"));
  } else if (credential_limits_.rate_hz > 0 && cred->tokens < 1) {
    *limit = AdmissionLimit::kRate;
    refused = absl::ResourceExhaustedError(
        absl::StrCat("credential \"", credential, "\": over credential_rate_hz (",
                     credential_limits_.rate_hz, " calls/s); slow down"));
  } else if (bot != nullptr && robot_limits_.rate_hz > 0 && bot->tokens < 1) {
    *limit = AdmissionLimit::kRate;
    refused =
        absl::ResourceExhaustedError(absl::StrCat("robot \"", robot, "\": over robot_rate_hz (",
                                                  robot_limits_.rate_hz, " calls/s); slow down"));
  }
  if (!refused.ok()) {
    // Entries made for this call alone hold nothing: do not keep them.
    if (Idle(*cred, credential_limits_, now)) credentials_.erase(ticket.credential_key_);
    if (bot != nullptr && Idle(*bot, robot_limits_, now)) robots_.erase(ticket.robot_key_);
    return refused;
  }
  cred->inflight += 1;
  if (credential_limits_.rate_hz > 0) cred->tokens -= 1;
  if (bot != nullptr) {
    bot->inflight += 1;
    if (robot_limits_.rate_hz > 0) bot->tokens -= 1;
  }
  ticket.owner_ = this;
  return ticket;
}

void AdmissionController::ReleaseKeys(const std::string& credential_key,
                                      const std::string& robot_key) {
  const absl::Time now = now_();
  std::lock_guard<std::mutex> lock(mu_);
  if (auto it = credentials_.find(credential_key); it != credentials_.end()) {
    if (it->second.inflight > 0) it->second.inflight -= 1;
    if (Idle(it->second, credential_limits_, now)) credentials_.erase(it);
  }
  if (robot_key.empty()) return;
  if (auto it = robots_.find(robot_key); it != robots_.end()) {
    if (it->second.inflight > 0) it->second.inflight -= 1;
    if (Idle(it->second, robot_limits_, now)) robots_.erase(it);
  }
}

size_t AdmissionController::inflight(absl::string_view credential) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = credentials_.find(std::string(credential));
  return it == credentials_.end() ? 0 : it->second.inflight;
}

size_t AdmissionController::inflight(absl::string_view credential, absl::string_view robot) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = robots_.find(RobotKey(credential, robot));
  return it == robots_.end() ? 0 : it->second.inflight;
}

size_t AdmissionController::tracked_keys() const {
  std::lock_guard<std::mutex> lock(mu_);
  return credentials_.size() + robots_.size();
}

}  // namespace specprune
