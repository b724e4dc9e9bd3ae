#include "server/request_log.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/civil_time.h"
#include "nlohmann/json.hpp"

namespace specprune {
namespace {

using ::testing::HasSubstr;
using ::testing::MatchesRegex;
using ::testing::Not;

absl::Time FixedTime() {
  return absl::FromCivil(absl::CivilSecond(2026, 12, 6, 8, 30, 15), absl::UTCTimeZone()) +
         absl::Milliseconds(42);
}

v1::PredictRequest Request() {
  v1::PredictRequest r;
  r.set_robot_id("arm-7");
  r.set_episode_id("ep-1");
  r.set_step(12);
  r.set_instruction("put the secret red block on the plate");
  r.add_proprio(0.25f);
  r.add_images()->set_encoded(std::string("\xff\xd8\xff\xe0IMAGEBYTES", 14));
  return r;
}

v1::PredictResponse Response() {
  v1::PredictResponse r;
  r.set_robot_id("arm-7");
  r.set_step(12);
  r.set_retained_vision_tokens(37);
  r.set_total_vision_tokens(512);
  r.set_cached(false);
  r.set_session_restarted(true);
  r.mutable_pruning()->set_method(v1::PRUNING_METHOD_SPECPRUNE);
  return r;
}

TEST(RequestIdTest, AcceptsPrintableAsciiUpToTheBound) {
  EXPECT_TRUE(IsValidRequestId("a"));
  EXPECT_TRUE(IsValidRequestId("req-123_abc.DEF:/~!"));
  EXPECT_TRUE(IsValidRequestId(std::string(kMaxRequestIdLength, 'x')));
}

TEST(RequestIdTest, RejectsEmptyTooLongSpacesControlAndNonAscii) {
  EXPECT_FALSE(IsValidRequestId(""));
  EXPECT_FALSE(IsValidRequestId(std::string(kMaxRequestIdLength + 1, 'x')));
  EXPECT_FALSE(IsValidRequestId("two words"));
  EXPECT_FALSE(IsValidRequestId("line\nbreak"));
  EXPECT_FALSE(IsValidRequestId("tab\t"));
  EXPECT_FALSE(IsValidRequestId(std::string("nul\0x", 5)));
  EXPECT_FALSE(IsValidRequestId("caf\xc3\xa9"));
  EXPECT_FALSE(IsValidRequestId("del\x7f"));
}

TEST(RequestIdTest, NewIdsAre128BitHexAndDistinct) {
  std::set<std::string> seen;
  for (int i = 0; i < 1000; ++i) {
    const std::string id = NewRequestId();
    ASSERT_THAT(id, MatchesRegex("[0-9a-f]{32}"));
    EXPECT_TRUE(IsValidRequestId(id));
    seen.insert(id);
  }
  EXPECT_EQ(seen.size(), 1000u);
}

TEST(RequestIdTest, ClientIdIsKeptWhenValidAndReplacedOtherwise) {
  EXPECT_EQ(ResolveRequestId(std::string("client-id-1")), "client-id-1");
  EXPECT_THAT(ResolveRequestId(std::nullopt), MatchesRegex("[0-9a-f]{32}"));
  EXPECT_THAT(ResolveRequestId(std::string("has space")), MatchesRegex("[0-9a-f]{32}"));
  EXPECT_THAT(ResolveRequestId(std::string(500, 'a')), MatchesRegex("[0-9a-f]{32}"));
}

TEST(RequestIdTest, StreamMessagesAreNumberedFromOne) {
  EXPECT_EQ(StreamMessageRequestId("abc", 1), "abc/1");
  EXPECT_EQ(StreamMessageRequestId("abc", 42), "abc/42");
}

TEST(RequestLogFormatTest, ParsesTheThreeNamesAndRejectsOthers) {
  EXPECT_EQ(*ParseRequestLogFormat("off"), RequestLogFormat::kOff);
  EXPECT_EQ(*ParseRequestLogFormat("text"), RequestLogFormat::kText);
  EXPECT_EQ(*ParseRequestLogFormat("json"), RequestLogFormat::kJson);
  absl::StatusOr<RequestLogFormat> bad = ParseRequestLogFormat("JSON");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().message(), "must be \"off\", \"text\" or \"json\", got \"JSON\"");
  EXPECT_EQ(RequestLogFormatName(RequestLogFormat::kJson), "json");
}

TEST(RequestLogFormatTest, JsonLineHasEveryFieldOfASuccessfulPredict) {
  const v1::PredictRequest request = Request();
  const v1::PredictResponse response = Response();
  const RequestLogEntry entry = PredictLogEntry("Predict", "rid-1", &request, absl::OkStatus(),
                                                &response, 0.0125, FixedTime());
  const std::string line = FormatRequestLog(entry, RequestLogFormat::kJson);
  EXPECT_THAT(line, Not(HasSubstr("\n")));
  const nlohmann::json j = nlohmann::json::parse(line);
  EXPECT_EQ(j["ts"], "2026-12-06T08:30:15.042Z");
  EXPECT_EQ(j["event"], "request");
  EXPECT_EQ(j["rpc"], "Predict");
  EXPECT_EQ(j["request_id"], "rid-1");
  EXPECT_EQ(j["robot_id"], "arm-7");
  EXPECT_EQ(j["episode_id"], "ep-1");
  EXPECT_EQ(j["step"], 12);
  EXPECT_EQ(j["code"], "OK");
  EXPECT_DOUBLE_EQ(j["latency_seconds"].get<double>(), 0.0125);
  EXPECT_EQ(j["retained_vision_tokens"], 37);
  EXPECT_EQ(j["total_vision_tokens"], 512);
  EXPECT_EQ(j["method"], "specprune");
  EXPECT_EQ(j["cached"], false);
  EXPECT_EQ(j["session_restarted"], true);
  EXPECT_FALSE(j.contains("error"));
}

TEST(RequestLogFormatTest, NeverLogsInstructionProprioOrImageBytes) {
  const v1::PredictRequest request = Request();
  const v1::PredictResponse response = Response();
  const RequestLogEntry entry =
      PredictLogEntry("Predict", "rid-1", &request, absl::OkStatus(), &response, 0.01, FixedTime());
  for (RequestLogFormat format : {RequestLogFormat::kJson, RequestLogFormat::kText}) {
    const std::string line = FormatRequestLog(entry, format);
    EXPECT_THAT(line, Not(HasSubstr("secret")));
    EXPECT_THAT(line, Not(HasSubstr("IMAGEBYTES")));
    EXPECT_THAT(line, Not(HasSubstr("0.25")));
  }
}

TEST(RequestLogFormatTest, FailedCallHasCodeAndErrorButNoTelemetry) {
  const v1::PredictRequest request = Request();
  const RequestLogEntry entry = PredictLogEntry(
      "StreamPredict", "s/3", &request,
      absl::InvalidArgumentError("proprio: expected 8 values, got 1"), nullptr, 0.001, FixedTime());
  const nlohmann::json j = nlohmann::json::parse(FormatRequestLog(entry, RequestLogFormat::kJson));
  EXPECT_EQ(j["code"], "INVALID_ARGUMENT");
  EXPECT_EQ(j["error"], "proprio: expected 8 values, got 1");
  EXPECT_EQ(j["request_id"], "s/3");
  EXPECT_EQ(j["step"], 12);
  EXPECT_FALSE(j.contains("retained_vision_tokens"));
  EXPECT_FALSE(j.contains("method"));
  EXPECT_FALSE(j.contains("cached"));
}

TEST(RequestLogFormatTest, UnparsedRequestHasNoRobotOrStep) {
  const RequestLogEntry entry =
      PredictLogEntry("Predict", "rid", nullptr, absl::UnauthenticatedError("unknown token"),
                      nullptr, 0, FixedTime());
  const nlohmann::json j = nlohmann::json::parse(FormatRequestLog(entry, RequestLogFormat::kJson));
  EXPECT_FALSE(j.contains("robot_id"));
  EXPECT_FALSE(j.contains("step"));
  EXPECT_EQ(j["code"], "UNAUTHENTICATED");
}

TEST(RequestLogFormatTest, HostileStringsStayOnOneLineAndAreBounded) {
  RequestLogEntry entry;
  entry.time = FixedTime();
  entry.rpc = "Predict";
  entry.request_id = "r";
  entry.robot_id = std::string("evil\n{\"code\":\"OK\"}\xff\xfe", 20) + std::string(1000, 'x');
  entry.code = 3;
  entry.error = "bad \"quote\" and = sign";
  const std::string json_line = FormatRequestLog(entry, RequestLogFormat::kJson);
  EXPECT_THAT(json_line, Not(HasSubstr("\n")));
  const nlohmann::json j = nlohmann::json::parse(json_line);  // valid JSON despite invalid UTF-8
  EXPECT_EQ(j["code"], "INVALID_ARGUMENT");
  EXPECT_LE(j["robot_id"].get<std::string>().size(), kMaxLoggedStringBytes + 16);
  const std::string text_line = FormatRequestLog(entry, RequestLogFormat::kText);
  EXPECT_THAT(text_line, Not(HasSubstr("\n")));
  EXPECT_THAT(text_line, HasSubstr("error=\"bad \\\"quote\\\" and = sign\""));
  EXPECT_LT(text_line.size(), 1500u);
}

TEST(RequestLogFormatTest, TextLineIsKeyValue) {
  const v1::PredictRequest request = Request();
  const v1::PredictResponse response = Response();
  const RequestLogEntry entry =
      PredictLogEntry("Predict", "rid-1", &request, absl::OkStatus(), &response, 0.5, FixedTime());
  EXPECT_EQ(FormatRequestLog(entry, RequestLogFormat::kText),
            "2026-12-06T08:30:15.042Z request rpc=Predict request_id=rid-1 robot_id=arm-7 "
            "episode_id=ep-1 step=12 code=OK latency_seconds=0.5 retained_vision_tokens=37 "
            "total_vision_tokens=512 method=specprune cached=false session_restarted=true");
  EXPECT_EQ(FormatRequestLog(entry, RequestLogFormat::kOff), "");
}

TEST(RequestLoggerTest, WritesOneLinePerEntryAndNothingWhenOff) {
  std::vector<std::string> lines;
  RequestLogger logger(RequestLogFormat::kJson,
                       [&](std::string_view line) { lines.emplace_back(line); });
  RequestLogEntry entry;
  entry.time = FixedTime();
  entry.rpc = "Reset";
  entry.request_id = "x";
  logger.Log(entry);
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ(lines[0].back(), '\n');
  EXPECT_EQ(nlohmann::json::parse(lines[0])["rpc"], "Reset");

  int calls = 0;
  RequestLogger off(RequestLogFormat::kOff, [&](std::string_view) { ++calls; });
  EXPECT_FALSE(off.enabled());
  off.Log(entry);
  EXPECT_EQ(calls, 0);
}

TEST(RequestLoggerTest, ConcurrentLinesDoNotInterleave) {
  std::string out;  // the sink is called under the logger's lock
  RequestLogger logger(RequestLogFormat::kJson, [&](std::string_view line) { out.append(line); });
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&logger, t] {
      for (int i = 0; i < 200; ++i) {
        RequestLogEntry entry;
        entry.rpc = "Predict";
        entry.request_id = std::to_string(t) + "-" + std::to_string(i);
        logger.Log(entry);
      }
    });
  }
  for (auto& th : threads) th.join();
  size_t lines = 0;
  size_t begin = 0;
  while (begin < out.size()) {
    const size_t end = out.find('\n', begin);
    ASSERT_NE(end, std::string::npos);
    EXPECT_NO_THROW(nlohmann::json::parse(out.substr(begin, end - begin)));
    ++lines;
    begin = end + 1;
  }
  EXPECT_EQ(lines, 800u);
}

}  // namespace
}  // namespace specprune
