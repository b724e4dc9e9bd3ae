#include "server/server_config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <string>
#include <vector>

#include "absl/flags/commandlineflag.h"
#include "absl/flags/reflection.h"
#include "server/server_flags.h"

namespace specprune {
namespace {

using ::testing::HasSubstr;

std::string WriteFile(const std::string& name, const std::string& text) {
  const std::string path = ::testing::TempDir() + "/" + name;
  std::ofstream(path) << text;
  return path;
}

// Loads with `json_path` as the config file and `flags` as (flag name, text) pairs, as the server's
// command line gives them (a flag name is its config key, or "model").
absl::StatusOr<ServerOptions> Load(const std::string& json_path,
                                   std::vector<std::pair<std::string, std::string>> flags) {
  ServerCommandLine command_line;
  command_line.config_path = json_path;
  for (auto& [flag, text] : flags) {
    command_line.values.push_back({flag == "model" ? "model_dir" : flag, text, flag});
  }
  return LoadServerOptions(command_line);
}

TEST(ServerConfigTest, DefaultsWithoutFileOrFlags) {
  absl::StatusOr<ServerOptions> o = Load("", {});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_THAT(o->model_dir, ::testing::EndsWith("models/tiny"));
  EXPECT_EQ(o->host, "0.0.0.0");
  EXPECT_EQ(o->port, 50051);
  EXPECT_EQ(o->metrics_port, 9464);
  EXPECT_EQ(o->engine.sessions.max_sessions, 1024u);
  EXPECT_EQ(o->engine.sessions.idle_ttl, absl::Minutes(10));
  EXPECT_EQ(o->engine.batcher.max_batch_size, 8u);
  EXPECT_EQ(o->engine.batcher.max_queue_delay, absl::Milliseconds(2));
  EXPECT_EQ(o->engine.batcher.max_queue_size, 256u);
  EXPECT_EQ(o->engine.preprocess_threads, 2);
  EXPECT_EQ(o->model_threads, 0);
  EXPECT_EQ(o->max_message_bytes, 16 << 20);
  EXPECT_EQ(o->engine.limits.max_instruction_bytes, 1024u);
  EXPECT_EQ(o->engine.limits.max_image_width, 4096);
  EXPECT_EQ(o->engine.limits.max_image_height, 4096);
  EXPECT_EQ(o->device, "cpu");
  EXPECT_EQ(o->dtype, "fp32");
  EXPECT_TRUE(o->pruning.is_object());
  EXPECT_TRUE(o->pruning.empty());
  EXPECT_EQ(o->drain_timeout, absl::Seconds(10));
}

TEST(ServerConfigTest, DefaultModelDirIsTheSourceTreeModel) {
  // CMake sets SPECPRUNE_DEFAULT_MODEL_DIR to an absolute path into the repo.
  EXPECT_EQ(ServerOptions().model_dir.front(), '/');
}

TEST(ServerConfigTest, JsonFileOverridesDefaults) {
  const std::string path = WriteFile("override.json", R"({
    // comments are allowed
    "port": 6000, "max_batch_size": 16, "max_queue_delay_ms": 0.5,
    "device": "cuda:1", "dtype": "bf16", "host": "127.0.0.1",
    "pruning": {"method": "fastv", "keep_ratio": 0.5},
    "session_idle_ttl_seconds": 1.5, "max_message_bytes": 1048576
  })");
  absl::StatusOr<ServerOptions> o = Load(path, {});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->port, 6000);
  EXPECT_EQ(o->engine.batcher.max_batch_size, 16u);
  EXPECT_EQ(o->engine.batcher.max_queue_delay, absl::Microseconds(500));
  EXPECT_EQ(o->device, "cuda:1");
  EXPECT_EQ(o->dtype, "bf16");
  EXPECT_EQ(o->host, "127.0.0.1");
  EXPECT_EQ(o->pruning["method"], "fastv");
  EXPECT_EQ(o->pruning["keep_ratio"], 0.5);
  EXPECT_EQ(o->engine.sessions.idle_ttl, absl::Milliseconds(1500));
  EXPECT_EQ(o->max_message_bytes, 1048576);
  EXPECT_EQ(o->metrics_port, 9464);  // untouched
}

TEST(ServerConfigTest, FlagsOverrideJsonFile) {
  const std::string path = WriteFile("flags.json", R"({"port": 6000, "max_batch_size": 16})");
  absl::StatusOr<ServerOptions> o = Load(path, {{"port", "7000"},
                                                {"max_batch_size", "4"},
                                                {"model", "/m"},
                                                {"metrics_port", "0"},
                                                {"host", "::"},
                                                {"max_queue_delay_ms", "3.5"},
                                                {"device", "cuda"},
                                                {"dtype", "bf16"},
                                                {"max_sessions", "10"}});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->port, 7000);
  EXPECT_EQ(o->engine.batcher.max_batch_size, 4u);
  EXPECT_EQ(o->model_dir, "/m");
  EXPECT_EQ(o->metrics_port, 0);
  EXPECT_EQ(o->host, "::");
  EXPECT_EQ(o->engine.batcher.max_queue_delay, absl::Microseconds(3500));
  EXPECT_EQ(o->device, "cuda");
  EXPECT_EQ(o->dtype, "bf16");
  EXPECT_EQ(o->engine.sessions.max_sessions, 10u);
}

