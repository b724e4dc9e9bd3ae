// A minimal HTTP/1.x endpoint that serves one text document at GET /metrics (Prometheus text
// exposition). ServerMetrics (server/metrics.h) owns one and supplies the document; this file only
// speaks HTTP.
//
// Why hand-written: prometheus::Exposer (civetweb) creates its threads with 100 KB stacks, which
// pthread_create rejects in a process whose static TLS is larger (LibTorch + OpenBLAS), so the
// Exposer cannot start in our server.
//
// Behaviour: one thread accepts connections and answers them one at a time (Prometheus scrapes
// are rare and small), each with "Connection: close". GET and HEAD of /metrics (a query string is
// ignored) answer 200 with render()'s text; another path answers 404, another method 405, a
// malformed request line 400. A request is read up to its blank line or 16 KiB; reads and writes
// time out after 5 s.
//
// Ownership and thread safety: `render` is called on the endpoint's thread, one call at a time,
// until the destructor returns; it must be safe to call concurrently with the owner's other
// threads. The destructor stops the thread (waking it through a pipe) and closes the sockets.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"

namespace specprune {

class MetricsHttpEndpoint {
 public:
  // Listens on `host`:`port` (`host` may be a bracketed IPv6 literal, "[::]"; empty = any
  // address; port 0 picks a free port) and starts the serving thread. InvalidArgument when the
  // host does not resolve, Unavailable when no address can be bound, Internal when the wake-up
  // pipe cannot be created.
  static absl::StatusOr<std::unique_ptr<MetricsHttpEndpoint>> Start(
      const std::string& host, int port, std::function<std::string()> render);

  ~MetricsHttpEndpoint();
  MetricsHttpEndpoint(const MetricsHttpEndpoint&) = delete;
  MetricsHttpEndpoint& operator=(const MetricsHttpEndpoint&) = delete;

  // The port actually bound.
  int port() const { return port_; }

 private:
  MetricsHttpEndpoint() = default;

  void Loop();
  void Serve(int fd);
  static void Send(int fd, const std::string& status, const std::string& body, bool with_body);

  int listen_fd_ = -1;
  int wake_fds_[2] = {-1, -1};
  int port_ = 0;
  std::function<std::string()> render_;
  std::thread thread_;
};

}  // namespace specprune
