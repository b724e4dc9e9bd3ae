// The one-shot modes of specprune_train: --check_demos (the expert's success per suite and
// noise), --benchmark (fp32 vs bf16 step time and data throughput) and --diagnose (step 0 of the
// evaluation's seeds read through the checkpoint's training heads).
#pragma once

#include <atomic>
#include <cstdint>

#include "absl/status/status.h"
#include "model/dataset_stats.h"
#include "model/tokenizer.h"
#include "model/vla_model.h"
#include "tools/train_options.h"
#include "tools/training_heads.h"

namespace specprune {

// --check_demos: prints the expert's success and mean length per suite, noise and distractors over
// o.check_demos seeds.
absl::Status CheckDemos(const TrainOptions& o);

// --benchmark: times o.benchmark optimizer steps on one batch in fp32 and under bf16 autocast, then
// the data pipeline on one thread. Changes the weights (a throwaway run).
absl::Status Benchmark(const TrainOptions& o, VlaModule& module, Heads& heads, const ModelConfig& c,
                       const Tokenizer& tok, const DatasetStats& stats,
                       torch::optim::Optimizer& opt, std::atomic<int64_t>* step);

// --diagnose: per suite, step 0 of o.diagnose episodes from o.diagnose_seed: the patch and
// attribute probes, expert vs model first action and grounding head, and in the scenes the colour
// word decides whether the head, the motion and the mention / colour-word rows' attention point at
// the goal's object rather than its look-alikes. No gradients; leaves the module in eval mode.
absl::Status Diagnose(const TrainOptions& o, VlaModule& module, Heads& heads, const ModelConfig& c,
                      const Tokenizer& tok, const DatasetStats& stats);

}  // namespace specprune
