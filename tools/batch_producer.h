// The training batches of specprune_train, made ahead on background threads (bounded queue):
// demos drawn by the curriculum at the current step (and, with DAgger, states of the pool's
// traces), labelled and converted (MakeBatch with shift augmentation).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "model/dataset_stats.h"
#include "model/tokenizer.h"
#include "model/vla_model.h"
#include "tools/bc_batch.h"
#include "tools/dagger_pool.h"
#include "tools/train_options.h"

namespace specprune {

// Starts o.data_threads producer threads (seeded from o.seed and the step at construction); the
// destructor stops and joins them. `step` is the training loop's step counter (the curriculum's
// stage); `pool` (may be null: no DAgger samples). Every reference must outlive the producer.
class BatchProducer {
 public:
  BatchProducer(const TrainOptions& o, const ModelConfig& c, const Tokenizer& tok,
                const DatasetStats& stats, std::atomic<int64_t>* step, const DaggerPool* pool);
  ~BatchProducer();
  BatchProducer(const BatchProducer&) = delete;
  BatchProducer& operator=(const BatchProducer&) = delete;

  // The next batch (blocks until one is ready), or the first error a producer thread met.
  absl::StatusOr<BcBatch> Next();

 private:
  void Run(uint64_t seed);
  void Fail(absl::Status s);

  const TrainOptions& o_;
  const ModelConfig& c_;
  const Tokenizer& tok_;
  const DatasetStats& stats_;
  std::atomic<int64_t>* step_;
  const DaggerPool* pool_;  // may be null
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<BcBatch> queue_;
  bool stop_ = false;
  absl::Status error_;
  std::vector<std::thread> threads_;
};

}  // namespace specprune
