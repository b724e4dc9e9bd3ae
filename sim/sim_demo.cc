// specprune_sim_demo: runs the scripted expert on one episode and writes PNG frames.
//
//   specprune_sim_demo [--suite=spatial|object|goal|long] [--seed=N] [--size=64]
//                      [--out=DIR] [--every=K] [--fixed_tasks=N]   (Abseil flags; --help)
// Writes DIR/main_XXXX.png and DIR/wrist_XXXX.png every K steps and at the last step, and prints
// the instruction, the per-step phase summary and the outcome.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "image/image_codec.h"
#include "sim/episode.h"
#include "sim/expert.h"
#include "util/command_line.h"

ABSL_FLAG(std::string, suite, "object", "spatial|object|goal|long");
ABSL_FLAG(uint64_t, seed, 0, "episode seed");
ABSL_FLAG(int, size, 64, "side of the rendered square frames, pixels");
ABSL_FLAG(int, every, 10, "write the frames every K steps (and at the last step); > 0");
ABSL_FLAG(
    int, fixed_tasks, 0,
    "LIBERO's protocol: N fixed tasks per suite, the seed picks one (0: a new task per seed)");
ABSL_FLAG(std::string, out, "/tmp/specprune_sim_demo", "directory of the PNG frames");

namespace {

constexpr char kUsage[] =
    "usage: specprune_sim_demo [--suite=spatial|object|goal|long] [--seed=N] [--size=64]\n"
    "                          [--out=DIR] [--every=K] [--fixed_tasks=N]\n"
    "Runs the scripted expert on one episode, writes DIR/main_XXXX.png and DIR/wrist_XXXX.png\n"
    "every K steps and at the last step, and prints the instruction, the phases and the outcome.";

int Fail(const std::string& message) {
  std::fprintf(stderr, "specprune_sim_demo: %s\n", message.c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  namespace sim = specprune::sim;
  specprune::ParseFlagsOnlyOrExit(argc, argv, kUsage);
  const std::string out = absl::GetFlag(FLAGS_out);
  const uint64_t seed = absl::GetFlag(FLAGS_seed);
  const int size = absl::GetFlag(FLAGS_size);
  const int every = absl::GetFlag(FLAGS_every);
  if (every <= 0) return Fail("--every must be > 0");
  if (absl::GetFlag(FLAGS_fixed_tasks) < 0) return Fail("--fixed_tasks must be >= 0");
  auto suite = sim::ParseSuite(absl::GetFlag(FLAGS_suite));
  if (!suite.ok()) return Fail(suite.status().ToString());
  sim::SimOptions options;
  options.image_size = size;
  options.fixed_tasks = absl::GetFlag(FLAGS_fixed_tasks);
  auto episode = sim::Episode::Create(*suite, seed, options);
  if (!episode.ok()) return Fail(episode.status().ToString());
  if (std::system(absl::StrFormat("mkdir -p '%s'", out).c_str()) != 0) {
    return Fail("cannot create " + out);
  }
  std::printf("suite=%s seed=%llu instruction: %s\n", std::string(SuiteName(*suite)).c_str(),
              static_cast<unsigned long long>(seed), episode->instruction().c_str());

  sim::ScriptedExpert expert(*episode);
  double render_ms = 0;
  int frames = 0;
  const auto save = [&](int step) -> bool {
    const auto t0 = std::chrono::steady_clock::now();
    const specprune::RgbImage main = episode->RenderMain();
    const specprune::RgbImage wrist = episode->RenderWrist();
    render_ms +=
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    frames += 2;
    return specprune::WriteImageFile(absl::StrFormat("%s/main_%04d.png", out, step), main).ok() &&
           specprune::WriteImageFile(absl::StrFormat("%s/wrist_%04d.png", out, step), wrist).ok();
  };
  std::string last_phase;
  int phase_start = 0;
  while (!episode->done()) {
    if (episode->steps() % every == 0 && !save(episode->steps())) return Fail("cannot write PNG");
    const sim::Action action = expert.Act(*episode);
    const std::string phase(sim::ScriptedExpert::PhaseName(expert.phase()));
    if (phase != last_phase) {
      if (!last_phase.empty()) {
        std::printf("  steps %3d-%3d %s\n", phase_start, episode->steps() - 1, last_phase.c_str());
      }
      last_phase = phase;
      phase_start = episode->steps();
    }
    auto result = episode->Step(action);
    if (!result.ok()) return Fail(result.status().ToString());
  }
  std::printf("  steps %3d-%3d %s\n", phase_start, episode->steps() - 1, last_phase.c_str());
  if (!save(episode->steps())) return Fail("cannot write PNG");
  std::printf("success=%d steps=%d frames in %s (%.3f ms per frame)\n", episode->success(),
              episode->steps(), out.c_str(), render_ms / frames);
  return episode->success() ? 0 : 2;
}
