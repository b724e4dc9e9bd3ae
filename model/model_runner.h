// The interface the serving engine runs batches through. VlaModel implements it; tests of the
// batcher/engine plumbing substitute a fake (deterministic, instant, observable) runner.
//
// Thread safety: Forward() may be called concurrently; implementations document otherwise.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/config.h"
#include "pruning/policy.h"

namespace specprune {

struct SampleInput;
struct SampleResult;
struct ForwardTimings;

class ModelRunner {
 public:
  virtual ~ModelRunner() = default;
  virtual const ModelConfig& config() const = 0;
  // Runs one batch; one result per input, in order. Calls each input's pruner as VlaModel does.
  virtual absl::StatusOr<std::vector<SampleResult>> Forward(const std::vector<SampleInput>& batch,
                                                            ForwardTimings* timings) const = 0;
  virtual int64_t parameter_count() const = 0;
  virtual std::string device_name() const = 0;
  virtual std::string dtype_name() const = 0;
};

}  // namespace specprune
