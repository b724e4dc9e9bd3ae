// The formulas of SpecPrune-VLA (docs/ARCHITECTURE.md "SpecPrune") as pure functions on small
// vectors, so that each can be tested by hand. Token sets are std::vector<int64_t> of original
// vision ids (0..P-1, camera-major). Ties are always broken towards the lower id/position, so every
// result is deterministic.
//
// Thread safety: all functions are pure.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "pruning/policy.h"
#include "pruning/pruning_config.h"

namespace specprune {

// Positions of the k largest scores (k clamped to [0, n]), best first; equal scores -> lower
// position first. NaN scores rank last.
std::vector<int64_t> TopKIndices(const std::vector<float>& scores, int64_t k);

// Same, returning ids[position] (ids.size() == scores.size()).
std::vector<int64_t> TopKIds(const std::vector<int64_t>& ids, const std::vector<float>& scores,
                             int64_t k);

// Sorted union without duplicates.
std::vector<int64_t> SortedUnion(const std::vector<std::vector<int64_t>>& sets);

// V_local: union over layers of the top-k ids of each layer's scores (scores in the order of ids).
std::vector<int64_t> LocalSet(const std::vector<int64_t>& ids,
                              const std::vector<std::vector<float>>& layer_scores, int64_t k);

// V_global: the k ids with the largest prior (index = id), among ids with prior > 0 only (a 0
// prior means the token was pruned before the global layers last step: no evidence).
std::vector<int64_t> GlobalSet(const std::vector<float>& prior, int64_t k);

// History offset T = clamp(floor(b + k * v_t) + offset, 1, history_size); 0 when there is no
// history (history_size <= 0). The reference frame is frames[history_size - T] (T = 1: newest).
int HistoryOffset(double v_t, double k, double b, int offset, int history_size);

// V_dynamic: ids whose similarity (index = id) is < tau, lowest similarity first (ties: lower id),
// at most k of them.
std::vector<int64_t> DynamicSet(const std::vector<float>& similarity, double tau, int64_t k);

// Normalized rank rho_i in [0, 1] of each score (0 = largest; ties by position; a single score
// has rho = 0).
std::vector<double> NormalizedRanks(const std::vector<float>& scores);

// omega_rank,i = sigmoid(-k rho_i) / sum_j sigmoid(-k rho_j) (sums to 1; empty in -> empty out).
std::vector<double> RankWeights(const std::vector<float>& scores, double k);

// omega_conf = 1 / (entropy + eps).
double ConfidenceWeight(double entropy, double eps);

// s_i = omega_rank,i * omega_conf.
std::vector<double> InstantScores(const std::vector<float>& scores, double entropy, double k,
                                  double eps);

// In place: S_i <- (1 - beta) S_i + beta s_i (sizes must match).
void EmaUpdate(std::vector<double>* ema, const std::vector<double>& instant, double beta);

// Layer-level pruning: drops the floor(fraction * n) ids with the lowest score (score[i] belongs to
// ids[i]; ties: the higher id goes first), but never below `floor` ids (nor below 0). Returns the
// kept ids in their input order.
std::vector<int64_t> DropLowestFraction(const std::vector<int64_t>& ids,
                                        const std::vector<double>& score, double fraction,
                                        int64_t floor);

// End-effector motion read from the previous normalized action chunk [C, A] (A >= 6):
// per-step deltas d_i are the rows themselves (kDelta) or consecutive row differences (kAbsolute;
// C - 1 deltas, none if C < 2). Then v_t = mean_i ||d_i[0:3]||, v_r = mean_i ||d_i[3:6]||,
// dz = mean_i d_i[2] (all 0 without deltas). Mean speed per step rather than net displacement, so
// back-and-forth motion still counts as motion.
struct Velocity {
  double v_t = 0.0;
  double v_r = 0.0;
  double dz = 0.0;
};
absl::StatusOr<Velocity> VelocityFromChunk(const torch::Tensor& chunk,
                                           ActionRepresentation representation);

// Fine iff v_t < v_t_th and v_r < v_r_th and dz <= dz_max; else coarse.
ControllerMode ModeForVelocity(const Velocity& v, double v_t_threshold, double v_r_threshold,
                               double dz_max);

// K multiplier of a mode: coarse -> coarse_scale, fine -> fine_scale, none -> 1.
double ModeScale(ControllerMode mode, const SpecPruneConfig& config);

// round(k * scale) clamped to [0, max_k].
int64_t ScaleK(int64_t k, double scale, int64_t max_k);

// Scans column config.gripper_column of a normalized chunk [C, A] row by row (closed/open as in
// SpecPruneConfig). *closed_rows counts consecutive closed rows, carried over from previous chunks:
// it grows on a closed row and resets to 0 on an open one. Returns true iff some open row followed
// at least config.release_min_closed_rows closed ones (a release). Only the first
// config.executed_rows rows are scanned when it is > 0 (the rest are never executed). A chunk
// without that column (or not 2-d) changes nothing and returns false.
bool TrackGripperRelease(const torch::Tensor& chunk, const SpecPruneConfig& config,
                         int64_t* closed_rows);

// |A ∩ B| / |B| (1 when B is empty). Duplicates are ignored.
double Recall(const std::vector<int64_t>& a, const std::vector<int64_t>& b);

}  // namespace specprune
