#include "tools/batch_producer.h"

#include <algorithm>
#include <map>
#include <random>
#include <tuple>
#include <utility>

#include "tools/demonstrations.h"

namespace specprune {

BatchProducer::BatchProducer(const TrainOptions& o, const ModelConfig& c, const Tokenizer& tok,
                             const DatasetStats& stats, std::atomic<int64_t>* step,
                             const DaggerPool* pool)
    : o_(o), c_(c), tok_(tok), stats_(stats), step_(step), pool_(pool) {
  for (int i = 0; i < o.data_threads; ++i)
    threads_.emplace_back([this, i] { Run(o_.seed * 1000 + i + 17 * step_->load()); });
}

BatchProducer::~BatchProducer() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  for (auto& t : threads_) t.join();
}

absl::StatusOr<BcBatch> BatchProducer::Next() {
  std::unique_lock<std::mutex> l(mu_);
  cv_.wait(l, [&] { return !queue_.empty() || !error_.ok(); });
  if (!error_.ok()) return error_;
  BcBatch b = std::move(queue_.front());
  queue_.pop_front();
  cv_.notify_all();
  return b;
}

void BatchProducer::Run(uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::map<std::tuple<int, uint64_t, int, float>, DemoSummary> demos;
  while (true) {
    std::vector<RawSample> raw;
    while (static_cast<int>(raw.size()) < o_.batch) {
      if (pool_ != nullptr && o_.dagger_frac > 0 &&
          std::uniform_real_distribution<double>(0, 1)(rng) < o_.dagger_frac) {
        if (auto [trace, t] = pool_->Sample(rng); trace != nullptr) {
          auto r = MakeTraceSample(*trace, t, static_cast<int>(c_.chunk_size),
                                   static_cast<int>(c_.image_size));
          if (!r.ok()) return Fail(r.status());
          raw.push_back(*std::move(r));
          continue;
        }
      }
      EpisodeSpec s = DrawSpec(o_.curriculum, step_->load(), rng);
      auto key = std::make_tuple(static_cast<int>(s.suite), s.seed, s.num_distractors, s.noise_std);
      auto it = demos.find(key);
      if (it == demos.end()) {
        auto d = RunDemo(s, static_cast<int>(c_.image_size));
        if (!d.ok()) return Fail(d.status());
        it = demos.emplace(key, *std::move(d)).first;
      }
      const DemoSummary& demo = it->second;
      if (!demo.success || demo.length == 0) continue;
      int t = static_cast<int>(rng() % static_cast<uint64_t>(demo.length));
      if (std::uniform_real_distribution<double>(0, 1)(rng) < o_.early_frac &&
          !demo.goal_starts.empty()) {
        const int start = demo.goal_starts[rng() % demo.goal_starts.size()];
        const int span = std::max(1, std::min(o_.early_steps, demo.length - start));
        t = start + static_cast<int>(rng() % static_cast<uint64_t>(span));
      }
      auto r =
          MakeRawSample(s, t, static_cast<int>(c_.chunk_size), static_cast<int>(c_.image_size));
      if (!r.ok()) return Fail(r.status());
      raw.push_back(*std::move(r));
    }
    auto b = MakeBatch(raw, c_, tok_, stats_, o_.max_shift, &rng);
    if (!b.ok()) return Fail(b.status());
    std::unique_lock<std::mutex> l(mu_);
    cv_.wait(l, [&] { return queue_.size() < 4 || stop_; });
    if (stop_) return;
    queue_.push_back(*std::move(b));
    cv_.notify_all();
  }
}

void BatchProducer::Fail(absl::Status s) {
  std::lock_guard<std::mutex> l(mu_);
  error_ = s;
  cv_.notify_all();
}

}  // namespace specprune
