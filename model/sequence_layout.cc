#include "model/sequence_layout.h"

#include <algorithm>
#include <limits>
#include <numeric>
#include <tuple>
#include <utility>

#include "kernels/ops.h"

namespace specprune {

SampleRows SampleRows::Unpruned(int64_t vision_tokens, int64_t prompt_len, int64_t action_tokens) {
  SampleRows rows;
  rows.vision_ids.resize(vision_tokens);
  std::iota(rows.vision_ids.begin(), rows.vision_ids.end(), 0);
  rows.prompt_len = prompt_len;
  rows.action_tokens = action_tokens;
  return rows;
}

torch::Tensor SampleSequence(const torch::Tensor& vision, const torch::Tensor& proprio,
                             const torch::Tensor& prompt, int64_t action_tokens) {
  const int64_t m = prompt.size(0) - 2;
  const auto dt = vision.scalar_type();  // autocast may have produced bf16 activations
  return torch::cat({prompt.slice(0, 0, 1).to(dt), vision, proprio.unsqueeze(0).to(dt),
                     prompt.slice(0, 1, 1 + m).to(dt),
                     torch::zeros({action_tokens, vision.size(-1)}, vision.options()),
                     prompt.slice(0, 1 + m, 2 + m).to(dt)});
}

torch::Tensor ValidRows(const std::vector<SampleRows>& rows, int64_t max_length,
                        const torch::Device& device) {
  const int64_t bsz = static_cast<int64_t>(rows.size());
  auto valid = torch::zeros({bsz, max_length}, torch::kBool);
  bool* v = valid.data_ptr<bool>();
  for (int64_t b = 0; b < bsz; ++b)
    std::fill(v + b * max_length, v + b * max_length + std::min(rows[b].length(), max_length),
              true);
  return valid.to(device);
}

RaggedBatch AssembleBatch(const std::vector<torch::Tensor>& sequences, std::vector<SampleRows> rows,
                          const torch::Device& device) {
  const int64_t bsz = static_cast<int64_t>(rows.size());
  int64_t t_max = 0;
  for (const auto& r : rows) t_max = std::max(t_max, r.length());
  RaggedBatch batch;
  batch.hidden =
      torch::zeros({bsz, t_max, sequences.front().size(-1)}, sequences.front().options());
  auto positions = torch::zeros({bsz, t_max}, torch::kLong);
  for (int64_t b = 0; b < bsz; ++b) {
    const int64_t len = rows[b].length();
    batch.hidden[b].slice(0, 0, len).copy_(sequences[b]);
    positions[b].slice(0, 0, len).copy_(torch::arange(len, torch::kLong));
  }
  batch.positions = positions.to(device);
  batch.valid = ValidRows(rows, t_max, device);
  batch.rows = std::move(rows);
  return batch;
}

RepackedBatch RepackSamples(const RaggedBatch& batch, const std::vector<int64_t>& samples,
                            const std::vector<std::vector<int64_t>>& keep_rows) {
  const int64_t n = static_cast<int64_t>(samples.size());
  const int64_t old_max = batch.max_length();
  RepackedBatch out;
  out.batch.rows.reserve(n);
  int64_t new_max = 0;
  for (int64_t b : samples) {
    out.batch.rows.push_back(batch.rows[b]);
    new_max = std::max(new_max, batch.rows[b].length());
  }
  // Built through a raw pointer (per-sample tensor ops cost more than the copy itself), the flat
  // rows followed by the lengths, so that one transfer takes both to the device.
  auto host = torch::empty({n * new_max + n}, torch::kLong);
  int64_t* f = host.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    const int64_t base = samples[i] * old_max;
    const int64_t length = out.batch.rows[i].length();
    int64_t* row = f + i * new_max;
    if (keep_rows[i].empty()) {
      for (int64_t t = 0; t < length; ++t) row[t] = base + t;
    } else {
      for (int64_t t = 0; t < length; ++t) row[t] = base + keep_rows[i][t];
    }
    std::fill(row + length, row + new_max, base);
    f[n * new_max + i] = length;
  }
  const auto on_device = host.to(batch.hidden.device());
  out.flat_rows = on_device.narrow(0, 0, n * new_max).view({n, new_max});
  std::tie(out.batch.hidden, out.batch.positions, out.batch.valid) = compact_rows(
      batch.hidden, batch.positions, out.flat_rows, on_device.narrow(0, n * new_max, n));
  return out;
}

