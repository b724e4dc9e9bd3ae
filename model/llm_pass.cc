#include "model/llm_pass.h"

#include <algorithm>
#include <chrono>

#include "absl/strings/str_cat.h"
#include "util/status_macros.h"

namespace specprune {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// The attention-statistics query of one layer: per sample, the query rows its pruner wants
// (StatsWanted) and the rows of its vision tokens, and those query rows on the host (`spans`).
// False when no pruner wants statistics.
bool BuildStatsQuery(const std::vector<SampleRows>& rows, const std::vector<StatsRows>& wanted,
                     const torch::Device& device, AttentionStatsQuery* query,
                     std::vector<StatsRowSpan>* spans) {
  const int64_t bsz = static_cast<int64_t>(rows.size());
  if (std::all_of(wanted.begin(), wanted.end(), [](StatsRows w) { return w == StatsRows::kNone; }))
    return false;
  int64_t r_max = 1, v_max = 1;
  for (int64_t b = 0; b < bsz; ++b) {
    if (wanted[b] == StatsRows::kText) r_max = std::max(r_max, rows[b].prompt_len);
    if (wanted[b] == StatsRows::kActionReadout) r_max = std::max(r_max, rows[b].action_tokens);
    v_max = std::max<int64_t>(v_max, rows[b].vision_ids.size());
  }
  // Filled through raw pointers: per-row tensor ops would cost more than the layer's statistics.
  auto qrows = torch::zeros({bsz, r_max}, torch::kLong);
  auto rvalid = torch::zeros({bsz, r_max}, torch::kBool);
  auto vrows = torch::full({bsz, v_max}, -1, torch::kLong);
  int64_t* q = qrows.data_ptr<int64_t>();
  bool* valid = rvalid.data_ptr<bool>();
  int64_t* vis = vrows.data_ptr<int64_t>();
  for (int64_t b = 0; b < bsz; ++b) {
    const int64_t nv = static_cast<int64_t>(rows[b].vision_ids.size());
    for (int64_t j = 0; j < nv; ++j) vis[b * v_max + j] = 1 + j;
    int64_t first = rows[b].length() - 1, m = 1;  // kLast (and samples that want nothing)
    if (wanted[b] == StatsRows::kText && rows[b].prompt_len > 0) {
      first = rows[b].prompt_begin();
      m = rows[b].prompt_len;
    } else if (wanted[b] == StatsRows::kActionReadout && rows[b].action_tokens > 0) {
      first = rows[b].readout_begin();
      m = rows[b].action_tokens;
    }
    for (int64_t i = 0; i < m; ++i) {
      q[b * r_max + i] = first + i;
      valid[b * r_max + i] = true;
    }
    spans->push_back({first, m, nv});
  }
  query->query_rows = qrows.to(device);
  query->row_valid = rvalid.to(device);
  query->vision_rows = vrows.to(device);
  return true;
}

// Asks sample b's pruner which vision tokens go on after `layer`. Updates rows.vision_ids and
// returns the rows of the current layout that are kept (empty = unchanged).
absl::StatusOr<std::vector<int64_t>> KeptRows(SamplePruner& pruner, int64_t layer,
                                              const LayerAttentionStats* stats, SampleRows& rows) {
  auto& ids = rows.vision_ids;
  auto keep = pruner.AfterLayer(static_cast<int>(layer), ids, stats);
  if (!keep.has_value()) return std::vector<int64_t>{};
  // Vision ids are original patch indices, so a table indexed by id replaces a hash map.
  int64_t max_id = -1;
  for (int64_t id : ids) max_id = std::max(max_id, id);
  std::vector<int64_t> row_of(max_id + 1, -1);
  for (size_t i = 0; i < ids.size(); ++i)
    if (ids[i] >= 0) row_of[ids[i]] = static_cast<int64_t>(i);
  std::vector<int64_t> kept_pos;
  kept_pos.reserve(keep->size());
  for (int64_t id : *keep) {
    if (id < 0 || id > max_id || row_of[id] < 0)
      return absl::InternalError(absl::StrCat("pruner kept vision token ", id,
                                              " that is not present (or kept twice) at layer ",
                                              layer));
    kept_pos.push_back(row_of[id]);
    row_of[id] = -1;
  }
  if (kept_pos.size() == ids.size()) return std::vector<int64_t>{};
  std::sort(kept_pos.begin(), kept_pos.end());
  const int64_t old_length = rows.length();
  std::vector<int64_t> kept_rows = {0}, new_ids;
  new_ids.reserve(kept_pos.size());
  for (int64_t pos : kept_pos) {
    kept_rows.push_back(1 + pos);
    new_ids.push_back(ids[pos]);
  }
  for (int64_t row = 1 + static_cast<int64_t>(ids.size()); row < old_length; ++row)
    kept_rows.push_back(row);
  ids = std::move(new_ids);
  return kept_rows;
}

}  // namespace

