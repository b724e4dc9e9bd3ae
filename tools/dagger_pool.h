// DAgger for specprune_train: the pool of the policy's own closed-loop traces whose visited states
// the expert labels (TrainOptions::dagger_*), and the rollouts that fill it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "model/dataset_stats.h"
#include "model/tokenizer.h"
#include "model/vla_model.h"
#include "tools/demonstrations.h"
#include "tools/train_options.h"

namespace specprune {

// DAgger aggregate of policy traces (TrainOptions::dagger_*): at most `capacity` traces, the
// oldest dropped. Thread-safe: the training loop adds, the batch producer samples.
class DaggerPool {
 public:
  // `states`: the steps of a trace that are sampled (TrainOptions::dagger_states).
  DaggerPool(size_t capacity, int image_size, LabelledStates states)
      : capacity_(capacity), image_size_(image_size), states_(states) {}

  // Adds the traces that have steps to label. Errors: a trace that does not replay.
  absl::Status Add(std::vector<PolicyTrace> traces);

  // A trace and a step to label, or a null trace while the pool is empty. The suite is drawn
  // uniformly among those in the pool (failed `long` rollouts are long and many, and would
  // otherwise dominate), then a trace of it, then one of its eligible steps.
  std::pair<std::shared_ptr<const PolicyTrace>, int> Sample(std::mt19937_64& rng) const;

  size_t size() const;

  // Text file, one trace per line: suite seed distractors success n, then n x 7 actions. Written
  // to path.tmp, then renamed.
  absl::Status Save(const std::string& path) const;

  // Adds the traces of a file Save wrote. Errors: NotFound, DataLoss for a malformed file.
  absl::Status Load(const std::string& path);

 private:
  struct Entry {
    std::shared_ptr<const PolicyTrace> trace;
    std::vector<int> steps;  // the steps that may be sampled (TraceStepsToLabel)
  };
  const size_t capacity_;
  const int image_size_;
  const LabelledStates states_;
  mutable std::mutex mu_;
  std::deque<Entry> entries_;
};

// One DAgger round: the policy drives `o.dagger_episodes` training episodes drawn as the
// curriculum draws demos at `step` (without execution noise). Returns the traces; prints the
// per-suite success (a closed-loop check on training seeds, with more episodes than ClosedLoop).
absl::StatusOr<std::vector<PolicyTrace>> CollectDaggerTraces(const VlaModel& model,
                                                             const Tokenizer& tok,
                                                             const DatasetStats& stats,
                                                             const TrainOptions& o, int64_t step,
                                                             std::mt19937_64& rng);

}  // namespace specprune
