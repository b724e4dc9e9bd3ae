// TLS, mTLS and robot-bound tokens on a real server over loopback (issue #25), with certificates
// made by openssl for the test (tests/make_test_certs.sh).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "client/cpp/client.h"
#include "server/auth.h"
#include "server/server.h"

namespace specprune {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

constexpr char kCellToken[] = "cell3-token-0123456789";
constexpr char kOpsToken[] = "ops-token-9876543210";

void MakePki(const std::string& dir, const std::string& ca_name) {
  const std::string cmd =
      absl::StrCat("tests/make_test_certs.sh '", dir, "' '", ca_name, "' arm-7 >/dev/null");
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
}

std::string WriteTokenFile(const std::string& dir) {
  const nlohmann::json j = {
      {"tokens",
       {{{"name", "cell-3"},
         {"sha256", Authorizer::Sha256Hex(kCellToken)},
         {"robots", {"cell3-*"}}},
        {{"name", "ops"}, {"sha256", Authorizer::Sha256Hex(kOpsToken)}, {"robots", {"*"}}}}},
      {"identities", {{{"name", "arm-7 cert"}, {"identity", "arm-7"}, {"robots", {"arm-7"}}}}}};
  const std::string path = dir + "/tokens.json";
  std::ofstream(path) << j.dump(2);
  return path;
}

RgbImage Frame(int size, int seed) {
  RgbImage img;
  img.height = img.width = size;
  img.pixels.resize(size * size * 3);
  for (size_t i = 0; i < img.pixels.size(); ++i) img.pixels[i] = static_cast<uint8_t>(i * 7 + seed);
  return img;
}

class SecurityTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(absl::StrCat(::testing::TempDir(), "/specprune_security_", getpid()));
    fs::remove_all(*dir_);
    MakePki(*dir_, "test-ca");
    ServerOptions options;
    options.host = "127.0.0.1";
    options.port = 0;
    options.metrics_port = 0;
    options.tls.cert_file = *dir_ + "/server.pem";
    options.tls.key_file = *dir_ + "/server.key";
    options.tls.client_ca_file = *dir_ + "/ca.pem";  // client certificates optional
    options.auth_tokens_file = WriteTokenFile(*dir_);
    auto server = SpecPruneServer::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = server->release();
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
    fs::remove_all(*dir_);
    delete dir_;
  }

  // A TLS client trusting the test CA, with `token` ("" = none) and optionally the client cert.
  std::unique_ptr<Client> NewClient(const std::string& token, bool client_cert = false) {
    ClientOptions o;
    o.target = absl::StrCat("localhost:", server_->port());
    o.deadline = absl::Seconds(20);
    o.max_attempts = 1;
    o.tls_root_certs_file = *dir_ + "/ca.pem";
    if (client_cert) {
      o.tls_cert_file = *dir_ + "/client.pem";
      o.tls_key_file = *dir_ + "/client.key";
    }
    o.token = token;
    auto client = Client::Create(o);
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? *std::move(client) : nullptr;
  }

  Observation Obs(Client& client, int seed) {
    if (!info_) {
      auto ops = NewClient(kOpsToken);
      auto info = ops->ModelInfo();
      EXPECT_TRUE(info.ok()) << info.status();
      info_ = *info;
    }
    Observation obs;
    for (const auto& cam : info_->cameras()) {
      obs.images.push_back({cam, Frame(info_->image_height(), seed), ""});
    }
    obs.instruction = "put the red cube on the blue plate";
    obs.proprio.assign(info_->proprio_dim(), 0.1f);
    return obs;
  }

  static SpecPruneServer* server_;
  static std::string* dir_;
  std::optional<v1::ModelInfo> info_;
};

SpecPruneServer* SecurityTest::server_ = nullptr;
std::string* SecurityTest::dir_ = nullptr;

TEST_F(SecurityTest, PlaintextClientCannotTalkToTheTlsPort) {
  ClientOptions plaintext;
  plaintext.target = absl::StrCat("127.0.0.1:", server_->port());
  plaintext.max_attempts = 1;
  plaintext.token = kOpsToken;
  auto client = Client::Create(plaintext);
  ASSERT_TRUE(client.ok());
  EXPECT_EQ((*client)->ModelInfo().status().code(), absl::StatusCode::kUnavailable);
}

TEST_F(SecurityTest, CallsWithoutAValidTokenAreUnauthenticated) {
  for (const std::string token : {"", "not-a-token", "cell3-token-012345678"}) {
    auto client = NewClient(token);
    ASSERT_NE(client, nullptr);
    Observation obs = Obs(*client, 1);
    EXPECT_EQ(client->Predict("cell3-a", obs).status().code(), absl::StatusCode::kUnauthenticated)
        << token;
    EXPECT_EQ(client->Reset("cell3-a").status().code(), absl::StatusCode::kUnauthenticated);
    EXPECT_EQ(client->ModelInfo().status().code(), absl::StatusCode::kUnauthenticated);
    auto stream = client->OpenStream();
    EXPECT_EQ(stream->Predict("cell3-a", obs).status().code(), absl::StatusCode::kUnauthenticated);
    // Health stays open for probes.
    absl::StatusOr<bool> health = client->Health();
    ASSERT_TRUE(health.ok()) << health.status();
    EXPECT_TRUE(*health);
  }
}

