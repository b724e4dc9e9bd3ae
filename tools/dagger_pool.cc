#include "tools/dagger_pool.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "tools/policy_rollout.h"

namespace specprune {

namespace fs = std::filesystem;

absl::Status DaggerPool::Add(std::vector<PolicyTrace> traces) {
  std::vector<Entry> entries;
  for (auto& t : traces) {
    if (t.executed.empty()) continue;
    Entry e;
    auto steps = TraceStepsToLabel(t, image_size_, states_);
    if (!steps.ok()) return steps.status();
    if (steps->empty()) continue;
    e.steps = *std::move(steps);
    e.trace = std::make_shared<const PolicyTrace>(std::move(t));
    entries.push_back(std::move(e));
  }
  std::lock_guard<std::mutex> l(mu_);
  for (auto& e : entries) entries_.push_back(std::move(e));
  while (entries_.size() > capacity_) entries_.pop_front();
  return absl::OkStatus();
}

std::pair<std::shared_ptr<const PolicyTrace>, int> DaggerPool::Sample(std::mt19937_64& rng) const {
  std::lock_guard<std::mutex> l(mu_);
  if (entries_.empty()) return {nullptr, 0};
  std::vector<int> suites;
  for (const Entry& e : entries_) {
    const int s = static_cast<int>(e.trace->spec.suite);
    if (std::find(suites.begin(), suites.end(), s) == suites.end()) suites.push_back(s);
  }
  const int suite = suites[rng() % suites.size()];
  std::vector<const Entry*> of_suite;
  for (const Entry& e : entries_)
    if (static_cast<int>(e.trace->spec.suite) == suite) of_suite.push_back(&e);
  const Entry& e = *of_suite[rng() % of_suite.size()];
  return {e.trace, e.steps[rng() % e.steps.size()]};
}

size_t DaggerPool::size() const {
  std::lock_guard<std::mutex> l(mu_);
  return entries_.size();
}

// Text file, one trace per line: suite seed distractors success n, then n x 7 actions.
absl::Status DaggerPool::Save(const std::string& path) const {
  std::lock_guard<std::mutex> l(mu_);
  std::FILE* f = std::fopen((path + ".tmp").c_str(), "w");
  if (f == nullptr) return absl::InternalError(absl::StrCat("cannot write ", path, ".tmp"));
  for (const Entry& e : entries_) {
    const PolicyTrace* t = e.trace.get();
    std::fprintf(f, "%d %llu %d %d %zu", static_cast<int>(t->spec.suite),
                 static_cast<unsigned long long>(t->spec.seed), t->spec.num_distractors,
                 t->success ? 1 : 0, t->executed.size());
    for (const sim::Action& a : t->executed)
      for (float v : a) std::fprintf(f, " %.9g", v);
    std::fputc('\n', f);
  }
  const bool ok = std::fclose(f) == 0;
  std::error_code ec;
  if (ok) fs::rename(path + ".tmp", path, ec);
  if (!ok || ec) return absl::InternalError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

absl::Status DaggerPool::Load(const std::string& path) {
  std::ifstream f(path);
  if (!f) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::vector<PolicyTrace> loaded;
  int suite, distractors, success;
  unsigned long long seed;
  size_t n;
  while (f >> suite >> seed >> distractors >> success >> n) {
    if (suite < 0 || suite > 3 || n > 100000)
      return absl::DataLossError(absl::StrCat(path, ": bad trace header"));
    PolicyTrace t;
    t.spec.suite = static_cast<sim::Suite>(suite);
    t.spec.seed = seed;
    t.spec.num_distractors = distractors;
    t.success = success != 0;
    t.executed.resize(n);
    for (auto& a : t.executed)
      for (float& v : a)
        if (!(f >> v)) return absl::DataLossError(absl::StrCat(path, ": truncated trace"));
    loaded.push_back(std::move(t));
  }
  return Add(std::move(loaded));
}

absl::StatusOr<std::vector<PolicyTrace>> CollectDaggerTraces(const VlaModel& model,
                                                             const Tokenizer& tok,
                                                             const DatasetStats& stats,
                                                             const TrainOptions& o, int64_t step,
                                                             std::mt19937_64& rng) {
  std::vector<PolicyTrace> traces;
  std::vector<sim::Episode> eps;
  for (int i = 0; i < o.dagger_episodes; ++i) {
    PolicyTrace t;
    t.spec = DrawSpec(o.curriculum, step, rng);
    t.spec.noise_std = 0;
    auto e =
        sim::Episode::Create(t.spec.suite, t.spec.seed,
                             SpecSimOptions(t.spec, static_cast<int>(model.config().image_size)));
    if (!e.ok()) return e.status();
    eps.push_back(*std::move(e));
    traces.push_back(std::move(t));
  }
  RolloutOptions ro;
  ro.record_actions = true;
  auto out = RunPolicyEpisodes(PolicyStep(model, tok), stats, std::move(eps), ro);
  if (!out.ok()) return out.status();
  int runs[4] = {0, 0, 0, 0}, wins[4] = {0, 0, 0, 0};
  for (size_t i = 0; i < traces.size(); ++i) {
    traces[i].executed = std::move((*out)[i].executed);
    traces[i].success = (*out)[i].success;
    const int s = static_cast<int>(traces[i].spec.suite);
    ++runs[s];
    wins[s] += traces[i].success ? 1 : 0;
  }
  std::printf("dagger step %lld rollouts on training seeds:", static_cast<long long>(step));
  for (sim::Suite s : sim::kAllSuites) {
    const int k = static_cast<int>(s);
    std::printf(" %s %d/%d", std::string(sim::SuiteName(s)).c_str(), wins[k], runs[k]);
  }
  std::printf("\n");
  return traces;
}

}  // namespace specprune