TEST(ServerConfigTest, UnknownKeyIsNamed) {
  const std::string path = WriteFile("unknown.json", R"({"max_batch": 4})");
  absl::StatusOr<ServerOptions> o = Load(path, {});
  EXPECT_EQ(o.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(o.status().message(), HasSubstr("unknown config field \"max_batch\""));
  EXPECT_THAT(o.status().message(), HasSubstr(path));
}

TEST(ServerConfigTest, WrongTypeIsNamed) {
  const std::string path = WriteFile("type.json", R"({"max_batch_size": "eight"})");
  absl::StatusOr<ServerOptions> o = Load(path, {});
  EXPECT_EQ(o.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(o.status().message(),
              HasSubstr("config field \"max_batch_size\": must be an integer in "
                        "[1, 256]"));
  EXPECT_FALSE(Load(WriteFile("t2.json", R"({"max_batch_size": 8.5})"), {}).ok());
  EXPECT_THAT(Load(WriteFile("t3.json", R"({"device": 1})"), {}).status().message(),
              HasSubstr("config field \"device\": must be a string"));
  EXPECT_THAT(Load(WriteFile("t4.json", R"({"pruning": [1]})"), {}).status().message(),
              HasSubstr("config field \"pruning\": must be a JSON object"));
  EXPECT_THAT(Load(WriteFile("t5.json", R"({"max_queue_delay_ms": true})"), {}).status().message(),
              HasSubstr("config field \"max_queue_delay_ms\": must be a number"));
}

TEST(ServerConfigTest, OutOfRangeIsNamed) {
  struct Case {
    const char* json;
    const char* expected;
  };
  const std::vector<Case> cases = {
      {R"({"max_batch_size": 0})", "\"max_batch_size\": must be an integer in [1, 256], got 0"},
      {R"({"max_batch_size": 257})", "\"max_batch_size\""},
      {R"({"port": 70000})", "\"port\": must be an integer in [0, 65535]"},
      {R"({"port": -1})", "\"port\""},
      {R"({"max_queue_delay_ms": -1})", "\"max_queue_delay_ms\": must be a number in [0, 10000]"},
      {R"({"session_idle_ttl_seconds": 0})",
       "\"session_idle_ttl_seconds\": must be a number in (0,"},
      {R"({"max_sessions": 18446744073709551615})", "\"max_sessions\""},
      {R"({"device": "tpu"})", "\"device\": must be \"cpu\", \"cuda\" or \"cuda:N\""},
      {R"({"device": "cuda:x"})", "\"device\""},
      {R"({"dtype": "fp16"})", "\"dtype\": must be \"fp32\", \"bf16\" or \"auto\""},
      {R"({"model_dir": ""})", "\"model_dir\": must not be empty"},
      {R"({"preprocess_threads": 0})", "\"preprocess_threads\""},
  };
  for (const Case& c : cases) {
    absl::StatusOr<ServerOptions> o = Load(WriteFile("range.json", c.json), {});
    EXPECT_EQ(o.status().code(), absl::StatusCode::kInvalidArgument) << c.json;
    EXPECT_THAT(o.status().message(), HasSubstr(c.expected)) << c.json;
  }
}

TEST(ServerConfigTest, MalformedJsonIsReported) {
  const std::string path = WriteFile("bad.json", R"({"port": 1,)");
  absl::StatusOr<ServerOptions> o = Load(path, {});
  EXPECT_EQ(o.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(o.status().message(), HasSubstr("malformed JSON"));
  EXPECT_THAT(o.status().message(), HasSubstr(path));

  o = Load(WriteFile("array.json", "[1, 2]"), {});
  EXPECT_THAT(o.status().message(), HasSubstr("must be a JSON object"));
}

TEST(ServerConfigTest, MissingFileIsNotFound) {
  absl::StatusOr<ServerOptions> o = Load("/nonexistent/specprune.json", {});
  EXPECT_EQ(o.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(o.status().message(), HasSubstr("/nonexistent/specprune.json"));
}

TEST(ServerConfigTest, BadFlagsAreNamed) {
  EXPECT_THAT(Load("", {{"bogus", "1"}}).status().message(), HasSubstr("unknown flag --bogus"));
  EXPECT_THAT(Load("", {{"pruning", "{}"}}).status().message(),
              HasSubstr("unknown flag --pruning"));
  EXPECT_THAT(Load("", {{"port", "abc"}}).status().message(),
              HasSubstr("flag --port: must be an integer in [0, 65535], got \"abc\""));
  EXPECT_THAT(Load("", {{"max_batch_size", "0"}}).status().message(),
              HasSubstr("flag --max_batch_size: must be an integer in [1, 256], got 0"));
  EXPECT_THAT(Load("", {{"max_queue_delay_ms", "nan"}}).status().message(),
              HasSubstr("flag --max_queue_delay_ms: must be a number"));
  EXPECT_THAT(Load("", {{"dtype", "int8"}}).status().message(),
              HasSubstr("flag --dtype: must be \"fp32\", \"bf16\" or \"auto\""));
  EXPECT_THAT(Load("", {{"model", ""}}).status().message(),
              HasSubstr("flag --model: must not be empty"));
  // Text that is not UTF-8 is refused with a message, not an exception (found by
  // fuzz/server_config_fuzzer.cc, fuzz/regressions/server_config/).
  EXPECT_THAT(Load("", {{"port", "\xff"}}).status().message(),
              HasSubstr("flag --port: must be an integer in [0, 65535], got \"\xef\xbf\xbd\""));
}

TEST(ServerConfigTest, MetricsPortMustDifferFromPort) {
  absl::StatusOr<ServerOptions> o = Load("", {{"port", "9000"}, {"metrics_port", "9000"}});
  EXPECT_EQ(o.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(o.status().message(), HasSubstr("\"metrics_port\": must differ from \"port\""));
  EXPECT_TRUE(Load("", {{"port", "0"}, {"metrics_port", "0"}}).ok());
}

TEST(ServerConfigTest, UsageListsEveryKeyWithItsDefault) {
  const std::string usage = ServerUsage("specprune_server");
  for (const std::string& key : ServerFlagKeys()) EXPECT_THAT(usage, HasSubstr("  " + key + " = "));
  EXPECT_THAT(usage, HasSubstr("port = 50051"));
  EXPECT_THAT(usage, HasSubstr("max_queue_delay_ms = 2"));
  EXPECT_THAT(usage, HasSubstr("--config FILE"));
}

// Every scalar config key is a flag of the same name, and a flag given reaches its key.
TEST(ServerFlagsTest, EveryKeyIsAFlagThatReachesIt) {
  for (const std::string& key : ServerFlagKeys()) {
    absl::CommandLineFlag* flag = absl::FindCommandLineFlag(key);
    ASSERT_NE(flag, nullptr) << key;
    std::string error;
    ASSERT_TRUE(flag->ParseFrom("7", &error)) << key << ": " << error;
    absl::StatusOr<ServerCommandLine> command_line = ServerCommandLineFromFlags();
    ASSERT_TRUE(command_line.ok()) << command_line.status();
    bool found = false;
    for (const auto& value : command_line->values) {
      found = found || (value.key == key && value.text == "7" && value.flag == key);
    }
    EXPECT_TRUE(found) << key;
    ASSERT_TRUE(flag->ParseFrom("", &error)) << key;  // back to unset
  }
  EXPECT_TRUE(ServerCommandLineFromFlags()->values.empty());
}

TEST(ServerFlagsTest, ModelIsAnAliasOfModelDirAndNotBoth) {
  absl::CommandLineFlag* model = absl::FindCommandLineFlag("model");
  absl::CommandLineFlag* model_dir = absl::FindCommandLineFlag("model_dir");
  ASSERT_NE(model, nullptr);
  ASSERT_NE(model_dir, nullptr);
  std::string error;
  ASSERT_TRUE(model->ParseFrom("/m", &error));
  absl::StatusOr<ServerCommandLine> command_line = ServerCommandLineFromFlags();
  ASSERT_TRUE(command_line.ok()) << command_line.status();
  absl::StatusOr<ServerOptions> o = LoadServerOptions(*command_line);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->model_dir, "/m");
  ASSERT_TRUE(model_dir->ParseFrom("/n", &error));
  EXPECT_THAT(ServerCommandLineFromFlags().status().message(), HasSubstr("give only one"));
  ASSERT_TRUE(model->ParseFrom("", &error));
  ASSERT_TRUE(model_dir->ParseFrom("", &error));
}

TEST(ServerConfigTest, ToJsonRoundTrips) {
  ServerOptions custom;
  custom.port = 1234;
  custom.engine.batcher.max_queue_delay = absl::Microseconds(7250);
  custom.device = "cuda:0";
  custom.pruning = {{"method", "specprune"}, {"alpha", 0.8}};
  const nlohmann::json j = ServerOptionsToJson(custom);
  EXPECT_EQ(j["port"], 1234);
  EXPECT_EQ(j["max_queue_delay_ms"], 7.25);
  ServerOptions restored;
  ASSERT_TRUE(ApplyServerOptionsJson(j, restored).ok());
  EXPECT_EQ(ServerOptionsToJson(restored), j);
}

}  // namespace
}  // namespace specprune