absl::StatusOr<std::vector<SubBatch>> LlmPass::RunLayer(int64_t l, std::vector<SubBatch> subs) {
  const auto start = Clock::now();
  std::vector<LayerQuery> queries;
  queries.reserve(subs.size());
  for (const auto& sub : subs) queries.push_back(PrepareLayer(l, sub));
  auto next = SplitsAt(l, subs) ? RunSplitLayer(l, std::move(subs), queries)
                                : RunWholeLayer(l, std::move(subs), queries);
  if (static_cast<int64_t>(layer_seconds.size()) <= l) layer_seconds.resize(l + 1, 0.0);
  layer_seconds[l] += Seconds(start, Clock::now());
  return next;
}

absl::StatusOr<std::vector<SubBatch>> LlmPass::RunWholeLayer(int64_t l, std::vector<SubBatch> subs,
                                                             std::vector<LayerQuery>& queries) {
  Forward(l, subs, queries);
  const auto layer_end = Clock::now();
  for (const auto& q : queries) pruning_seconds += q.stats.seconds;
  std::vector<SubBatch> next;
  for (size_t s = 0; s < subs.size(); ++s)
    SP_RETURN_IF_ERROR(Prune(l, std::move(subs[s]), queries[s], &next));
  pruning_seconds += Seconds(layer_end, Clock::now());
  return next;
}

LlmPass::LayerQuery LlmPass::PrepareLayer(int64_t l, const SubBatch& sub) {
  const int64_t n = static_cast<int64_t>(sub.samples.size());
  const auto& rows = sub.rb.rows;
  LayerQuery q;
  const auto start = Clock::now();
  q.wanted.assign(n, StatsRows::kNone);
  for (int64_t i = 0; i < n; ++i)
    if (pruner(sub, i) != nullptr) q.wanted[i] = pruner(sub, i)->StatsWanted(static_cast<int>(l));
  q.any_stats = BuildStatsQuery(rows, q.wanted, device_, &q.query, &q.spans);
  pruning_seconds += Seconds(start, Clock::now());
  for (int64_t i = 0; i < n; ++i) {
    const int64_t b = sub.samples[i];
    results_[b].vision_tokens_per_layer.push_back(static_cast<int32_t>(rows[i].vision_ids.size()));
    tokens_per_layer[b].push_back(rows[i].length());
    valid_row_layers += rows[i].length();
  }
  row_layers += n * sub.rb.max_length();
  return q;
}

std::vector<AttentionSegment> LlmPass::Segments(const std::vector<SubBatch>& subs,
                                                std::vector<LayerQuery>& queries) const {
  std::vector<AttentionSegment> segments;
  for (size_t s = 0; s < subs.size(); ++s) {
    const auto& sub = subs[s];
    auto& q = queries[s];
    segments.push_back({.batch = sub.rb.hidden.size(0),
                        .length = sub.rb.max_length(),
                        .rope = &sub.rope,
                        .bias = sub.bias,
                        .key_valid = sub.rb.valid,
                        .query = q.any_stats ? &q.query : nullptr,
                        .stats = q.any_stats ? &q.stats : nullptr});
  }
  return segments;
}

