// The options of a closed-loop evaluation (specprune_eval; its flags set every field).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/vla_model.h"

namespace specprune {

struct EvalOptions {
  std::string model;  // model directory (required)
  std::vector<std::string> suites = {"spatial", "object", "goal", "long"};
  std::vector<std::string> methods = {"none", "specprune", "fastv", "random"};
  int episodes = 10;        // per suite and method
  uint64_t seed = 2000000;  // episode seeds are seed, seed + 1, ...
  std::string json;         // output file ("" = none)
  int execute_steps = 8;    // actions of each chunk executed open loop (OFT: the whole chunk)
  int threads = 2;
  int batch = 64;  // episodes per forward pass
  std::string dtype = "fp32";
  // ModelOptions::sub_batch_cost_rows: a pass's ragged batch splits by length after pruning when
  // that saves more padded rows than this per sub-batch; negative keeps one padded batch.
  int64_t sub_batch_cost_rows = ModelOptions{}.sub_batch_cost_rows;
  bool bucket_gemm_rows = ModelOptions{}.bucket_gemm_rows;  // ModelOptions::bucket_gemm_rows
  // ModelOptions::prune_before_queries
  bool prune_before_queries = ModelOptions{}.prune_before_queries;
  std::string unnorm_key;       // "" = the only / first key
  double keep_ratio = -1;       // > 0: FastV/random keep ratio instead of SpecPrune's retention
  int distractors = -1;         // objects not named by the goal: -1 = suite default, else [0, 4]
  int fixed_tasks = 0;          // 0 = procedural tasks; N = LIBERO-style fixed set (sim/task.h)
  int trace_episode = -1;       // >= 0: per-pass trace of this episode of every cell (stderr)
  double require_success = -1;  // >= 0: exit 3 unless unpruned mean success > this
  // >= 0: exit 3 unless SpecPrune's mean success >= unpruned mean success - this (needs both).
  double require_specprune_within = -1;
  bool reference = true;  // run unpruned reference passes (deviation, recall)
  // > 1: after the evaluation, every (method, suite) cell runs again in rounds 2..N, suite by
  // suite with the methods' order reversed every other round, and the reported forward time per
  // sample is that of these interleaved rounds (the outcomes are round 1's: the same episodes).
  // A side-by-side timing on a shared machine; 1 = one pass over the cells, methods in sequence.
  int timing_rounds = 1;
  // JSON file with a "pruning" object as in the server config (or that object alone), overlaid on
  // the model's default pruning config for every method ("" = the defaults the server uses).
  std::string pruning;
};

}  // namespace specprune