TEST_F(SecurityTest, RobotScopedTokenCannotTouchAnotherRobotsSession) {
  auto ops = NewClient(kOpsToken);
  auto cell = NewClient(kCellToken);
  // The other robot's session exists and has advanced one step.
  Observation obs = Obs(*ops, 2);
  PredictOptions episode_e;
  episode_e.episode_id = "e";
  absl::StatusOr<ActionChunk> first = ops->Predict("cell4-a", obs, episode_e);
  ASSERT_TRUE(first.ok()) << first.status();

  absl::StatusOr<ActionChunk> denied = cell->Predict("cell4-a", obs, episode_e);
  EXPECT_EQ(denied.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(denied.status().message(), HasSubstr("cell4-a"));
  EXPECT_THAT(denied.status().message(), ::testing::Not(HasSubstr(kCellToken)));
  EXPECT_EQ(cell->Reset("cell4-a").status().code(), absl::StatusCode::kPermissionDenied);
  // Its own robots work.
  absl::StatusOr<ActionChunk> own = cell->Predict("cell3-a", obs);
  ASSERT_TRUE(own.ok()) << own.status();
  EXPECT_TRUE(cell->Reset("cell3-a").ok());

  // The other robot's episode went on untouched: next step, no restart.
  absl::StatusOr<ActionChunk> second = ops->Predict("cell4-a", obs, episode_e);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_FALSE(second->raw.session_restarted());
  EXPECT_EQ(second->raw.step(), 1u);
}

TEST_F(SecurityTest, StreamAnswersAForeignRobotInBandAndStaysOpen) {
  auto cell = NewClient(kCellToken);
  Observation obs = Obs(*cell, 3);
  auto stream = cell->OpenStream();
  EXPECT_TRUE(stream->Predict("cell3-s", obs).ok());
  EXPECT_EQ(stream->Predict("cell9-s", obs).status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(stream->Predict("cell3-s", obs).ok());
  EXPECT_TRUE(stream->Close().ok());
}

TEST_F(SecurityTest, ClientCertificateIdentityIsBoundToItsRobots) {
  auto arm = NewClient("", /*client_cert=*/true);
  Observation obs = Obs(*arm, 4);
  EXPECT_TRUE(arm->Predict("arm-7", obs).ok());
  EXPECT_EQ(arm->Predict("arm-8", obs).status().code(), absl::StatusCode::kPermissionDenied);
}

// mTLS required, and the server's certificate swapped under the running server.
TEST(SecurityRotationTest, RequiredClientCertsAndCertificateRotationWithoutRestart) {
  const std::string dir = absl::StrCat(::testing::TempDir(), "/specprune_rotation_", getpid());
  fs::remove_all(dir);
  MakePki(dir + "/old", "old-ca");
  MakePki(dir + "/new", "new-ca");
  fs::create_directories(dir + "/live");
  for (const char* f : {"server.pem", "server.key", "ca.pem"}) {
    fs::copy_file(dir + "/old/" + f, dir + "/live/" + f);
  }
  ServerOptions options;
  options.host = "127.0.0.1";
  options.port = 0;
  options.metrics_port = 0;
  options.tls = {.cert_file = dir + "/live/server.pem",
                 .key_file = dir + "/live/server.key",
                 .client_ca_file = dir + "/live/ca.pem",
                 .require_client_cert = true,
                 .refresh_seconds = 1};
  auto server = SpecPruneServer::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  auto client_for = [&](const std::string& pki, bool cert) {
    ClientOptions o;
    o.target = absl::StrCat("localhost:", (*server)->port());
    o.deadline = absl::Seconds(5);
    o.max_attempts = 1;
    o.tls_root_certs_file = pki + "/ca.pem";
    if (cert) {
      o.tls_cert_file = pki + "/client.pem";
      o.tls_key_file = pki + "/client.key";
    }
    return *Client::Create(o);
  };
  EXPECT_TRUE(client_for(dir + "/old", true)->ModelInfo().ok());
  EXPECT_FALSE(client_for(dir + "/old", false)->ModelInfo().ok());  // no client certificate
  EXPECT_FALSE(client_for(dir + "/new", true)->ModelInfo().ok());   // not yet trusted

  // Rotate: new files are written beside the old ones, then renamed over them.
  for (const char* f : {"server.pem", "server.key", "ca.pem"}) {
    fs::copy_file(dir + "/new/" + f, dir + "/live/" + std::string(f) + ".tmp");
    fs::rename(dir + "/live/" + std::string(f) + ".tmp", dir + "/live/" + f);
  }
  bool rotated = false;
  for (int i = 0; i < 40 && !rotated; ++i) {  // the provider re-reads every second
    rotated = client_for(dir + "/new", true)->ModelInfo().ok();
    if (!rotated) absl::SleepFor(absl::Milliseconds(250));
  }
  EXPECT_TRUE(rotated) << "the server did not pick up the new certificate";
  EXPECT_FALSE(client_for(dir + "/old", true)->ModelInfo().ok());
  (*server)->Shutdown(absl::Seconds(1));
  fs::remove_all(dir);
}

TEST(SecurityConfigTest, InconsistentTlsOrBadTokenFileStopsStartNamingTheField) {
  ServerOptions options;
  options.host = "127.0.0.1";
  options.port = 0;
  options.metrics_port = 0;
  options.tls.key_file = "/tmp/x.key";
  EXPECT_THAT(std::string(SpecPruneServer::Start(options).status().message()),
              HasSubstr("tls_cert_file"));
  options.tls = {};
  options.tls.cert_file = "/nonexistent/server.pem";
  options.tls.key_file = "/nonexistent/server.key";
  EXPECT_THAT(std::string(SpecPruneServer::Start(options).status().message()),
              HasSubstr("tls_cert_file"));
  options.tls = {};
  options.auth_tokens_file = "/nonexistent/tokens.json";
  EXPECT_THAT(std::string(SpecPruneServer::Start(options).status().message()),
              HasSubstr("auth_tokens_file"));
}

}  // namespace
}  // namespace specprune
