// The consumer of tests/install_test.sh: links the installed C++ SDK (specprune::client) and runs
// health, model info and one Predict with a synthetic image per camera against a server.
//   consumer HOST:PORT
// Prints "consumer ok chunk=<rows>x<dims> retained=<tokens>" and exits 0, or the error and 1.
#include <cstdint>
#include <cstdio>
#include <utility>
#include <vector>

#include "client/cpp/client.h"

namespace {

int Fail(const char* what, const absl::Status& status) {
  std::fprintf(stderr, "consumer: %s: %s\n", what, status.ToString().c_str());
  return 1;
}

// A deterministic gradient, height x width RGB.
specprune::RgbImage SyntheticImage(int height, int width) {
  specprune::RgbImage image;
  image.height = height;
  image.width = width;
  image.pixels.resize(static_cast<size_t>(height) * width * 3);
  for (size_t i = 0; i < image.pixels.size(); ++i) image.pixels[i] = static_cast<uint8_t>(i % 251);
  return image;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s HOST:PORT\n", argv[0]);
    return 2;
  }
  specprune::ClientOptions options;
  options.target = argv[1];
  options.deadline = absl::Seconds(60);
  auto client = specprune::Client::Create(options);
  if (!client.ok()) return Fail("create", client.status());

  absl::StatusOr<bool> serving = (*client)->Health();
  if (!serving.ok()) return Fail("health", serving.status());
  if (!*serving) return Fail("health", absl::UnavailableError("server is not SERVING"));

  absl::StatusOr<specprune::v1::ModelInfo> info = (*client)->ModelInfo();
  if (!info.ok()) return Fail("model info", info.status());

  specprune::Observation obs;
  for (const std::string& camera : info->cameras()) {
    obs.images.push_back({camera, SyntheticImage(info->image_height(), info->image_width()), ""});
  }
  obs.instruction = "put the red block on the plate";
  obs.proprio.assign(info->proprio_dim(), 0.0f);
  specprune::PredictOptions predict_options;
  predict_options.episode_id = "consumer-episode";
  absl::StatusOr<specprune::ActionChunk> chunk =
      (*client)->Predict("consumer-robot", obs, predict_options);
  if (!chunk.ok()) return Fail("predict", chunk.status());
  if (chunk->chunk_size != static_cast<int>(info->chunk_size()) ||
      chunk->action_dim != static_cast<int>(info->action_dim())) {
    return Fail("predict", absl::InternalError("chunk shape differs from ModelInfo"));
  }
  std::printf("consumer ok chunk=%dx%d retained=%u\n", chunk->chunk_size, chunk->action_dim,
              chunk->raw.retained_vision_tokens());
  return 0;
}