void LlmPass::Forward(int64_t l, std::vector<SubBatch>& subs, std::vector<LayerQuery>& queries) {
  auto& layer = *lm_.layer_list[l];
  for (const auto& sub : subs) {
    const int64_t n = sub.rb.hidden.size(0), t = sub.rb.max_length();
    attention_scores += n * layer.self_attn->heads * t * t;
    query_row_layers += n * t;
  }
  if (subs.size() == 1 && !bucket_rows_) {
    auto& sub = subs[0];
    auto& q = queries[0];
    sub.rb.hidden =
        layer.forward(sub.rb.hidden, sub.rope, sub.bias, sub.rb.valid,
                      q.any_stats ? &q.query : nullptr, q.any_stats ? &q.stats : nullptr);
    gemm_row_layers += sub.rb.hidden.size(0) * sub.rb.hidden.size(1);
    packed_output_ = torch::Tensor();
    return;
  }
  const auto segments = Segments(subs, queries);
  int64_t rows = 0;
  for (const auto& seg : segments) rows += seg.rows();
  const int64_t padded_rows = bucket_rows_ ? GemmRowBucket(rows) : rows;
  gemm_row_layers += padded_rows;
  packed_output_ = layer.ForwardPacked(PackedInput(subs, padded_rows), segments);
  const int64_t d = packed_output_.size(1);
  int64_t offset = 0;
  for (size_t s = 0; s < subs.size(); ++s) {
    const auto& seg = segments[s];
    subs[s].rb.hidden =
        packed_output_.narrow(0, offset, seg.rows()).view({seg.batch, seg.length, d});
    offset += seg.rows();
  }
}

bool LlmPass::SplitsAt(int64_t l, const std::vector<SubBatch>& subs) const {
  if (!prune_before_queries_ || l + 1 >= static_cast<int64_t>(lm_.layer_list.size())) return false;
  for (const auto& sub : subs)
    for (size_t i = 0; i < sub.samples.size(); ++i)
      if (pruner(sub, i) != nullptr && pruner(sub, i)->MayPruneAfter(static_cast<int>(l)))
        return true;
  return false;
}

absl::StatusOr<std::vector<SubBatch>> LlmPass::RunSplitLayer(int64_t l, std::vector<SubBatch> subs,
                                                             std::vector<LayerQuery>& queries) {
  auto& layer = *lm_.layer_list[l];
  const auto segments = Segments(subs, queries);
  std::vector<int64_t> offsets;  // each segment's first row in the packed input
  int64_t rows = 0;
  for (const auto& seg : segments) {
    offsets.push_back(rows);
    rows += seg.rows();
  }
  const int64_t padded_rows = bucket_rows_ ? GemmRowBucket(rows) : rows;
  gemm_row_layers += padded_rows;
  const auto x = PackedInput(subs, padded_rows);
  const LayerKeys keys = layer.ForwardKeys(x, segments);
  const auto decide_start = Clock::now();
  for (const auto& q : queries) pruning_seconds += q.stats.seconds;

  // Decide; the repacks gather the input rows that go on (their hidden state is replaced below).
  std::vector<SubBatch> next;
  std::vector<int64_t> key_segment;  // per sub-batch of `next`
  const int64_t d = x.size(1);
  for (size_t s = 0; s < subs.size(); ++s) {
    const auto& seg = segments[s];
    subs[s].rb.hidden = x.narrow(0, offsets[s], seg.rows()).view({seg.batch, seg.length, d});
    subs[s].source_rows = torch::Tensor();
    subs[s].source_samples.clear();
    SP_RETURN_IF_ERROR(Prune(l, std::move(subs[s]), queries[s], &next));
    key_segment.resize(next.size(), static_cast<int64_t>(s));
  }
  std::vector<QuerySegment> query_segments;
  int64_t query_rows = 0;
  const auto long_opts = torch::TensorOptions().dtype(torch::kLong).device(device_);
  for (size_t j = 0; j < next.size(); ++j) {
    const auto& sub = next[j];
    const int64_t s = key_segment[j];
    QuerySegment qs;
    qs.batch = sub.rb.hidden.size(0);
    qs.length = sub.rb.max_length();
    qs.rope = &sub.rope;
    qs.key_segment = s;
    qs.source_rows = sub.source_rows.defined()
                         ? sub.source_rows.reshape({-1}) + offsets[s]
                         : torch::arange(offsets[s], offsets[s] + qs.rows(), long_opts);
    if (!sub.source_samples.empty())
      qs.key_samples = torch::tensor(sub.source_samples, torch::kLong).to(device_);
    int64_t attended_rows = qs.rows();
    if (keys.stats_output[s].defined() && sub.source_rows.defined())
      attended_rows = ReuseStatsRows(queries[s], sub, &qs);
    attention_scores += attended_rows * layer.self_attn->heads * segments[s].length;
    query_rows += qs.rows();
    query_segments.push_back(std::move(qs));
  }
  for (size_t s = 0; s < segments.size(); ++s)
    if (keys.stats_output[s].defined())
      attention_scores += keys.stats_output[s].size(0) * keys.stats_output[s].size(1) *
                          layer.self_attn->heads * segments[s].length;
  query_row_layers += query_rows;
  const auto queries_start = Clock::now();
  pruning_seconds += Seconds(decide_start, queries_start);
  packed_output_ = layer.ForwardQueries(keys, segments, query_segments,
                                        bucket_rows_ ? GemmRowBucket(query_rows) : query_rows);
  int64_t offset = 0;
  for (auto& sub : next) {
    const int64_t n = sub.rb.hidden.size(0), t = sub.rb.max_length();
    sub.rb.hidden = packed_output_.narrow(0, offset, n * t).view({n, t, d});
    offset += n * t;
  }
  return next;
}

