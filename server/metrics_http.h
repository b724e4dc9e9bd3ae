// A minimal HTTP/1.x endpoint that serves one text document at GET /metrics (Prometheus text
// exposition). ServerMetrics (server/metrics.h) owns one and supplies the document; this file only
// speaks HTTP.
//
// Why hand-written: prometheus::Exposer (civetweb) creates its threads with 100 KB stacks, which
// pthread_create rejects in a process whose static TLS is larger (LibTorch + OpenBLAS), so the
// Exposer cannot start in our server.
//
// Behaviour: one thread accepts connections and hands them to `workers` threads through a queue
// of at most `max_pending` connections; beyond it a connection is answered 503 at once, so slow or
// malicious clients cannot stall scrapes (nor pile up memory). Each answer has "Connection:
// close". GET and HEAD of /metrics (a query string is ignored) answer 200 with render()'s text;
// another path answers 404, another method 405, a malformed request line 400, a request head
// larger than `max_request_bytes` 431. The whole request head must arrive within `io_timeout`
// (a client trickling bytes is cut off), and the answer is written with the same bound.
//
// Ownership and thread safety: `render` is called on worker threads, one call at a time, until
// the destructor returns; it must be safe to call concurrently with the owner's other threads.
// The destructor stops the threads (waking them through a pipe) and closes the sockets.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"

namespace specprune {

struct MetricsHttpOptions {
  int workers = 2;                      // threads answering requests
  int max_pending = 16;                 // accepted connections waiting for a worker
  size_t max_request_bytes = 16 << 10;  // request line + headers
  int io_timeout_ms = 5000;             // to receive the request head / to send the answer
};

class MetricsHttpEndpoint {
 public:
  // Listens on `host`:`port` (`host` may be a bracketed IPv6 literal, "[::]"; empty = any
  // address; port 0 picks a free port) and starts the serving thread. InvalidArgument when the
  // host does not resolve, Unavailable when no address can be bound, Internal when the wake-up
  // pipe cannot be created.
  static absl::StatusOr<std::unique_ptr<MetricsHttpEndpoint>> Start(
      const std::string& host, int port, std::function<std::string()> render,
      MetricsHttpOptions options = {});

  ~MetricsHttpEndpoint();
  MetricsHttpEndpoint(const MetricsHttpEndpoint&) = delete;
  MetricsHttpEndpoint& operator=(const MetricsHttpEndpoint&) = delete;

  // The port actually bound.
  int port() const { return port_; }

 private:
  MetricsHttpEndpoint() = default;

  void AcceptLoop();
  void WorkerLoop();
  void Serve(int fd);
  // Reads the request head (up to the blank line) within the I/O timeout; false on timeout,
  // error, close or oversize (then `*oversize` tells which).
  bool ReadHead(int fd, std::string* head, bool* oversize) const;
  void Send(int fd, const std::string& status, const std::string& body, bool with_body) const;

  MetricsHttpOptions options_;
  int listen_fd_ = -1;
  int wake_fds_[2] = {-1, -1};
  int port_ = 0;
  std::function<std::string()> render_;
  std::mutex render_mu_;  // render_ one call at a time

  std::mutex mu_;
  std::condition_variable ready_;
  std::deque<int> pending_ ABSL_GUARDED_BY(mu_);  // accepted fds waiting for a worker
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;

  std::thread accept_thread_;
  std::vector<std::thread> workers_;
};

}  // namespace specprune
