// Tests of the C++ SDK (client/cpp/client.h) against an in-process fake VlaService.
#include "client/cpp/client.h"

#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "grpcpp/health_check_service_interface.h"
#include "gtest/gtest.h"

namespace specprune {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr int kChunk = 2;
constexpr int kDim = 3;

// Deterministic action value the fake computes, so tests can check the round trip.
float FakeAction(const v1::PredictRequest& r, int t, int d) {
  const float p0 = r.proprio_size() > 0 ? r.proprio(0) : 0.0f;
  return static_cast<float>(r.step()) * 100.0f + t * 10.0f + d + p0;
}

v1::PredictResponse FakeResponse(const v1::PredictRequest& r) {
  v1::PredictResponse out;
  out.set_robot_id(r.robot_id());
  out.set_episode_id(r.episode_id());
  out.set_step(r.step());
  out.set_chunk_size(kChunk);
  out.set_action_dim(kDim);
  for (int t = 0; t < kChunk; ++t) {
    for (int d = 0; d < kDim; ++d) out.add_actions(FakeAction(r, t, d));
  }
  out.set_retained_vision_tokens(100);
  out.set_total_vision_tokens(512);
  out.set_controller_mode(v1::CONTROLLER_MODE_FINE);
  out.mutable_pruning()->set_method(r.pruning().method());
  return out;
}

// Records every request; scripted failures and delays make it misbehave on demand.
class FakeVlaService final : public v1::VlaService::Service {
 public:
  grpc::Status Predict(grpc::ServerContext* ctx, const v1::PredictRequest* req,
                       v1::PredictResponse* resp) override {
    absl::Duration delay;
    grpc::Status failure;
    {
      absl::MutexLock lock(&mu_);
      requests_.push_back(*req);
      delay = delay_;
      if (!failures_.empty()) {
        failure = failures_.front();
        failures_.pop_front();
      }
    }
    absl::SleepFor(delay);
    if (!failure.ok()) return failure;
    *resp = FakeResponse(*req);
    absl::MutexLock lock(&mu_);
    if (!wrong_robot_.empty()) resp->set_robot_id(wrong_robot_);
    if (drop_action_) resp->mutable_actions()->RemoveLast();
    return grpc::Status::OK;
  }

  grpc::Status StreamPredict(
      grpc::ServerContext* ctx,
      grpc::ServerReaderWriter<v1::PredictResponse, v1::PredictRequest>* stream) override {
    v1::PredictRequest req;
    while (stream->Read(&req)) {
      absl::Duration delay;
      {
        absl::MutexLock lock(&mu_);
        requests_.push_back(req);
        delay = delay_;
      }
      absl::SleepFor(delay);
      v1::PredictResponse resp;
      if (req.instruction().empty()) {
        resp.mutable_error()->set_code(grpc::StatusCode::INVALID_ARGUMENT);
        resp.mutable_error()->set_message("instruction is empty");
      } else {
        resp = FakeResponse(req);
      }
      if (!stream->Write(resp)) break;
    }
    return grpc::Status::OK;
  }

  grpc::Status Reset(grpc::ServerContext*, const v1::ResetRequest* req,
                     v1::ResetResponse* resp) override {
    absl::MutexLock lock(&mu_);
    resets_.push_back(req->robot_id());
    bool existed = false;
    for (const auto& r : requests_) existed |= r.robot_id() == req->robot_id();
    resp->set_existed(existed);
    return grpc::Status::OK;
  }

  grpc::Status GetModelInfo(grpc::ServerContext*, const v1::GetModelInfoRequest*,
                            v1::ModelInfo* info) override {
    info->set_config_name("fake");
    info->add_cameras("main");
    info->add_cameras("wrist");
    info->set_image_height(32);
    info->set_image_width(48);
    info->set_action_dim(kDim);
    info->set_chunk_size(kChunk);
    info->set_proprio_dim(8);
    info->set_parameter_count(12345678901ULL);
    info->mutable_pruning()->set_method(v1::PRUNING_METHOD_SPECPRUNE);
    return grpc::Status::OK;
  }

