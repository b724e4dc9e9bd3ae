// End to end: a real SpecPruneServer on an ephemeral loopback port, driven by the C++ SDK and a
// raw gRPC stub; /metrics scraped over HTTP.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "client/cpp/client.h"
#include "image/image_codec.h"
#include "pruning/pruning_config.h"
#include "server/server.h"

// Options structs are filled by designated initializers that name only the fields a test
// changes; the rest keep their in-class defaults on purpose.
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

namespace specprune {
namespace {

int FreePort() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

std::string HttpGet(int port, const std::string& path) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(port);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return "";
  }
  const std::string req = absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: localhost\r\n\r\n");
  ::send(fd, req.data(), req.size(), 0);
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = ::recv(fd, buf, sizeof(buf), 0)) > 0) out.append(buf, n);
  ::close(fd);
  return out;
}

RgbImage Frame(int size, int seed, int step) {
  RgbImage img;
  img.height = img.width = size;
  img.pixels.resize(size * size * 3);
  for (int y = 0; y < size; ++y)
    for (int x = 0; x < size; ++x)
      for (int c = 0; c < 3; ++c)
        img.pixels[(y * size + x) * 3 + c] =
            static_cast<uint8_t>((x * (c + 1) * 7 + y * 3 + seed * 40 + step * 5 * c) % 256);
  return img;
}

class ServerIntegrationTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ServerOptions options;  // embedded default model
    options.host = "127.0.0.1";
    options.port = 0;
    options.metrics_port = FreePort();
    options.max_message_bytes = 2 << 20;
    options.engine.batcher.max_batch_size = 4;
    options.replica_id = "replica-under-test";
    auto server = SpecPruneServer::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = server->release();
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }
  void SetUp() override {
    ASSERT_NE(server_, nullptr);
    target_ = absl::StrCat("127.0.0.1:", server_->port());
    auto client = Client::Create({.target = target_, .deadline = absl::Seconds(20)});
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = std::move(*client);
    auto info = client_->ModelInfo();
    ASSERT_TRUE(info.ok()) << info.status();
    info_ = *info;
    channel_ = grpc::CreateChannel(target_, grpc::InsecureChannelCredentials());
    stub_ = v1::VlaService::NewStub(channel_);
  }

  Observation Obs(int seed, int step) {
    Observation obs;
    for (const auto& cam : info_.cameras())
      obs.images.push_back({cam, Frame(info_.image_height(), seed, step), ""});
    obs.instruction = "put the red cube on the blue plate";
    obs.proprio.assign(info_.proprio_dim(), 0.1f);
    return obs;
  }

  // A valid raw request built by hand, for corrupting one field at a time.
  v1::PredictRequest ValidRequest(const std::string& robot, uint64_t step) {
    v1::PredictRequest req;
    req.set_robot_id(robot);
    req.set_episode_id("ep");
    req.set_step(step);
    for (const auto& cam : info_.cameras()) {
      auto* img = req.add_images();
      img->set_camera(cam);
      RgbImage f = Frame(info_.image_height(), 1, static_cast<int>(step));
      auto* raw = img->mutable_raw();
      raw->set_height(f.height);
      raw->set_width(f.width);
      raw->set_channels(3);
      raw->set_pixels(std::string(f.pixels.begin(), f.pixels.end()));
    }
    req.set_instruction("pick up the green block");
    for (uint32_t i = 0; i < info_.proprio_dim(); ++i) req.add_proprio(0.0f);
    return req;
  }

  grpc::Status Call(const v1::PredictRequest& req, v1::PredictResponse* resp) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
    return stub_->Predict(&ctx, req, resp);
  }

  void ExpectServingStill() {
    v1::PredictResponse resp;
    auto s = Call(ValidRequest("healthy-robot", next_healthy_step_++), &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    EXPECT_EQ(resp.actions_size(), static_cast<int>(info_.chunk_size() * info_.action_dim()));
  }

  static SpecPruneServer* server_;
  std::string target_;
  std::unique_ptr<Client> client_;
  v1::ModelInfo info_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::VlaService::Stub> stub_;
  static uint64_t next_healthy_step_;
  grpc::Status s_;
};
SpecPruneServer* ServerIntegrationTest::server_ = nullptr;
uint64_t ServerIntegrationTest::next_healthy_step_ = 0;

