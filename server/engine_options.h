// Options of the inference engine (server/engine.h). Their in-class defaults, and those of the
// structs they hold, are the server's built-in defaults: server/server_config.h exposes them as
// config-file keys and flags without repeating them.
#pragma once

#include <cstddef>

#include "absl/time/time.h"
#include "server/batcher.h"
#include "server/request_validation.h"
#include "server/session_store.h"

namespace specprune {

struct EngineOptions {
  BatcherOptions batcher;      // max batch size, queue delay, queue bound
  int preprocess_threads = 2;  // image decode/resize pool
  // Requests of one robot waiting behind its running step; more are RESOURCE_EXHAUSTED (a robot
  // controller has at most one step in flight; this bounds a misbehaving client).
  size_t max_pending_per_robot = 8;
  SessionStoreOptions sessions;  // LRU bound and idle TTL
  ValidationLimits limits;       // request limits (cameras etc. are filled from the model)
  absl::Duration maintenance_period = absl::Seconds(1);  // session expiry + gauges
};

}  // namespace specprune
