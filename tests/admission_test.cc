#include "server/admission.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <memory>
#include <optional>
#include <vector>

namespace specprune {
namespace {

using ::testing::HasSubstr;

// A clock the test moves by hand.
struct FakeClock {
  absl::Time now = absl::FromUnixSeconds(1000);
  AdmissionController::Clock fn() {
    return [this] { return now; };
  }
};

std::unique_ptr<AdmissionController> Make(AdmissionOptions options, FakeClock& clock) {
  auto c = AdmissionController::Create(options, clock.fn());
  EXPECT_TRUE(c.ok()) << c.status();
  return *std::move(c);
}

AdmissionOptions NoLimits() {
  AdmissionOptions o;
  o.max_inflight_per_credential = 0;
  o.max_inflight_per_robot = 0;
  o.credential_rate_hz = 0;
  o.robot_rate_hz = 0;
  return o;
}

TEST(AdmissionTest, CredentialInflightBoundRefusesUntilATicketIsReleased) {
  FakeClock clock;
  AdmissionOptions o = NoLimits();
  o.max_inflight_per_credential = 2;
  auto admission = Make(o, clock);
  auto a = admission->Admit("cell-3", "");
  auto b = admission->Admit("cell-3", "");
  ASSERT_TRUE(a.ok());
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(admission->inflight("cell-3"), 2u);
  AdmissionLimit limit;
  auto c = admission->Admit("cell-3", "", &limit);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(c.status().message(), HasSubstr("max_inflight_per_credential"));
  EXPECT_THAT(c.status().message(), HasSubstr("cell-3"));
  EXPECT_EQ(limit, AdmissionLimit::kInflight);
  // Another credential is not affected.
  EXPECT_TRUE(admission->Admit("cell-4", "").ok());
  a->Release();
  EXPECT_EQ(admission->inflight("cell-3"), 1u);
  EXPECT_TRUE(admission->Admit("cell-3", "", &limit).ok());
  EXPECT_EQ(limit, AdmissionLimit::kNone);
}

TEST(AdmissionTest, TicketDestructionReleasesItsSlotsOnce) {
  FakeClock clock;
  AdmissionOptions o = NoLimits();
  o.max_inflight_per_credential = 1;
  o.max_inflight_per_robot = 1;
  auto admission = Make(o, clock);
  {
    auto t = admission->Admit("c", "arm-1");
    ASSERT_TRUE(t.ok());
    AdmissionController::Ticket moved = *std::move(t);
    EXPECT_EQ(admission->inflight("c", "arm-1"), 1u);
    moved.Release();
    moved.Release();  // idempotent
    EXPECT_EQ(admission->inflight("c"), 0u);
  }
  EXPECT_EQ(admission->inflight("c"), 0u);
  EXPECT_EQ(admission->tracked_keys(), 0u) << "idle entries without a rate limit are dropped";
}

TEST(AdmissionTest, RobotInflightBoundIsPerRobotAndPerCredential) {
  FakeClock clock;
  AdmissionOptions o = NoLimits();
  o.max_inflight_per_robot = 1;
  auto admission = Make(o, clock);
  auto first = admission->Admit("c", "arm-1");
  ASSERT_TRUE(first.ok());
  AdmissionLimit limit;
  auto second = admission->Admit("c", "arm-1", &limit);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(second.status().message(), HasSubstr("max_inflight_per_robot"));
  EXPECT_THAT(second.status().message(), HasSubstr("arm-1"));
  EXPECT_EQ(limit, AdmissionLimit::kInflight);
  EXPECT_TRUE(admission->Admit("c", "arm-2").ok()) << "another robot of the same credential";
  EXPECT_TRUE(admission->Admit("d", "arm-1").ok())
      << "another credential naming the same robot does not use up its budget";
  EXPECT_TRUE(admission->Admit("c", "").ok()) << "no header: not bounded per robot here";
  // A refused call charged nothing.
  EXPECT_EQ(admission->inflight("c"), 1u);
}

TEST(AdmissionTest, CredentialRateLimitAllowsTheBurstThenTheRate) {
  FakeClock clock;
  AdmissionOptions o = NoLimits();
  o.credential_rate_hz = 10;
  o.credential_burst = 3;
  auto admission = Make(o, clock);
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(admission->Admit("c", "").ok()) << i;
  AdmissionLimit limit;
  auto over = admission->Admit("c", "", &limit);
  EXPECT_EQ(over.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(over.status().message(), HasSubstr("credential_rate_hz"));
  EXPECT_EQ(limit, AdmissionLimit::kRate);
  clock.now += absl::Milliseconds(99);
  EXPECT_FALSE(admission->Admit("c", "").ok()) << "0.99 tokens after 99 ms at 10/s";
  clock.now += absl::Milliseconds(1);
  EXPECT_TRUE(admission->Admit("c", "").ok());
  EXPECT_FALSE(admission->Admit("c", "").ok());
  // Refused calls do not consume tokens: after a second the bucket is full again (3, not more).
  clock.now += absl::Seconds(1);
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(admission->Admit("c", "").ok()) << i;
  EXPECT_FALSE(admission->Admit("c", "").ok());
  EXPECT_TRUE(admission->Admit("other", "").ok());
}

TEST(AdmissionTest, RobotRateLimitKeepsStateAcrossReleasedTickets) {
  FakeClock clock;
  AdmissionOptions o = NoLimits();
  o.robot_rate_hz = 1;
  o.robot_burst = 1;
  auto admission = Make(o, clock);
  { EXPECT_TRUE(admission->Admit("c", "arm-1").ok()); }  // released at once
  AdmissionLimit limit;
  auto again = admission->Admit("c", "arm-1", &limit);
  EXPECT_EQ(again.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(again.status().message(), HasSubstr("robot_rate_hz"));
  EXPECT_EQ(limit, AdmissionLimit::kRate);
  EXPECT_TRUE(admission->Admit("c", "arm-2").ok());
  clock.now += absl::Seconds(1);
  EXPECT_TRUE(admission->Admit("c", "arm-1").ok());
}

TEST(AdmissionTest, RefusedCallChargesNeitherKey) {
  FakeClock clock;
  AdmissionOptions o = NoLimits();
  o.credential_rate_hz = 1;
  o.credential_burst = 2;
  o.max_inflight_per_robot = 1;
  auto admission = Make(o, clock);
  auto held = admission->Admit("c", "arm-1");
  ASSERT_TRUE(held.ok());
  // Refused by the robot bound: the credential's second token stays.
  EXPECT_FALSE(admission->Admit("c", "arm-1").ok());
  EXPECT_TRUE(admission->Admit("c", "arm-2").ok());
  EXPECT_FALSE(admission->Admit("c", "arm-3").ok()) << "two tokens used, none refilled";
  EXPECT_EQ(admission->inflight("c", "arm-3"), 0u);
}

TEST(AdmissionTest, FullKeyTableDropsIdleKeysThenRefusesNewOnes) {
  FakeClock clock;
  AdmissionOptions o = NoLimits();
  o.credential_rate_hz = 1;
  o.credential_burst = 1;
  o.max_tracked_keys = 2;
  auto admission = Make(o, clock);
  auto a = admission->Admit("a", "");
  auto b = admission->Admit("b", "");
  ASSERT_TRUE(a.ok());
  ASSERT_TRUE(b.ok());
  AdmissionLimit limit;
  auto c = admission->Admit("c", "", &limit);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(c.status().message(), HasSubstr("max_tracked_keys"));
  EXPECT_EQ(limit, AdmissionLimit::kTooManyClients);
  // Once a's call is answered and its bucket refilled, its entry is idle and makes room.
  a->Release();
  clock.now += absl::Seconds(1);
  EXPECT_TRUE(admission->Admit("c", "").ok());
  EXPECT_EQ(admission->tracked_keys(), 2u);
}

TEST(AdmissionTest, InvalidOptionsNameTheField) {
  FakeClock clock;
  AdmissionOptions o;
  o.credential_rate_hz = -1;
  EXPECT_THAT(AdmissionController::Create(o).status().message(), HasSubstr("credential_rate_hz"));
  o = AdmissionOptions();
  o.robot_rate_hz = 5;
  o.robot_burst = 0.5;
  EXPECT_THAT(AdmissionController::Create(o).status().message(), HasSubstr("robot_burst"));
  o = AdmissionOptions();
  o.max_tracked_keys = 0;
  EXPECT_THAT(AdmissionController::Create(o).status().message(), HasSubstr("max_tracked_keys"));
  EXPECT_TRUE(AdmissionController::Create(AdmissionOptions()).ok());
}

}  // namespace
}  // namespace specprune