  void FailNext(grpc::Status s, int times = 1) {
    absl::MutexLock lock(&mu_);
    for (int i = 0; i < times; ++i) failures_.push_back(s);
  }
  void SetDelay(absl::Duration d) {
    absl::MutexLock lock(&mu_);
    delay_ = d;
  }
  void SetWrongRobot(std::string r) {
    absl::MutexLock lock(&mu_);
    wrong_robot_ = std::move(r);
  }
  void SetDropAction(bool v) {
    absl::MutexLock lock(&mu_);
    drop_action_ = v;
  }
  std::vector<v1::PredictRequest> requests() {
    absl::MutexLock lock(&mu_);
    return requests_;
  }
  std::vector<uint64_t> steps() {
    std::vector<uint64_t> out;
    for (const auto& r : requests()) out.push_back(r.step());
    return out;
  }
  std::vector<std::string> resets() {
    absl::MutexLock lock(&mu_);
    return resets_;
  }

 private:
  absl::Mutex mu_;
  std::vector<v1::PredictRequest> requests_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> resets_ ABSL_GUARDED_BY(mu_);
  std::deque<grpc::Status> failures_ ABSL_GUARDED_BY(mu_);
  absl::Duration delay_ ABSL_GUARDED_BY(mu_) = absl::ZeroDuration();
  std::string wrong_robot_ ABSL_GUARDED_BY(mu_);
  bool drop_action_ ABSL_GUARDED_BY(mu_) = false;
};

class ClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::EnableDefaultHealthCheckService(true);
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(&service_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    ASSERT_GT(port_, 0);
  }
  void TearDown() override {
    if (server_) server_->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(1)));
  }

  std::unique_ptr<Client> MakeClient(ClientOptions options = {}) {
    options.target = absl::StrCat("127.0.0.1:", port_);
    options.initial_backoff = absl::Milliseconds(5);
    options.max_backoff = absl::Milliseconds(20);
    absl::StatusOr<std::unique_ptr<Client>> client = Client::Create(std::move(options));
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? *std::move(client) : nullptr;
  }

  static Observation MakeObservation() {
    Observation obs;
    CameraImage main;
    main.camera = "main";
    main.image.height = 2;
    main.image.width = 3;
    for (int i = 0; i < 2 * 3 * 3; ++i) main.image.pixels.push_back(static_cast<uint8_t>(i * 7));
    CameraImage wrist;
    wrist.camera = "wrist";
    wrist.encoded = "\x89PNG-not-really";
    obs.images = {main, wrist};
    obs.instruction = "put the red block on the plate";
    obs.proprio = {0.5f, 1, 2, 3, 4, 5, 6, 7};
    return obs;
  }

  int port_ = 0;
  FakeVlaService service_;
  std::unique_ptr<grpc::Server> server_;
};

TEST_F(ClientTest, CreateRejectsBadOptionsNamingTheField) {
  ClientOptions o;
  EXPECT_THAT(Client::Create(o).status().message(), HasSubstr("target"));
  o.target = "127.0.0.1:1";
  o.max_attempts = 0;
  absl::Status s = Client::Create(o).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("max_attempts"));
  o.max_attempts = 1;
  o.deadline = absl::ZeroDuration();
  EXPECT_THAT(Client::Create(o).status().message(), HasSubstr("deadline"));
  o.deadline = absl::Seconds(1);
  o.initial_backoff = absl::Seconds(2);
  EXPECT_THAT(Client::Create(o).status().message(), HasSubstr("max_backoff"));
}