TEST_F(ServerIntegrationTest, PredictReturnsFiniteChunkAndPrunesFromTheSecondStep) {
  PredictOptions opts{.episode_id = "e1"};
  auto first = client_->Predict("robot-a", Obs(1, 0), opts);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->chunk_size, static_cast<int>(info_.chunk_size()));
  EXPECT_EQ(first->action_dim, static_cast<int>(info_.action_dim()));
  for (float a : first->actions) EXPECT_TRUE(std::isfinite(a));
  EXPECT_TRUE(first->raw.pruning().used_fallback());
  EXPECT_EQ(first->raw.retained_vision_tokens(), info_.vision_tokens_per_forward());
  auto second = client_->Predict("robot-a", Obs(1, 1), opts);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_LT(second->raw.retained_vision_tokens(), info_.vision_tokens_per_forward());
  EXPECT_LT(second->raw.pruning().flops_ratio(), 1.0);
  EXPECT_EQ(second->raw.episode_steps(), 2u);
  EXPECT_NE(second->raw.controller_mode(), v1::CONTROLLER_MODE_UNSPECIFIED);
}

TEST_F(ServerIntegrationTest, RetryOfTheSameStepReturnsTheCachedResponse) {
  v1::PredictResponse r0, r1, r2;
  ASSERT_TRUE(Call(ValidRequest("robot-retry", 0), &r0).ok());
  ASSERT_TRUE(Call(ValidRequest("robot-retry", 1), &r1).ok());
  ASSERT_TRUE(Call(ValidRequest("robot-retry", 1), &r2).ok());
  EXPECT_FALSE(r1.cached());
  EXPECT_TRUE(r2.cached());
  ASSERT_EQ(r1.actions_size(), r2.actions_size());
  for (int i = 0; i < r1.actions_size(); ++i) EXPECT_EQ(r1.actions(i), r2.actions(i));
  EXPECT_EQ(r1.episode_steps(), r2.episode_steps());
  // Lower step: FAILED_PRECONDITION.
  v1::PredictResponse r3;
  EXPECT_EQ(Call(ValidRequest("robot-retry", 0), &r3).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  ExpectServingStill();
}

TEST_F(ServerIntegrationTest, ResetEndsTheEpisodeAndTheNextStepSaysSo) {
  v1::PredictResponse r;
  ASSERT_TRUE(Call(ValidRequest("robot-reset", 0), &r).ok());
  ASSERT_TRUE(Call(ValidRequest("robot-reset", 1), &r).ok());
  EXPECT_FALSE(r.session_restarted());
  auto existed = client_->Reset("robot-reset");
  ASSERT_TRUE(existed.ok());
  EXPECT_TRUE(*existed);
  ASSERT_TRUE(Call(ValidRequest("robot-reset", 2), &r).ok());
  EXPECT_TRUE(r.session_restarted());
  EXPECT_TRUE(r.pruning().used_fallback());  // prior cleared
  auto again = client_->Reset("never-seen");
  ASSERT_TRUE(again.ok());
  EXPECT_FALSE(*again);
}

TEST_F(ServerIntegrationTest, StreamPredictAnswersEveryRequestInOrderAndReportsErrorsInBand) {
  auto stream = client_->OpenStream();
  for (int step = 0; step < 3; ++step) {
    auto out = stream->Predict("robot-stream", Obs(2, step),
                               {.episode_id = "s1", .step = static_cast<uint64_t>(step)});
    ASSERT_TRUE(out.ok()) << out.status();
    EXPECT_EQ(out->raw.step(), static_cast<uint64_t>(step));
  }
  Observation bad = Obs(2, 3);
  bad.proprio.pop_back();
  auto err = stream->Predict("robot-stream", bad, {.episode_id = "s1", .step = 3});
  EXPECT_EQ(err.status().code(), absl::StatusCode::kInvalidArgument);
  auto after = stream->Predict("robot-stream", Obs(2, 3), {.episode_id = "s1", .step = 3});
  EXPECT_TRUE(after.ok()) << after.status();
  EXPECT_TRUE(stream->Close().ok());
}

TEST_F(ServerIntegrationTest, HealthIsServing) {
  auto h = client_->Health();
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_TRUE(*h);
}

TEST_F(ServerIntegrationTest, EachBadInputGetsItsCodeNamingTheFieldAndTheServerKeepsServing) {
  struct Case {
    std::string name;
    std::function<void(v1::PredictRequest&)> corrupt;
    grpc::StatusCode code;
    std::string field;
  };
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<Case> cases = {
      {"missing image", [](auto& r) { r.mutable_images()->RemoveLast(); },
       grpc::StatusCode::INVALID_ARGUMENT, "images"},
      {"corrupt jpeg",
       [](auto& r) {
         r.mutable_images(0)->set_encoded(std::string("\xff\xd8\xff\xe0garbage", 11));
       },
       grpc::StatusCode::INVALID_ARGUMENT, "images[0]"},
      {"not an image", [](auto& r) { r.mutable_images(1)->set_encoded("hello"); },
       grpc::StatusCode::INVALID_ARGUMENT, "images[1]"},
      {"raw size mismatch", [](auto& r) { r.mutable_images(0)->mutable_raw()->set_height(7); },
       grpc::StatusCode::INVALID_ARGUMENT, "images[0].raw"},
      {"nan proprio", [nan](auto& r) { r.set_proprio(2, nan); }, grpc::StatusCode::INVALID_ARGUMENT,
       "proprio[2]"},
      {"inf proprio", [](auto& r) { r.set_proprio(0, std::numeric_limits<float>::infinity()); },
       grpc::StatusCode::INVALID_ARGUMENT, "proprio[0]"},
      {"short proprio", [](auto& r) { r.mutable_proprio()->RemoveLast(); },
       grpc::StatusCode::INVALID_ARGUMENT, "proprio"},
      {"empty instruction", [](auto& r) { r.set_instruction(""); },
       grpc::StatusCode::INVALID_ARGUMENT, "instruction"},
      {"oversize instruction", [](auto& r) { r.set_instruction(std::string(5000, 'a')); },
       grpc::StatusCode::INVALID_ARGUMENT, "instruction"},
      {"bad robot id", [](auto& r) { r.set_robot_id("robot with spaces/.."); },
       grpc::StatusCode::INVALID_ARGUMENT, "robot_id"},
      {"empty robot id", [](auto& r) { r.set_robot_id(""); }, grpc::StatusCode::INVALID_ARGUMENT,
       "robot_id"},
      {"unknown camera", [](auto& r) { r.mutable_images(0)->set_camera("left"); },
       grpc::StatusCode::INVALID_ARGUMENT, "camera"},
      {"unknown unnorm key", [](auto& r) { r.set_unnorm_key("nope"); },
       grpc::StatusCode::INVALID_ARGUMENT, "unnorm_key"},
      {"bad alpha", [](auto& r) { r.mutable_pruning()->set_alpha(-1); },
       grpc::StatusCode::INVALID_ARGUMENT, "alpha"},
      {"oversize message",
       [](auto& r) { r.mutable_images(0)->set_encoded(std::string(3 << 20, 'x')); },
       grpc::StatusCode::RESOURCE_EXHAUSTED, ""},
  };
  // A healthy robot mid-episode: its session must not be disturbed by the bad requests.
  v1::PredictResponse before, after;
  ASSERT_TRUE(Call(ValidRequest("bystander", 0), &before).ok());
  for (const auto& c : cases) {
    v1::PredictRequest req = ValidRequest("bad-robot", 0);
    c.corrupt(req);
    v1::PredictResponse resp;
    grpc::Status s = Call(req, &resp);
    EXPECT_EQ(s.error_code(), c.code) << c.name << ": " << s.error_message();
    if (!c.field.empty()) {
      EXPECT_NE(s.error_message().find(c.field), std::string::npos)
          << c.name << ": " << s.error_message();
    }
    ExpectServingStill();
  }
  ASSERT_TRUE(Call(ValidRequest("bystander", 1), &after).ok());
  EXPECT_FALSE(after.session_restarted());
  EXPECT_EQ(after.episode_steps(), 2u);
}

TEST_F(ServerIntegrationTest, RobotIdHeaderMustAgreeAndTheReplicaSaysWhoAnswered) {
  absl::StatusOr<ActionChunk> chunk = client_->Predict("robot-header", Obs(5, 0), {});
  ASSERT_TRUE(chunk.ok()) << chunk.status();
  EXPECT_EQ(chunk->replica, "replica-under-test");

  // A misrouted call (its header names another robot) is refused and touches nothing.
  v1::PredictResponse resp;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
  ctx.AddMetadata("x-robot-id", "someone-else");
  const grpc::Status s = stub_->Predict(&ctx, ValidRequest("robot-header-2", 0), &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(absl::StrContains(s.error_message(), "x-robot-id")) << s.error_message();
  ASSERT_TRUE(Call(ValidRequest("robot-header-2", 0), &resp).ok());
  EXPECT_EQ(resp.episode_steps(), 1u);

  // On a stream opened for one robot, another robot's message is answered in-band.
  auto stream = client_->OpenStream("robot-header-3");
  EXPECT_TRUE(stream->Predict("robot-header-3", Obs(5, 0)).ok());
  EXPECT_EQ(stream->Predict("robot-header-4", Obs(5, 0)).status().code(),
            absl::StatusCode::kInvalidArgument);
  absl::StatusOr<ActionChunk> again = stream->Predict("robot-header-3", Obs(5, 1));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->replica, "replica-under-test");
  EXPECT_TRUE(stream->Close().ok());
}

TEST_F(ServerIntegrationTest, RequestIdIsEchoedOrMadeAndReachesTheSdkOnSuccessAndFailure) {
  // A valid client id comes back as is.
  absl::StatusOr<ActionChunk> chunk =
      client_->Predict("robot-rid", Obs(6, 0), {.request_id = "trace-0123_abc"});
  ASSERT_TRUE(chunk.ok()) << chunk.status();
  EXPECT_EQ(chunk->request_id, "trace-0123_abc");

  // Without one (or with an invalid one) the server makes one, a different one per call.
  absl::StatusOr<ActionChunk> made = client_->Predict("robot-rid", Obs(6, 1), {});
  ASSERT_TRUE(made.ok()) << made.status();
  EXPECT_FALSE(made->request_id.empty());
  EXPECT_NE(made->request_id, chunk->request_id);
  // The SDK refuses an id gRPC could not send, naming the option; the server replaces an id it
  // does not accept (over 128 characters) with its own.
  absl::StatusOr<ActionChunk> unsendable =
      client_->Predict("robot-rid", Obs(6, 2), {.request_id = "has space"});
  EXPECT_EQ(unsendable.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(unsendable.status().message(), "PredictOptions.request_id"));
  const std::string too_long(200, 'x');
  v1::PredictResponse resp;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
  ctx.AddMetadata("x-request-id", too_long);
  ASSERT_TRUE(stub_->Predict(&ctx, ValidRequest("robot-rid-raw", 0), &resp).ok());
  auto echoed = ctx.GetServerInitialMetadata().find("x-request-id");
  ASSERT_NE(echoed, ctx.GetServerInitialMetadata().end());
  const std::string server_id(echoed->second.data(), echoed->second.size());
  EXPECT_FALSE(server_id.empty());
  EXPECT_NE(server_id, too_long);

  // A refused call carries its id too (trailing metadata of a trailers-only response).
  Observation bad = Obs(6, 3);
  bad.proprio.pop_back();
  absl::StatusOr<ActionChunk> refused =
      client_->Predict("robot-rid", bad, {.request_id = "trace-refused"});
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(RequestIdOf(refused.status()), "trace-refused");

  // On a stream, message n is "<stream id>/<n>".
  auto stream = client_->OpenStream("robot-rid-stream", "stream-7");
  absl::StatusOr<ActionChunk> first = stream->Predict("robot-rid-stream", Obs(6, 0));
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(stream->request_id(), "stream-7");
  EXPECT_EQ(first->request_id, "stream-7/1");
  absl::StatusOr<ActionChunk> second = stream->Predict("robot-rid-stream", Obs(6, 1));
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(second->request_id, "stream-7/2");
  EXPECT_TRUE(stream->Close().ok());
}

TEST_F(ServerIntegrationTest, MetricsAreScrapedOverHttpWithNonZeroCounts) {
  ASSERT_TRUE(client_->Predict("robot-metrics", Obs(3, 0), {}).ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));  // gauges refresh every second
  const std::string body = HttpGet(server_->metrics_port(), "/metrics");
  ASSERT_NE(body.find("200 OK"), std::string::npos) << body.substr(0, 200);
  for (const char* name :
       {"specprune_requests_total{code=\"OK\",rpc=\"Predict\"}",
        "specprune_request_duration_seconds_count", "specprune_queue_duration_seconds_count",
        "specprune_compute_duration_seconds_count{stage=\"llm\"}",
        "specprune_compute_duration_seconds_count{stage=\"vision\"}",
        "specprune_compute_duration_seconds_count{stage=\"preprocess\"}",
        "specprune_compute_duration_seconds_count{stage=\"action_head\"}",
        "specprune_retained_vision_tokens_count", "specprune_batch_size_count",
        "specprune_active_sessions"}) {
    const size_t nl = body.find(std::string("\n") + name);  // a sample line, not # HELP
    ASSERT_NE(nl, std::string::npos) << name;
    const size_t at = nl + 1;
    const size_t eol = body.find('\n', at);
    const std::string line = body.substr(at, eol - at);
    const double value = std::stod(line.substr(line.rfind(' ') + 1));
    EXPECT_GT(value, 0) << line;
  }
}

