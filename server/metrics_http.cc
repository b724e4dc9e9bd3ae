#include "server/metrics_http.h"

#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"

namespace specprune {

absl::StatusOr<std::unique_ptr<MetricsHttpEndpoint>> MetricsHttpEndpoint::Start(
    const std::string& host, int port, std::function<std::string()> render,
    MetricsHttpOptions options) {
  if (options.workers < 1 || options.max_pending < 1 || options.io_timeout_ms < 1) {
    return absl::InvalidArgumentError("metrics exporter: workers, max_pending, io_timeout >= 1");
  }
  auto endpoint = std::unique_ptr<MetricsHttpEndpoint>(new MetricsHttpEndpoint());
  endpoint->render_ = std::move(render);
  endpoint->options_ = options;
  const std::string where = absl::StrCat(host, ":", port);
  std::string bind_host = host;
  if (bind_host.size() >= 2 && bind_host.front() == '[' && bind_host.back() == ']') {
    bind_host = bind_host.substr(1, bind_host.size() - 2);
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* addrs = nullptr;
  const std::string service = absl::StrCat(port);
  const int gai =
      getaddrinfo(bind_host.empty() ? nullptr : bind_host.c_str(), service.c_str(), &hints, &addrs);
  if (gai != 0) {
    return absl::InvalidArgumentError(absl::StrCat("metrics bind address \"", where,
                                                   "\": cannot resolve host: ", gai_strerror(gai)));
  }
  std::string error = "no usable address";
  for (addrinfo* a = addrs; a != nullptr; a = a->ai_next) {
    const int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) {
      error = std::strerror(errno);
      continue;
    }
    const int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, a->ai_addr, a->ai_addrlen) == 0 && listen(fd, 16) == 0) {
      endpoint->listen_fd_ = fd;
      break;
    }
    error = std::strerror(errno);
    close(fd);
  }
  freeaddrinfo(addrs);
  if (endpoint->listen_fd_ < 0) {
    return absl::UnavailableError(
        absl::StrCat("metrics exporter cannot listen on ", where, ": ", error));
  }
  sockaddr_storage bound{};
  socklen_t len = sizeof(bound);
  getsockname(endpoint->listen_fd_, reinterpret_cast<sockaddr*>(&bound), &len);
  endpoint->port_ =
      ntohs(bound.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port
                                        : reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  if (pipe2(endpoint->wake_fds_, O_CLOEXEC) != 0) {
    return absl::InternalError(
        absl::StrCat("metrics exporter: cannot create a pipe: ", std::strerror(errno)));
  }
  MetricsHttpEndpoint* self = endpoint.get();
  for (int i = 0; i < options.workers; ++i) {
    endpoint->workers_.emplace_back([self] { self->WorkerLoop(); });
  }
  endpoint->accept_thread_ = std::thread([self] { self->AcceptLoop(); });
  return endpoint;
}

MetricsHttpEndpoint::~MetricsHttpEndpoint() {
  if (accept_thread_.joinable()) {
    const char byte = 0;
    while (write(wake_fds_[1], &byte, 1) < 0 && errno == EINTR) {
    }
    accept_thread_.join();
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  ready_.notify_all();
  for (std::thread& worker : workers_) worker.join();
  for (int fd : pending_) close(fd);
  for (int fd : {listen_fd_, wake_fds_[0], wake_fds_[1]}) {
    if (fd >= 0) close(fd);
  }
}

void MetricsHttpEndpoint::AcceptLoop() {
  for (;;) {
    pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {wake_fds_[0], POLLIN, 0}};
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (fds[1].revents != 0) return;
    if ((fds[0].revents & POLLIN) == 0) continue;
    const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) continue;
    bool queued = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (static_cast<int>(pending_.size()) < options_.max_pending) {
        pending_.push_back(fd);
        queued = true;
      }
    }
    if (queued) {
      ready_.notify_one();
    } else {  // every worker busy and the queue full: refuse now rather than wait
      Send(fd, "503 Service Unavailable", "busy\n", true);
      close(fd);
    }
  }
}

void MetricsHttpEndpoint::WorkerLoop() {
  for (;;) {
    int fd = -1;
    {
      std::unique_lock<std::mutex> lock(mu_);
      ready_.wait(
          lock, [this]() ABSL_NO_THREAD_SAFETY_ANALYSIS { return stopping_ || !pending_.empty(); });
      if (stopping_) return;
      fd = pending_.front();
      pending_.pop_front();
    }
    Serve(fd);
    close(fd);
  }
}

bool MetricsHttpEndpoint::ReadHead(int fd, std::string* head, bool* oversize) const {
  *oversize = false;
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::milliseconds(options_.io_timeout_ms);
  char buffer[2048];
  while (head->find("\r\n\r\n") == std::string::npos) {
    if (head->size() > options_.max_request_bytes) {
      *oversize = true;
      return false;
    }
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return false;
    pollfd p{fd, POLLIN, 0};
    const int ready = poll(&p, 1, static_cast<int>(left.count()));
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0) return false;
    const ssize_t n = recv(fd, buffer, sizeof(buffer), 0);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n <= 0) return !head->empty();  // the client closed: answer what arrived
    head->append(buffer, static_cast<size_t>(n));
  }
  return true;
}

void MetricsHttpEndpoint::Serve(int fd) {
  std::string request;
  bool oversize = false;
  if (!ReadHead(fd, &request, &oversize)) {
    if (oversize) Send(fd, "431 Request Header Fields Too Large", "request too large\n", true);
    return;  // timed out or closed: nothing to answer
  }
  const std::string line = request.substr(0, request.find("\r\n"));
  const size_t sp1 = line.find(' ');
  const size_t sp2 = line.find(' ', sp1 == std::string::npos ? 0 : sp1 + 1);
  if (sp1 == std::string::npos || sp2 == std::string::npos) {
    Send(fd, "400 Bad Request", "bad request\n", true);
    return;
  }
  const std::string method = line.substr(0, sp1);
  std::string path = line.substr(sp1 + 1, sp2 - sp1 - 1);
  path = path.substr(0, path.find('?'));
  if (method != "GET" && method != "HEAD") {
    Send(fd, "405 Method Not Allowed", "only GET is supported\n", true);
  } else if (path != "/metrics") {
    Send(fd, "404 Not Found", "metrics are served at /metrics\n", method == "GET");
  } else {
    std::string body;
    {
      std::lock_guard<std::mutex> lock(render_mu_);
      body = render_();
    }
    Send(fd, "200 OK", body, method == "GET");
  }
}

void MetricsHttpEndpoint::Send(int fd, const std::string& status, const std::string& body,
                               bool with_body) const {
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::milliseconds(options_.io_timeout_ms);
  std::string out = absl::StrCat("HTTP/1.1 ", status,
                                 "\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
                                 "Content-Length: ",
                                 body.size(), "\r\nConnection: close\r\n\r\n");
  if (with_body) out += body;
  size_t sent = 0;
  while (sent < out.size()) {
    const ssize_t n = send(fd, out.data() + sent, out.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) {  // a client that does not read: wait, within the bound
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      pollfd p{fd, POLLOUT, 0};
      if (left.count() <= 0 || poll(&p, 1, static_cast<int>(left.count())) <= 0) return;
      continue;
    }
    if (n <= 0) return;
    sent += static_cast<size_t>(n);
  }
}

}  // namespace specprune