TEST_F(ClientTest, PredictMapsEveryFieldAndReturnsTheChunk) {
  auto client = MakeClient();
  PredictOptions opts;
  opts.episode_id = "ep-1";
  opts.method = v1::PRUNING_METHOD_FASTV;
  opts.alpha = 0.75f;
  opts.keep_ratio = 0.5f;
  opts.diagnostic = true;
  opts.pruning_config_json = R"({"specprune": {"executed_rows": 4}})";
  opts.unnorm_key = "bridge";
  const Observation obs = MakeObservation();
  absl::StatusOr<ActionChunk> chunk = client->Predict("robot-7", obs, opts);
  ASSERT_TRUE(chunk.ok()) << chunk.status();

  ASSERT_EQ(service_.requests().size(), 1u);
  const v1::PredictRequest req = service_.requests()[0];
  EXPECT_EQ(req.robot_id(), "robot-7");
  EXPECT_EQ(req.episode_id(), "ep-1");
  EXPECT_EQ(req.step(), 0u);
  EXPECT_EQ(req.instruction(), obs.instruction);
  EXPECT_THAT(req.proprio(), ElementsAre(0.5f, 1, 2, 3, 4, 5, 6, 7));
  EXPECT_EQ(req.unnorm_key(), "bridge");
  ASSERT_EQ(req.images_size(), 2);
  EXPECT_EQ(req.images(0).camera(), "main");
  ASSERT_TRUE(req.images(0).has_raw());
  EXPECT_EQ(req.images(0).raw().height(), 2u);
  EXPECT_EQ(req.images(0).raw().width(), 3u);
  EXPECT_EQ(req.images(0).raw().channels(), 3u);
  EXPECT_EQ(req.images(0).raw().pixels(),
            std::string(obs.images[0].image.pixels.begin(), obs.images[0].image.pixels.end()));
  EXPECT_EQ(req.images(1).camera(), "wrist");
  EXPECT_EQ(req.images(1).encoded(), obs.images[1].encoded);
  EXPECT_EQ(req.pruning().method(), v1::PRUNING_METHOD_FASTV);
  EXPECT_FLOAT_EQ(req.pruning().alpha(), 0.75f);
  EXPECT_FLOAT_EQ(req.pruning().keep_ratio(), 0.5f);
  EXPECT_TRUE(req.pruning().has_diagnostic() && req.pruning().diagnostic());
  EXPECT_EQ(req.pruning().config_json(), R"({"specprune": {"executed_rows": 4}})");

  EXPECT_EQ(chunk->chunk_size, kChunk);
  EXPECT_EQ(chunk->action_dim, kDim);
  ASSERT_EQ(chunk->actions.size(), static_cast<size_t>(kChunk * kDim));
  for (int t = 0; t < kChunk; ++t) {
    for (int d = 0; d < kDim; ++d) EXPECT_FLOAT_EQ(chunk->at(t, d), FakeAction(req, t, d));
  }
  EXPECT_EQ(chunk->raw.retained_vision_tokens(), 100u);
  EXPECT_EQ(chunk->raw.controller_mode(), v1::CONTROLLER_MODE_FINE);
}

TEST_F(ClientTest, PredictWithoutOverridesSendsNoPruningMessage) {
  auto client = MakeClient();
  ASSERT_TRUE(client->Predict("r", MakeObservation()).ok());
  const v1::PredictRequest req = service_.requests().at(0);
  EXPECT_FALSE(req.has_pruning());
  EXPECT_EQ(req.episode_id(), "");
}

TEST_F(ClientTest, AutoStepIncrementsPerRobotAndEpisode) {
  auto client = MakeClient();
  const Observation obs = MakeObservation();
  PredictOptions a;
  a.episode_id = "a";
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(client->Predict("r1", obs, a).ok());
  ASSERT_TRUE(client->Predict("r2", obs, a).ok());  // other robot: own counter
  PredictOptions b;
  b.episode_id = "b";
  ASSERT_TRUE(client->Predict("r1", obs, b).ok());  // new episode restarts at 0
  ASSERT_TRUE(client->Predict("r1", obs, b).ok());
  PredictOptions explicit_step = b;
  explicit_step.step = 10;
  ASSERT_TRUE(client->Predict("r1", obs, explicit_step).ok());
  ASSERT_TRUE(client->Predict("r1", obs, b).ok());  // continues after the explicit step
  absl::StatusOr<bool> existed = client->Reset("r1");
  ASSERT_TRUE(existed.ok()) << existed.status();
  EXPECT_TRUE(*existed);
  ASSERT_TRUE(client->Predict("r1", obs, b).ok());  // reset restarts at 0
  EXPECT_THAT(service_.steps(), ElementsAre(0, 1, 2, 0, 0, 1, 10, 11, 0));
}

TEST_F(ClientTest, RetriesUnavailableWithTheSameStepAndSucceeds) {
  auto client = MakeClient();
  const Observation obs = MakeObservation();
  ASSERT_TRUE(client->Predict("r1", obs).ok());  // step 0
  service_.FailNext(grpc::Status(grpc::StatusCode::UNAVAILABLE, "overloaded"), 2);
  absl::StatusOr<ActionChunk> chunk = client->Predict("r1", obs);
  ASSERT_TRUE(chunk.ok()) << chunk.status();
  EXPECT_THAT(service_.steps(), ElementsAre(0, 1, 1, 1));
  EXPECT_EQ(chunk->raw.step(), 1u);
  ASSERT_TRUE(client->Predict("r1", obs).ok());
  EXPECT_EQ(service_.steps().back(), 2u);
}