TEST_F(ServerIntegrationTest, ConcurrentRobotsGetTheirOwnResponses) {
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int r = 0; r < 4; ++r) {
    threads.emplace_back([&, r] {
      auto client = Client::Create({.target = target_, .deadline = absl::Seconds(30)});
      for (int step = 0; step < 4; ++step) {
        const std::string robot = absl::StrCat("concurrent-", r);
        auto out = (*client)->Predict(robot, Obs(10 + r, step),
                                      {.episode_id = "c", .step = static_cast<uint64_t>(step)});
        if (!out.ok() || out->raw.robot_id() != robot ||
            out->raw.step() != static_cast<uint64_t>(step))
          failures++;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
}

TEST_F(ServerIntegrationTest, DiagnosticModeReportsDeviationAndRecallOfTheGlobalPrior) {
  v1::PredictResponse r;
  auto req = ValidRequest("robot-diag", 0);
  req.mutable_pruning()->set_diagnostic(true);
  ASSERT_TRUE(Call(req, &r).ok());
  req = ValidRequest("robot-diag", 1);
  req.mutable_pruning()->set_diagnostic(true);
  grpc::Status s = Call(req, &r);
  ASSERT_TRUE(s.ok()) << s.error_message();
  ASSERT_TRUE(r.pruning().has_action_deviation());
  EXPECT_GE(r.pruning().action_deviation(), 0.0);
  ASSERT_TRUE(r.pruning().has_global_recall());
  EXPECT_GE(r.pruning().global_recall(), 0.0);
  EXPECT_LE(r.pruning().global_recall(), 1.0);
  // Without the flag, neither is reported.
  ASSERT_TRUE(Call(ValidRequest("robot-diag", 2), &r).ok());
  EXPECT_FALSE(r.pruning().has_action_deviation());
}

TEST_F(ServerIntegrationTest, PerRequestOverridesSelectMethodAndAnyKnob) {
  v1::PredictResponse r;
  ASSERT_TRUE(Call(ValidRequest("robot-override", 0), &r).ok());
  auto req = ValidRequest("robot-override", 1);
  req.mutable_pruning()->set_method(v1::PRUNING_METHOD_NONE);
  ASSERT_TRUE(Call(req, &r).ok());
  EXPECT_EQ(r.retained_vision_tokens(), r.total_vision_tokens());
  EXPECT_EQ(r.pruning().method(), v1::PRUNING_METHOD_NONE);
  // Keeping every token through SpecPrune's knobs gives no pruning either.
  req = ValidRequest("robot-override", 2);
  req.mutable_pruning()->set_method(v1::PRUNING_METHOD_FASTV);
  req.mutable_pruning()->set_config_json(R"({"fastv": {"keep_ratio": 0.5}})");
  ASSERT_TRUE(Call(req, &r).ok());
  EXPECT_EQ(r.retained_vision_tokens(), r.total_vision_tokens() / 2);
  req = ValidRequest("robot-override", 3);
  req.mutable_pruning()->set_config_json(R"({"specprune": {"k_global": -3}})");
  s_ = Call(req, &r);
  EXPECT_EQ(s_.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s_.error_message().find("k_global"), std::string::npos) << s_.error_message();
  req.mutable_pruning()->set_config_json("{not json");
  EXPECT_EQ(Call(req, &r).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(ServerIntegrationTest, NewEpisodeIdClearsThePrior) {
  v1::PredictResponse r;
  ASSERT_TRUE(Call(ValidRequest("robot-episodes", 0), &r).ok());
  ASSERT_TRUE(Call(ValidRequest("robot-episodes", 1), &r).ok());
  EXPECT_FALSE(r.pruning().used_fallback());
  auto req = ValidRequest("robot-episodes", 0);
  req.set_episode_id("another-episode");
  ASSERT_TRUE(Call(req, &r).ok());
  EXPECT_TRUE(r.pruning().used_fallback());
  EXPECT_EQ(r.episode_steps(), 1u);
  EXPECT_FALSE(r.session_restarted());
}

// A copy of the embedded model's directory (files symlinked) whose pruning_config.json says
// `pruning_json`.
// A server started with `options` and an SDK client connected to it, with the ModelInfo it read.
struct StartedServer {
  std::unique_ptr<SpecPruneServer> server;
  std::unique_ptr<Client> client;
  v1::ModelInfo info;
};
absl::StatusOr<StartedServer> StartWithClient(const ServerOptions& options) {
  StartedServer s;
  absl::StatusOr<std::unique_ptr<SpecPruneServer>> server = SpecPruneServer::Start(options);
  if (!server.ok()) return server.status();
  s.server = std::move(*server);
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Create(
      {.target = absl::StrCat("127.0.0.1:", s.server->port()), .deadline = absl::Seconds(20)});
  if (!client.ok()) return client.status();
  s.client = std::move(*client);
  absl::StatusOr<v1::ModelInfo> info = s.client->ModelInfo();
  if (!info.ok()) return info.status();
  s.info = *std::move(info);
  return s;
}

std::filesystem::path ModelDirWithPruningFile(const std::string& name,
                                              const std::string& pruning_json) {
  namespace fs = std::filesystem;
  const fs::path dir =
      fs::temp_directory_path() / absl::StrCat("server_integration_test_", name, "_", ::getpid());
  fs::remove_all(dir);
  fs::create_directories(dir);
  for (const auto& entry : fs::directory_iterator(ServerOptions{}.model_dir)) {
    if (entry.is_regular_file() && entry.path().filename() != kModelPruningConfigFile) {
      fs::create_symlink(fs::absolute(entry.path()), dir / entry.path().filename());
    }
  }
  std::ofstream(dir / kModelPruningConfigFile) << pruning_json;
  return dir;
}

TEST(ServerStartTest, ModelPruningFileSetsTheDefaultsAndTheServerConfigOverlaysThem) {
  const auto dir = ModelDirWithPruningFile(
      "tuned", R"({"specprune": {"coarse_scale": 1.3, "fine_scale": 2.1, "k_global": 9}})");
  ServerOptions options;
  options.model_dir = dir.string();
  options.host = "127.0.0.1";
  options.port = 0;
  options.pruning = nlohmann::json::parse(R"({"specprune": {"fine_scale": 2.5}})");
  absl::StatusOr<StartedServer> started = StartWithClient(options);
  ASSERT_TRUE(started.ok()) << started.status();
  const v1::ModelInfo* info = &started->info;
  EXPECT_FLOAT_EQ(info->pruning().alpha(), 1.3f);       // from the model's file
  EXPECT_EQ(info->pruning().k_global(), 9u);            // from the model's file
  EXPECT_FLOAT_EQ(info->pruning().fine_scale(), 2.5f);  // the server config wins
  std::filesystem::remove_all(dir);
}

TEST(ServerStartTest, BadModelPruningFileFailsStartNamingTheFileAndField) {
  const auto dir = ModelDirWithPruningFile("bad", R"({"specprune": {"fine_scale": 0.5}})");
  ServerOptions options;
  options.model_dir = dir.string();
  options.host = "127.0.0.1";
  options.port = 0;
  auto server = SpecPruneServer::Start(options);
  ASSERT_FALSE(server.ok());
  EXPECT_EQ(server.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(server.status().message(), "pruning_config.json"))
      << server.status();
  EXPECT_TRUE(absl::StrContains(server.status().message(), "pruning.specprune.fine_scale"))
      << server.status();
  std::filesystem::remove_all(dir);
}

// Admission control runs before a call is parsed: a robot over its rate is RESOURCE_EXHAUSTED
// naming the limit, even for a request that would not parse or validate, and other robots of the
// same connection are still served.
TEST(AdmissionIntegrationTest, RobotOverItsRateIsRefusedBeforeTheParseAndOthersAreServed) {
  ServerOptions options;
  options.host = "127.0.0.1";
  options.port = 0;
  options.admission.robot_rate_hz = 0.001;  // one call per robot, then refusals for ~17 minutes
  options.admission.robot_burst = 1;
  options.admission.refusal_delay = absl::Milliseconds(300);
  absl::StatusOr<StartedServer> started = StartWithClient(options);
  ASSERT_TRUE(started.ok()) << started.status();
  const v1::ModelInfo* info = &started->info;
  Client* client = started->client.get();
  auto obs = [&](int seed) {
    Observation o;
    for (const auto& cam : info->cameras())
      o.images.push_back({cam, Frame(info->image_height(), seed, 0), ""});
    o.instruction = "put the red cube on the blue plate";
    o.proprio.assign(info->proprio_dim(), 0.1f);
    return o;
  };
  ASSERT_TRUE(client->Predict("robot-a", obs(1), {}).ok());
  const absl::Time sent = absl::Now();
  absl::StatusOr<ActionChunk> again = client->Predict("robot-a", obs(1), {});
  // The refusal is answered no earlier than refusal_delay: a client re-sending at once is paced.
  EXPECT_GE(absl::Now() - sent, absl::Milliseconds(290));
  EXPECT_EQ(again.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(absl::StrContains(again.status().message(), "robot_rate_hz")) << again.status();
  Observation bad = obs(1);
  bad.proprio.pop_back();  // would be INVALID_ARGUMENT if it were parsed and validated
  EXPECT_EQ(client->Predict("robot-a", bad, {}).status().code(),
            absl::StatusCode::kResourceExhausted);
  absl::StatusOr<ActionChunk> other = client->Predict("robot-b", obs(2), {});
  EXPECT_TRUE(other.ok()) << other.status();
}

}  // namespace
}  // namespace specprune
