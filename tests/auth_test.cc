#include "server/auth.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace specprune {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using json = nlohmann::json;

std::unique_ptr<Authorizer> Make(const json& j) {
  absl::StatusOr<std::unique_ptr<Authorizer>> auth = Authorizer::FromJson(j);
  EXPECT_TRUE(auth.ok()) << auth.status();
  return auth.ok() ? *std::move(auth) : nullptr;
}

json FleetFile() {
  return {{"tokens",
           {{{"name", "cell-3"},
             {"sha256", Authorizer::Sha256Hex("s3cret-cell3")},
             {"robots", {"cell3-*"}}},
            {{"name", "ops"}, {"sha256", Authorizer::Sha256Hex("ops-token")}, {"robots", {"*"}}}}},
          {"identities", {{{"name", "arm-7"}, {"identity", "arm-7"}, {"robots", {"arm-7"}}}}}};
}

TEST(AuthTest, Sha256HexIsTheStandardDigest) {
  EXPECT_EQ(Authorizer::Sha256Hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(AuthTest, KnownTokenGetsItsGrant) {
  auto auth = Make(FleetFile());
  ASSERT_NE(auth, nullptr);
  absl::StatusOr<AuthGrant> grant = auth->Authenticate("s3cret-cell3", {});
  ASSERT_TRUE(grant.ok()) << grant.status();
  EXPECT_EQ(grant->name, "cell-3");
  EXPECT_TRUE(Authorizer::Authorize(*grant, "cell3-left").ok());
  const absl::Status denied = Authorizer::Authorize(*grant, "cell4-left");
  EXPECT_EQ(denied.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(denied.message(), HasSubstr("robot_id \"cell4-left\""));
  EXPECT_THAT(denied.message(), HasSubstr("\"cell-3\""));
  EXPECT_THAT(denied.message(), Not(HasSubstr("s3cret")));
}

TEST(AuthTest, MissingOrUnknownTokenIsUnauthenticated) {
  auto auth = Make(FleetFile());
  ASSERT_NE(auth, nullptr);
  EXPECT_EQ(auth->Authenticate(std::nullopt, {}).status().code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(auth->Authenticate("s3cret-cell", {}).status().code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(auth->Authenticate("", {}).status().code(), absl::StatusCode::kUnauthenticated);
  // A wrong token is not rescued by a matching certificate identity.
  EXPECT_EQ(auth->Authenticate("wrong", {"arm-7"}).status().code(),
            absl::StatusCode::kUnauthenticated);
}

TEST(AuthTest, CertificateIdentityGrantsWithoutAToken) {
  auto auth = Make(FleetFile());
  ASSERT_NE(auth, nullptr);
  absl::StatusOr<AuthGrant> grant = auth->Authenticate(std::nullopt, {"other", "arm-7"});
  ASSERT_TRUE(grant.ok()) << grant.status();
  EXPECT_EQ(grant->name, "arm-7");
  EXPECT_TRUE(Authorizer::Authorize(*grant, "arm-7").ok());
  EXPECT_FALSE(Authorizer::Authorize(*grant, "arm-70").ok());  // globs match the whole id
  EXPECT_EQ(auth->Authenticate(std::nullopt, {"arm-8"}).status().code(),
            absl::StatusCode::kUnauthenticated);
}

TEST(AuthTest, PatternsAreShellGlobs) {
  const AuthGrant grant{"g", {"lab?-arm", "cell[12]-*"}};
  EXPECT_TRUE(Authorizer::Authorize(grant, "lab1-arm").ok());
  EXPECT_TRUE(Authorizer::Authorize(grant, "cell2-x").ok());
  EXPECT_FALSE(Authorizer::Authorize(grant, "lab12-arm").ok());
  EXPECT_FALSE(Authorizer::Authorize(grant, "cell3-x").ok());
}

TEST(AuthTest, BearerTokenParsing) {
  EXPECT_EQ(Authorizer::BearerToken("Bearer abc"), "abc");
  EXPECT_EQ(Authorizer::BearerToken("bearer  abc "), "abc");
  EXPECT_EQ(Authorizer::BearerToken("Basic abc"), std::nullopt);
  EXPECT_EQ(Authorizer::BearerToken("Bearer "), std::nullopt);
  EXPECT_EQ(Authorizer::BearerToken("abc"), std::nullopt);
}

TEST(AuthTest, BadFilesAreErrorsNamingTheField) {
  auto error = [](const json& j) {
    absl::StatusOr<std::unique_ptr<Authorizer>> auth = Authorizer::FromJson(j);
    EXPECT_FALSE(auth.ok()) << j.dump();
    return auth.ok() ? std::string() : std::string(auth.status().message());
  };
  EXPECT_THAT(error(json::object()), HasSubstr("no tokens and no identities"));
  EXPECT_THAT(error(json::array()), HasSubstr("token file: must be a JSON object"));
  EXPECT_THAT(error({{"bogus", 1}}), HasSubstr("bogus: unknown field"));
  EXPECT_THAT(error({{"tokens", {{{"name", "a"}, {"sha256", "abc"}, {"robots", {"*"}}}}}}),
              HasSubstr("tokens[0].sha256: must be 64 hex digits"));
  EXPECT_THAT(
      error(
          {{"tokens",
            {{{"name", "a"}, {"sha256", Authorizer::Sha256Hex("t")}, {"robots", json::array()}}}}}),
      HasSubstr("tokens[0].robots: must list at least one"));
  EXPECT_THAT(error({{"tokens", {{{"sha256", Authorizer::Sha256Hex("t")}, {"robots", {"*"}}}}}}),
              HasSubstr("tokens[0].name"));
  EXPECT_THAT(error({{"identities", {{{"name", "a"}, {"robots", {"*"}}}}}}),
              HasSubstr("identities[0].identity"));
  EXPECT_THAT(std::string(Authorizer::FromFile("/nonexistent/tokens.json").status().message()),
              HasSubstr("/nonexistent/tokens.json"));
}

}  // namespace
}  // namespace specprune