TEST_F(ClientTest, GivesUpAfterMaxAttemptsWithUnavailable) {
  ClientOptions o;
  o.max_attempts = 2;
  auto client = MakeClient(o);
  service_.FailNext(grpc::Status(grpc::StatusCode::UNAVAILABLE, "draining"), 2);
  absl::StatusOr<ActionChunk> chunk = client->Predict("r1", MakeObservation());
  EXPECT_EQ(chunk.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(chunk.status().message(), "draining");
  // The failed step is consumed, so the next call cannot get a cached answer for old inputs.
  ASSERT_TRUE(client->Predict("r1", MakeObservation()).ok());
  EXPECT_THAT(service_.steps(), ElementsAre(0, 0, 1));
}

TEST_F(ClientTest, InvalidArgumentIsNotRetriedAndKeepsCodeAndMessage) {
  auto client = MakeClient();
  service_.FailNext(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "proprio: expected 8 values"));
  absl::StatusOr<ActionChunk> chunk = client->Predict("r1", MakeObservation());
  EXPECT_EQ(chunk.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(chunk.status().message(), "proprio: expected 8 values");
  EXPECT_EQ(service_.requests().size(), 1u);
}

TEST_F(ClientTest, DeadlineIsHonoured) {
  ClientOptions o;
  o.deadline = absl::Milliseconds(100);
  auto client = MakeClient(o);
  service_.SetDelay(absl::Milliseconds(600));
  const absl::Time start = absl::Now();
  absl::StatusOr<ActionChunk> chunk = client->Predict("r1", MakeObservation());
  EXPECT_EQ(chunk.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(450));
  EXPECT_EQ(service_.requests().size(), 1u);  // DEADLINE_EXCEEDED is not retried
}

TEST_F(ClientTest, DeadlineBoundsRetriesAndBackoff) {
  ClientOptions o;
  o.deadline = absl::Milliseconds(150);
  o.max_attempts = 100;
  auto client = MakeClient(o);  // backoff 5..20 ms
  service_.FailNext(grpc::Status(grpc::StatusCode::UNAVAILABLE, "down"), 1000);
  const absl::Time start = absl::Now();
  absl::StatusOr<ActionChunk> chunk = client->Predict("r1", MakeObservation());
  const absl::Duration elapsed = absl::Now() - start;
  EXPECT_TRUE(chunk.status().code() == absl::StatusCode::kUnavailable ||
              chunk.status().code() == absl::StatusCode::kDeadlineExceeded)
      << chunk.status();
  EXPECT_LT(elapsed, absl::Milliseconds(500));
  EXPECT_GT(service_.requests().size(), 2u);
  EXPECT_LT(service_.requests().size(), 100u);
}

TEST_F(ClientTest, UnreachableServerIsUnavailable) {
  ClientOptions o;
  o.deadline = absl::Seconds(2);
  auto client = MakeClient(o);
  server_->Shutdown();
  server_.reset();
  absl::StatusOr<bool> healthy = client->Health();
  EXPECT_EQ(healthy.status().code(), absl::StatusCode::kUnavailable) << healthy.status();
}

TEST_F(ClientTest, InvalidRawImageIsRejectedLocallyNamingTheImage) {
  auto client = MakeClient();
  Observation obs = MakeObservation();
  obs.images[0].image.pixels.pop_back();
  absl::StatusOr<ActionChunk> chunk = client->Predict("r1", obs);
  EXPECT_EQ(chunk.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(chunk.status().message(), HasSubstr("images[0]"));
  EXPECT_TRUE(service_.requests().empty());
  EXPECT_EQ(client->Predict("", MakeObservation()).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(ClientTest, MismatchedOrMalformedResponseIsAnError) {
  auto client = MakeClient();
  service_.SetWrongRobot("someone-else");
  EXPECT_EQ(client->Predict("r1", MakeObservation()).status().code(), absl::StatusCode::kInternal);
  service_.SetWrongRobot("");
  service_.SetDropAction(true);
  absl::StatusOr<ActionChunk> chunk = client->Predict("r1", MakeObservation());
  EXPECT_EQ(chunk.status().code(), absl::StatusCode::kInternal);
  EXPECT_THAT(chunk.status().message(), HasSubstr("malformed"));
}

TEST_F(ClientTest, ResetReportsWhetherASessionExisted) {
  auto client = MakeClient();
  absl::StatusOr<bool> existed = client->Reset("ghost");
  ASSERT_TRUE(existed.ok()) << existed.status();
  EXPECT_FALSE(*existed);
  ASSERT_TRUE(client->Predict("r1", MakeObservation()).ok());
  existed = client->Reset("r1");
  ASSERT_TRUE(existed.ok());
  EXPECT_TRUE(*existed);
  EXPECT_THAT(service_.resets(), ElementsAre("ghost", "r1"));
}

TEST_F(ClientTest, ModelInfoReturnsTheServersDescription) {
  auto client = MakeClient();
  absl::StatusOr<v1::ModelInfo> info = client->ModelInfo();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->config_name(), "fake");
  EXPECT_THAT(info->cameras(), ElementsAre("main", "wrist"));
  EXPECT_EQ(info->proprio_dim(), 8u);
  EXPECT_EQ(info->parameter_count(), 12345678901ULL);
}

TEST_F(ClientTest, HealthFollowsTheServingStatus) {
  auto client = MakeClient();
  absl::StatusOr<bool> healthy = client->Health();
  ASSERT_TRUE(healthy.ok()) << healthy.status();
  EXPECT_TRUE(*healthy);
  server_->GetHealthCheckService()->SetServingStatus(false);
  healthy = client->Health();
  ASSERT_TRUE(healthy.ok()) << healthy.status();
  EXPECT_FALSE(*healthy);
}

TEST_F(ClientTest, StreamAnswersInOrderAndSurvivesErrorResponses) {
  auto client = MakeClient();
  std::unique_ptr<PredictStream> stream = client->OpenStream();
  const Observation obs = MakeObservation();
  PredictOptions opts;
  opts.episode_id = "s";
  absl::StatusOr<ActionChunk> c0 = stream->Predict("r1", obs, opts);
  ASSERT_TRUE(c0.ok()) << c0.status();
  Observation bad = obs;
  bad.instruction.clear();
  absl::StatusOr<ActionChunk> err = stream->Predict("r1", bad, opts);
  EXPECT_EQ(err.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(err.status().message(), "instruction is empty");
  absl::StatusOr<ActionChunk> c2 = stream->Predict("r1", obs, opts);
  ASSERT_TRUE(c2.ok()) << c2.status();
  EXPECT_EQ(c0->raw.step(), 0u);
  EXPECT_EQ(c2->raw.step(), 2u);
  EXPECT_FLOAT_EQ(c2->at(1, 2), FakeAction(service_.requests()[2], 1, 2));
  // Streams and unary calls share the robot's step counter.
  ASSERT_TRUE(client->Predict("r1", obs, opts).ok());
  EXPECT_THAT(service_.steps(), ElementsAre(0, 1, 2, 3));
  EXPECT_TRUE(stream->Close().ok());
  EXPECT_EQ(stream->Predict("r1", obs, opts).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(ClientTest, StalledStreamIsCancelledAfterTheDeadline) {
  ClientOptions o;
  o.deadline = absl::Milliseconds(150);
  auto client = MakeClient(o);
  std::unique_ptr<PredictStream> stream = client->OpenStream();
  service_.SetDelay(absl::Milliseconds(700));
  const absl::Time start = absl::Now();
  absl::StatusOr<ActionChunk> chunk = stream->Predict("r1", MakeObservation());
  EXPECT_EQ(chunk.status().code(), absl::StatusCode::kDeadlineExceeded) << chunk.status();
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(600));
  // The stream is dead; later calls report the same status without sending anything.
  EXPECT_EQ(stream->Predict("r1", MakeObservation()).status().code(),
            absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(service_.requests().size(), 1u);
}

TEST_F(ClientTest, StreamDestroyedWithoutCloseDoesNotHang) {
  auto client = MakeClient();
  std::unique_ptr<PredictStream> stream = client->OpenStream();
  ASSERT_TRUE(stream->Predict("r1", MakeObservation()).ok());
  stream.reset();
  EXPECT_TRUE(client->Predict("r1", MakeObservation()).ok());
}

}  // namespace
}  // namespace specprune

namespace specprune {
namespace {

TEST(ClientMethodNamesTest, ParseAndNameRoundTripAndRejectUnknown) {
  for (auto m : {v1::PRUNING_METHOD_NONE, v1::PRUNING_METHOD_SPECPRUNE, v1::PRUNING_METHOD_FASTV,
                 v1::PRUNING_METHOD_RANDOM}) {
    auto parsed = ParsePruningMethod(PruningMethodName(m));
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(*parsed, m);
  }
  EXPECT_EQ(*ParsePruningMethod("FastV"), v1::PRUNING_METHOD_FASTV);
  auto bad = ParsePruningMethod("topk");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("topk"), std::string::npos);
  EXPECT_STREQ(PruningMethodName(v1::PRUNING_METHOD_UNSPECIFIED), "unspecified");
}

}  // namespace
}  // namespace specprune