int64_t LlmPass::ReuseStatsRows(const LayerQuery& q, const SubBatch& sub, QuerySegment* qs) const {
  const int64_t n = qs->batch, length = qs->length;
  const int64_t r_max = q.query.query_rows.size(1);
  std::vector<int64_t> reused_rows, reused_sources;
  std::vector<std::vector<int64_t>> attend(n);
  std::vector<char> reused(length);
  size_t longest = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t old_i = sub.source_samples.empty() ? i : sub.source_samples[i];
    const auto& rows = sub.rb.rows[i];
    // Pruning removes vision rows [1, 1 + vision) only: the rows after them move up together.
    const StatsRowSpan span = q.spans[old_i];
    const int64_t old_nv = span.vision, shift = old_nv - rows.vision_ids.size();
    std::fill(reused.begin(), reused.end(), 0);
    for (int64_t r = 0; r < span.count; ++r) {
      const int64_t old_row = span.first + r;
      if (old_row > 0 && old_row <= old_nv) continue;  // a vision row: attended again
      const int64_t row = old_row == 0 ? 0 : old_row - shift;
      if (row >= rows.length() || reused[row]) continue;
      reused[row] = 1;
      reused_rows.push_back(i * length + row);
      reused_sources.push_back(old_i * r_max + r);
    }
    for (int64_t row = 0; row < rows.length(); ++row)
      if (!reused[row]) attend[i].push_back(row);
    if (attend[i].empty()) return qs->rows();  // nothing left to attend: no reuse
    longest = std::max(longest, attend[i].size());
  }
  if (reused_rows.empty()) return qs->rows();
  auto positions = torch::empty({n, static_cast<int64_t>(longest)}, torch::kLong);
  int64_t* p = positions.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i)
    for (size_t j = 0; j < longest; ++j)
      p[i * longest + j] = attend[i][j < attend[i].size() ? j : 0];
  qs->attend_positions = positions.to(device_);
  qs->reused_rows = torch::tensor(reused_rows, torch::kLong).to(device_);
  qs->reused_sources = torch::tensor(reused_sources, torch::kLong).to(device_);
  return n * static_cast<int64_t>(longest);
}