torch::Tensor RepackBatch(const std::vector<std::vector<int64_t>>& keep_rows, RaggedBatch* batch) {
  std::vector<int64_t> all(batch->rows.size());
  std::iota(all.begin(), all.end(), 0);
  RepackedBatch repacked = RepackSamples(*batch, all, keep_rows);
  *batch = std::move(repacked.batch);
  return repacked.flat_rows;
}

int64_t GemmRowBucket(int64_t rows) {
  if (rows < 64) return rows;
  int top = 0;
  while ((rows >> (top + 1)) != 0) ++top;  // floor(log2(rows)) >= 6
  const int64_t step = int64_t{1} << (top - 5);
  return (rows + step - 1) / step * step;
}

std::vector<std::vector<int64_t>> GroupByLength(const std::vector<int64_t>& lengths,
                                                int64_t sub_batch_cost_rows) {
  const int64_t n = static_cast<int64_t>(lengths.size());
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  if (sub_batch_cost_rows < 0 || n < 2) return {order};
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return lengths[a] > lengths[b]; });
  // cost[j]: the cheapest partition of the j longest samples; its last sub-batch starts at
  // first[j] (a sub-batch of sorted samples i..j-1 is as long as sample i).
  std::vector<int64_t> cost(n + 1, 0), first(n + 1, 0);
  for (int64_t j = 1; j <= n; ++j) {
    cost[j] = std::numeric_limits<int64_t>::max();
    for (int64_t i = 0; i < j; ++i) {
      const int64_t c = cost[i] + (j - i) * lengths[order[i]] + sub_batch_cost_rows;
      if (c < cost[j]) {
        cost[j] = c;
        first[j] = i;
      }
    }
  }
  std::vector<std::vector<int64_t>> groups;
  for (int64_t j = n; j > 0; j = first[j]) {
    std::vector<int64_t> group(order.begin() + first[j], order.begin() + j);
    std::sort(group.begin(), group.end());
    groups.push_back(std::move(group));
  }
  std::reverse(groups.begin(), groups.end());
  return groups;
}

torch::Tensor ReadoutRows(const std::vector<SampleRows>& rows, const torch::Device& device) {
  const int64_t bsz = static_cast<int64_t>(rows.size());
  const int64_t a = bsz > 0 ? rows.front().action_tokens : 0;
  auto read = torch::zeros({bsz, a}, torch::kLong);
  for (int64_t b = 0; b < bsz; ++b) {
    const int64_t first = rows[b].readout_begin();
    read[b].copy_(torch::arange(first, first + a, torch::kLong));
  }
  return read.to(device);
}

std::pair<torch::Tensor, torch::Tensor> PromptRows(const std::vector<SampleRows>& rows,
                                                   const torch::Device& device) {
  const int64_t bsz = static_cast<int64_t>(rows.size());
  int64_t m_max = 1;
  for (const auto& r : rows) m_max = std::max(m_max, r.prompt_len);
  auto text_rows = torch::zeros({bsz, m_max}, torch::kLong);
  auto text_valid = torch::zeros({bsz, m_max}, torch::kFloat32);
  for (int64_t b = 0; b < bsz; ++b) {
    const int64_t m = rows[b].prompt_len;
    if (m == 0) continue;
    const int64_t first = rows[b].prompt_begin();
    text_rows[b].slice(0, 0, m).copy_(torch::arange(first, first + m, torch::kLong));
    text_valid[b].slice(0, 0, m).fill_(1.0f);
  }
  return {text_rows.to(device), text_valid.to(device)};
}

}  // namespace specprune
