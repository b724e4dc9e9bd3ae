// The /metrics HTTP endpoint under slow, silent, oversized and too many clients (issue #25).
#include "server/metrics_http.h"

#include <arpa/inet.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"

namespace specprune {
namespace {

using ::testing::HasSubstr;
using Clock = std::chrono::steady_clock;

int Connect(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  EXPECT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  return fd;
}

// Everything the server sends until it closes (bounded by a 20 s receive timeout).
std::string ReadAll(int fd) {
  timeval timeout{20, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  std::string out;
  char buffer[4096];
  ssize_t n;
  while ((n = recv(fd, buffer, sizeof(buffer), 0)) > 0) out.append(buffer, n);
  return out;
}

std::string Get(int port) {
  const int fd = Connect(port);
  const std::string request = "GET /metrics HTTP/1.0\r\n\r\n";
  send(fd, request.data(), request.size(), MSG_NOSIGNAL);
  std::string response = ReadAll(fd);
  close(fd);
  return response;
}

std::unique_ptr<MetricsHttpEndpoint> Start(MetricsHttpOptions options) {
  auto endpoint = MetricsHttpEndpoint::Start(
      "127.0.0.1", 0, [] { return "up 1\n"; }, options);
  EXPECT_TRUE(endpoint.ok()) << endpoint.status();
  return endpoint.ok() ? *std::move(endpoint) : nullptr;
}

double SecondsSince(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

TEST(MetricsHttpTest, SilentClientsDoNotBlockAScrape) {
  auto endpoint = Start({.workers = 3, .max_pending = 4, .io_timeout_ms = 10000});
  ASSERT_NE(endpoint, nullptr);
  const int silent1 = Connect(endpoint->port());
  const int silent2 = Connect(endpoint->port());
  const auto start = Clock::now();
  EXPECT_THAT(Get(endpoint->port()), HasSubstr("200 OK"));
  EXPECT_LT(SecondsSince(start), 5.0);  // not behind the 10 s timeouts of the silent two
  close(silent1);
  close(silent2);
}

TEST(MetricsHttpTest, TricklingClientIsCutOffAtTheTimeout) {
  auto endpoint = Start({.workers = 1, .max_pending = 4, .io_timeout_ms = 300});
  ASSERT_NE(endpoint, nullptr);
  const int fd = Connect(endpoint->port());
  const auto start = Clock::now();
  std::string answer;
  for (int i = 0; i < 50; ++i) {  // one byte every 100 ms: never a complete head
    if (send(fd, "G", 1, MSG_NOSIGNAL) != 1) break;
    char byte;
    if (recv(fd, &byte, 1, MSG_DONTWAIT) == 0) break;  // the server closed
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_LT(SecondsSince(start), 4.0);
  close(fd);
  EXPECT_THAT(Get(endpoint->port()), HasSubstr("200 OK"));  // and it still serves
}

TEST(MetricsHttpTest, OversizeRequestIsRefused) {
  auto endpoint = Start({.workers = 1, .max_pending = 4, .max_request_bytes = 1024});
  ASSERT_NE(endpoint, nullptr);
  const int fd = Connect(endpoint->port());
  const std::string request =
      absl::StrCat("GET /metrics HTTP/1.0\r\nX-Pad: ", std::string(4096, 'a'), "\r\n\r\n");
  send(fd, request.data(), request.size(), MSG_NOSIGNAL);
  EXPECT_THAT(ReadAll(fd), HasSubstr("431"));
  close(fd);
}

TEST(MetricsHttpTest, ConnectionsBeyondTheQueueAreAnswered503) {
  auto endpoint = Start({.workers = 1, .max_pending = 1, .io_timeout_ms = 10000});
  ASSERT_NE(endpoint, nullptr);
  const int busy = Connect(endpoint->port());  // taken by the worker, silent
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  const int queued = Connect(endpoint->port());  // waits in the queue
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  const auto start = Clock::now();
  const int refused = Connect(endpoint->port());
  EXPECT_THAT(ReadAll(refused), HasSubstr("503"));
  EXPECT_LT(SecondsSince(start), 5.0);
  for (int fd : {busy, queued, refused}) close(fd);
}

TEST(MetricsHttpTest, BadOptionsAreRejected) {
  EXPECT_FALSE(MetricsHttpEndpoint::Start("127.0.0.1", 0, [] { return ""; }, {.workers = 0}).ok());
}

}  // namespace
}  // namespace specprune