torch::Tensor LlmPass::PackedInput(const std::vector<SubBatch>& subs, int64_t padded_rows) const {
  if (packed_output_.defined() && packed_output_.size(0) == padded_rows) {
    const int64_t row_bytes = packed_output_.size(1) * packed_output_.element_size();
    const char* base = static_cast<const char*>(packed_output_.data_ptr());
    int64_t offset = 0;
    bool in_place = true;
    for (const auto& sub : subs) {
      const auto& h = sub.rb.hidden;
      in_place = in_place && h.is_contiguous() && h.data_ptr() == base + offset * row_bytes;
      offset += h.size(0) * h.size(1);
    }
    if (in_place) return packed_output_;  // its padding rows are still zero (no biases)
  }
  const int64_t d = subs[0].rb.hidden.size(2);
  auto packed = torch::empty({padded_rows, d}, subs[0].rb.hidden.options());
  int64_t offset = 0;
  for (const auto& sub : subs) {
    const int64_t rows = sub.rb.hidden.size(0) * sub.rb.hidden.size(1);
    packed.narrow(0, offset, rows).view(sub.rb.hidden.sizes()).copy_(sub.rb.hidden);
    offset += rows;
  }
  if (offset < padded_rows) packed.narrow(0, offset, padded_rows - offset).zero_();
  return packed;
}

absl::Status LlmPass::Prune(int64_t l, SubBatch sub, const LayerQuery& q,
                            std::vector<SubBatch>* next) {
  const int64_t n = static_cast<int64_t>(sub.samples.size());
  auto& rows = sub.rb.rows;
  const int64_t num_layers = static_cast<int64_t>(lm_.layer_list.size());
  bool repack = false;
  std::vector<std::vector<int64_t>> keep_rows(n);
  torch::Tensor cpu_scores, cpu_entropy;
  if (q.any_stats) {
    cpu_scores = q.stats.scores.to(torch::kCPU, torch::kFloat32);
    cpu_entropy = q.stats.entropy.to(torch::kCPU, torch::kFloat32).contiguous();
  }
  for (int64_t i = 0; i < n; ++i) {
    if (pruner(sub, i) == nullptr) continue;
    LayerAttentionStats layer_stats;
    const LayerAttentionStats* stats_ptr = nullptr;
    if (q.wanted[i] != StatsRows::kNone) {
      const int64_t nv = static_cast<int64_t>(rows[i].vision_ids.size());
      layer_stats.scores = cpu_scores.select(0, i).slice(0, 0, nv);  // fresh per layer: a view
      layer_stats.vision_entropy = cpu_entropy.data_ptr<float>()[i];
      stats_ptr = &layer_stats;
    }
    if (l + 1 == num_layers) {  // the pruner still sees the last layer; nothing is removed
      pruner(sub, i)->AfterLayer(static_cast<int>(l), rows[i].vision_ids, stats_ptr);
      continue;
    }
    auto kept = KeptRows(*pruner(sub, i), l, stats_ptr, rows[i]);
    if (!kept.ok()) return kept.status();
    keep_rows[i] = *std::move(kept);
    repack = repack || !keep_rows[i].empty();
  }
  if (repack) {
    Repack(std::move(sub), keep_rows, next);
  } else {
    next->push_back(std::move(sub));
  }
  return absl::OkStatus();
}

void LlmPass::Repack(SubBatch sub, const std::vector<std::vector<int64_t>>& keep_rows,
                     std::vector<SubBatch>* next) const {
  std::vector<int64_t> lengths;
  for (const auto& r : sub.rb.rows) lengths.push_back(r.length());
  const auto groups = GroupByLength(lengths, sub_batch_cost_rows_);
  if (groups.size() == 1) {
    sub.source_rows = RepackBatch(keep_rows, &sub.rb);
    sub.source_samples.clear();
    sub.rope = GatherRope(sub.rope, sub.source_rows);
    sub.bias = KeyPaddingBias(sub.rb.valid, dtype_);
    next->push_back(std::move(sub));
    return;
  }
  for (const auto& group : groups) {
    SubBatch part;
    std::vector<std::vector<int64_t>> keep;
    for (int64_t i : group) {
      part.samples.push_back(sub.samples[i]);
      keep.push_back(keep_rows[i]);
    }
    RepackedBatch repacked = RepackSamples(sub.rb, group, keep);
    part.rb = std::move(repacked.batch);
    part.rope = GatherRope(sub.rope, repacked.flat_rows);
    part.bias = KeyPaddingBias(part.rb.valid, dtype_);
    part.source_rows = std::move(repacked.flat_rows);
    part.source_samples = group;
    next->push_back(std::move(part));
  }
}

}  // namespace specprune
