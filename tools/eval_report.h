// The report of a closed-loop evaluation (specprune_eval): a cell's JSON record, its diagnostic
// lines on stderr, and the results table with the run's JSON document.
#pragma once

#include <string>
#include <vector>

#include "nlohmann/json.hpp"
#include "pruning/pruning_config.h"
#include "tools/eval_cell.h"
#include "tools/eval_options.h"

namespace specprune {

// One cell as JSON; `none_sps`: the unpruned method's forward seconds per sample on the same
// suite (0 = unknown: no speedup).
nlohmann::json CellJson(const Cell& c, double none_sps);

// The cell's success, failure modes, colour-decided scenes, commonest wrong grasps and attention
// grounding, on stderr.
void PrintCellDiagnostics(const Cell& cell);

// Prints the results table (every cell, then each method pooled over suites, in `methods` order)
// on stdout and returns the run's JSON document (options, `pruning` defaults, matched keep ratio
// (<= 0: none), wall time, results and summary).
nlohmann::json ReportResults(const EvalOptions& o, const PruningConfig& pruning,
                             const std::vector<Cell>& cells,
                             const std::vector<PruningMethod>& methods, double matched_keep,
                             double wall_seconds);

}  // namespace specprune
