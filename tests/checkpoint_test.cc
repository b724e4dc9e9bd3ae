// Model directories: safetensors round trips, errors naming the problem, streamed writing, and
// loading in bounded memory. The PyTorch .pt side files: torch_pickle_test.cc.
#include "model/checkpoint.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>

#include "model/flops.h"
#include "model/safetensors.h"
#include "tests/checkpoint_test_fixture.h"

namespace specprune {
namespace {
namespace fs = std::filesystem;
using testing_support::CheckpointTest;

TEST_F(CheckpointTest, RoundTripGivesIdenticalForward) {
  auto loaded = LoadModelDir(dir_.string(), {.seed = 99});  // different init, then overwritten
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  auto a = model_->Forward({Sample()});
  auto b = loaded->model->Forward({Sample()});
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_TRUE(torch::equal((*a)[0].normalized_actions, (*b)[0].normalized_actions));
  EXPECT_EQ(loaded->stats.keys(), std::vector<std::string>{"test"});
  EXPECT_GT(loaded->tokenizer->vocab_size(), 0);
}

TEST_F(CheckpointTest, Bf16CheckpointLoadsIntoFp32Model) {
  auto bf = dir_ / "bf16";
  ASSERT_TRUE(SaveWeights(*model_, bf.string(), "bf16").ok());
  fs::copy_file(dir_ / "tokenizer.model", bf / "tokenizer.model");
  fs::copy_file(dir_ / "dataset_statistics.json", bf / "dataset_statistics.json");
  auto loaded = LoadModelDir(bf.string(), {});
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  auto a = model_->Forward({Sample()});
  auto b = loaded->model->Forward({Sample()});
  EXPECT_TRUE(torch::allclose((*a)[0].normalized_actions, (*b)[0].normalized_actions, 0.1, 0.1));
}

TEST_F(CheckpointTest, MissingTensorIsListedByName) {
  EditBackbone([](std::vector<TensorView>& v) {
    v.erase(std::remove_if(v.begin(), v.end(),
                           [](const TensorView& t) {
                             return t.name == "language_model.model.layers.3.mlp.up_proj.weight";
                           }),
            v.end());
  });
  auto loaded = LoadModelDir(dir_.string(), {});
  ASSERT_FALSE(loaded.ok());
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(loaded.status().message().find("1 missing: language_model.model.layers.3.mlp.up_proj"),
            std::string::npos)
      << loaded.status();
}

TEST_F(CheckpointTest, UnexpectedAndMisshapedTensorsAreListedTogether) {
  std::vector<float> extra(4, 1.0f);
  EditBackbone([&](std::vector<TensorView>& v) {
    TensorView t;
    t.name = "language_model.model.layers.99.bogus";
    t.shape = {4};
    t.data = reinterpret_cast<const uint8_t*>(extra.data());
    t.nbytes = 16;
    v.push_back(t);
    for (auto& x : v)
      if (x.name == "projector.fc3.bias") {
        x.shape = {x.shape[0] / 2, 2};
      }
  });
  auto loaded = LoadModelDir(dir_.string(), {});
  ASSERT_FALSE(loaded.ok());
  const std::string msg(loaded.status().message());
  EXPECT_NE(msg.find("unexpected: language_model.model.layers.99.bogus"), std::string::npos) << msg;
  EXPECT_NE(msg.find("mis-shaped: projector.fc3.bias"), std::string::npos) << msg;
}

TEST_F(CheckpointTest, UnsupportedDtypeIsReported) {
  EditBackbone([](std::vector<TensorView>& v) {
    for (auto& x : v)
      if (x.name == "projector.fc1.bias") x.dtype = DType::kI32;
  });
  auto loaded = LoadModelDir(dir_.string(), {});
  ASSERT_FALSE(loaded.ok());
  EXPECT_NE(loaded.status().message().find("unsupported dtype: projector.fc1.bias (I32)"),
            std::string::npos)
      << loaded.status();
}

TEST_F(CheckpointTest, TruncatedFileIsAnErrorNotACrash) {
  const auto p = dir_ / "model.safetensors";
  fs::resize_file(p, fs::file_size(p) / 2);
  auto loaded = LoadModelDir(dir_.string(), {});
  ASSERT_FALSE(loaded.ok());
  EXPECT_NE(loaded.status().message().find("model.safetensors"), std::string::npos);
}

TEST_F(CheckpointTest, BadConfigJsonNamesTheProblem) {
  { std::ofstream(dir_ / "config.json") << "{not json"; }
  auto loaded = LoadModelDir(dir_.string(), {});
  ASSERT_FALSE(loaded.ok());
  EXPECT_NE(loaded.status().message().find("invalid JSON"), std::string::npos);
  { std::ofstream(dir_ / "config.json") << R"({"specprune": {"name": "tiny", "chunk_size": -1}})"; }
  loaded = LoadModelDir(dir_.string(), {});
  ASSERT_FALSE(loaded.ok());
  EXPECT_NE(loaded.status().message().find("chunk_size"), std::string::npos) << loaded.status();
}

TEST_F(CheckpointTest, MissingSideFileAndDirectoryAreClearErrors) {
  fs::remove(dir_ / "action_head--specprune.safetensors");
  auto loaded = LoadModelDir(dir_.string(), {});
  EXPECT_NE(loaded.status().message().find("action_head--*.safetensors"), std::string::npos)
      << loaded.status();
  EXPECT_EQ(LoadModelDir("/nonexistent/model", {}).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(CheckpointTest, ModulePrefixInSideFilesIsStripped) {
  auto path = dir_ / "proprio_projector--specprune.safetensors";
  auto f = SafetensorsFile::Open(path.string());
  ASSERT_TRUE(f.ok());
  std::vector<TensorView> views;
  std::vector<std::vector<uint8_t>> keep;
  for (const auto& n : (*f)->names()) {
    TensorView v = *(*f)->Find(n);
    keep.emplace_back(v.data, v.data + v.nbytes);
    v.data = keep.back().data();
    v.name = "module." + v.name;
    views.push_back(v);
  }
  f->reset();
  ASSERT_TRUE(WriteSafetensors(path.string(), views).ok());
  auto loaded = LoadModelDir(dir_.string(), {});
  EXPECT_TRUE(loaded.ok()) << loaded.status();
}

// ---- Writing
// -------------------------------------------------------------------------------------

std::map<std::string, std::string> AllTensorBytes(const fs::path& dir) {
  std::map<std::string, std::string> out;
  auto backbone = ShardedSafetensors::Open(dir.string());
  EXPECT_TRUE(backbone.ok()) << backbone.status();
  if (!backbone.ok()) return out;
  for (const auto& n : (*backbone)->names()) {
    const TensorView* v = (*backbone)->Find(n);
    out[n] = std::string(reinterpret_cast<const char*>(v->data), v->nbytes);
  }
  for (const char* side :
       {"action_head--specprune.safetensors", "proprio_projector--specprune.safetensors"}) {
    auto f = SafetensorsFile::Open((dir / side).string());
    EXPECT_TRUE(f.ok()) << f.status();
    if (!f.ok()) continue;
    for (const auto& n : (*f)->names()) {
      const TensorView* v = (*f)->Find(n);
      out[std::string(side) + ":" + n] =
          std::string(reinterpret_cast<const char*>(v->data), v->nbytes);
    }
  }
  return out;
}

TEST_F(CheckpointTest, RandomCheckpointStreamsSubmodulesIntoShardsAndEqualsTheWholeModel) {
  // model_ is VlaModel::Create(tiny, seed 3); the streamed writer must reproduce it.
  const fs::path out = dir_ / "streamed";
  CheckpointWriteOptions options;
  options.max_shard_bytes = 256 << 10;
  auto stats = WriteRandomCheckpoint(config_, 3, out.string(), options);
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->parameters, model_->parameter_count());
  EXPECT_GT(stats->shards, 2);
  EXPECT_LT(stats->largest_unit_parameters, stats->parameters / 3);
  EXPECT_TRUE(fs::exists(out / "model.safetensors.index.json"));
  EXPECT_FALSE(fs::exists(out / "model.safetensors"));
  fs::copy_file(dir_ / "tokenizer.model", out / "tokenizer.model");
  fs::copy_file(dir_ / "dataset_statistics.json", out / "dataset_statistics.json");
  auto loaded = LoadModelDir(out.string(), {.seed = 99});
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  auto a = model_->Forward({Sample()});
  auto b = loaded->model->Forward({Sample()});
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_TRUE(torch::equal((*a)[0].normalized_actions, (*b)[0].normalized_actions));
  EXPECT_EQ(AllTensorBytes(out), AllTensorBytes(dir_));

  // Rewriting the directory as one file removes the earlier shards and index.
  ASSERT_TRUE(WriteRandomCheckpoint(config_, 3, out.string(), {}).ok());
  EXPECT_TRUE(fs::exists(out / "model.safetensors"));
  EXPECT_FALSE(fs::exists(out / "model.safetensors.index.json"));
  for (const auto& e : fs::directory_iterator(out))
    EXPECT_EQ(e.path().filename().string().rfind("model-", 0), std::string::npos) << e.path();
  EXPECT_EQ(AllTensorBytes(out), AllTensorBytes(dir_));
  // Sharded SaveWeights of a model in memory reads back identically too.
  const fs::path saved = dir_ / "saved";
  ASSERT_TRUE(SaveWeights(*model_, saved.string(), options).ok());
  EXPECT_TRUE(fs::exists(saved / "model.safetensors.index.json"));
  EXPECT_EQ(AllTensorBytes(saved), AllTensorBytes(dir_));
}

TEST_F(CheckpointTest, DeviceInitCheckpointEqualsTheModelBuiltWithDeviceInit) {
  CheckpointWriteOptions options;
  options.dtype = "bf16";
  options.init = ParameterInit::kRandomOnDevice;
  options.device = "cpu";
  const fs::path streamed = dir_ / "device_init";
  auto stats = WriteRandomCheckpoint(config_, 3, streamed.string(), options);
  ASSERT_TRUE(stats.ok()) << stats.status();
  auto model = VlaModel::Create(
      config_, {.dtype = "bf16", .seed = 3, .init = ParameterInit::kRandomOnDevice});
  ASSERT_TRUE(model.ok()) << model.status();
  const fs::path saved = dir_ / "device_init_saved";
  ASSERT_TRUE(SaveWeights(**model, saved.string(), "bf16").ok());
  EXPECT_EQ(AllTensorBytes(streamed), AllTensorBytes(saved));
  // Other values than torch::nn's (the default init's checkpoint in the same dtype).
  const fs::path nn = dir_ / "nn_init_bf16";
  ASSERT_TRUE(WriteRandomCheckpoint(config_, 3, nn.string(), {.dtype = "bf16"}).ok());
  EXPECT_NE(AllTensorBytes(streamed), AllTensorBytes(nn));
}

TEST_F(CheckpointTest, RandomCheckpointRefusesUninitializedInitAndAMissingDevice) {
  const fs::path out = dir_ / "refused";
  auto uninitialized =
      WriteRandomCheckpoint(config_, 3, out.string(), {.init = ParameterInit::kUninitialized});
  ASSERT_FALSE(uninitialized.ok());
  EXPECT_EQ(uninitialized.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(uninitialized.status().message().find("init"), std::string::npos);
  auto bad_device = WriteRandomCheckpoint(
      config_, 3, out.string(), {.init = ParameterInit::kRandomOnDevice, .device = "tpu"});
  EXPECT_FALSE(bad_device.ok());
  if (!torch::cuda::is_available()) {
    auto cuda = WriteRandomCheckpoint(config_, 3, out.string(),
                                      {.init = ParameterInit::kRandomOnDevice, .device = "cuda"});
    ASSERT_FALSE(cuda.ok());
    EXPECT_EQ(cuda.status().code(), absl::StatusCode::kFailedPrecondition) << cuda.status();
  }
  EXPECT_FALSE(fs::exists(out / "config.json"));  // refused before anything is written
}

TEST_F(CheckpointTest, AddedFilmModuleMayBeMissingOnlyWhenTheTrainerAllowsIt) {
  ModelConfig film_config = config_;
  film_config.instruction_film = true;
  auto film = VlaModel::Create(film_config, {.seed = 99});
  ASSERT_TRUE(film.ok());
  auto refused = LoadWeights(dir_.string(), **film);
  EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(
      refused.message().find("2 missing: instruction_film.fc.bias, instruction_film.fc.weight"),
      std::string::npos)
      << refused;
  // Allowing the prefix loads everything else; the zero FiLM leaves the forward unchanged.
  ASSERT_TRUE(LoadWeights(dir_.string(), **film, "instruction_film.").ok());
  auto a = model_->Forward({Sample()});
  auto b = (*film)->Forward({Sample()});
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_TRUE(torch::equal((*a)[0].normalized_actions, (*b)[0].normalized_actions));
  // The prefix does not excuse other missing tensors.
  EditBackbone([](std::vector<TensorView>& v) { v.pop_back(); });
  EXPECT_FALSE(LoadWeights(dir_.string(), **film, "instruction_film.").ok());
  // A FiLM checkpoint written by the streaming writer equals the model built in memory.
  const fs::path out = dir_ / "film";
  ASSERT_TRUE(WriteRandomCheckpoint(film_config, 4, out.string(), {}).ok());
  auto built = VlaModel::Create(film_config, {.seed = 4});
  ASSERT_TRUE(built.ok());
  const fs::path saved = dir_ / "film_saved";
  ASSERT_TRUE(SaveWeights(**built, saved.string(), "fp32").ok());
  EXPECT_EQ(AllTensorBytes(out), AllTensorBytes(saved));
  auto loaded = LoadModelConfig(out.string());
  ASSERT_TRUE(loaded.ok());
  EXPECT_TRUE(loaded->instruction_film);
}

TEST_F(CheckpointTest, RandomCheckpointOfTwoTowerConfigEqualsSaveWeightsInBf16) {
  auto small = PresetConfig("small");
  ASSERT_TRUE(small.ok());
  CheckpointWriteOptions options;
  options.dtype = "bf16";
  const fs::path streamed = dir_ / "streamed", whole = dir_ / "whole";
  auto stats = WriteRandomCheckpoint(*small, 11, streamed.string(), options);
  ASSERT_TRUE(stats.ok()) << stats.status();
  {
    auto m = VlaModel::Create(*small, {.seed = 11});
    ASSERT_TRUE(m.ok());
    ASSERT_TRUE(SaveWeights(**m, whole.string(), options).ok());
    EXPECT_EQ(stats->parameters, (*m)->parameter_count());
  }
  const auto a = AllTensorBytes(streamed), b = AllTensorBytes(whole);
  EXPECT_EQ(a.size(), b.size());
  for (const auto& [name, bytes] : b) {
    auto it = a.find(name);
    ASSERT_NE(it, a.end()) << name;
    EXPECT_TRUE(it->second == bytes) << name;
  }
  auto estimate = EstimateRandomCheckpointMemory(*small, options);
  ASSERT_TRUE(estimate.ok());
  EXPECT_EQ(estimate->largest_unit_parameters, stats->largest_unit_parameters);
  EXPECT_EQ(estimate->parameters, stats->parameters);
}

TEST_F(CheckpointTest, Oft7bBf16CheckpointFitsA24GbMachine) {
  auto c = PresetConfig("openvla-oft-7b");
  ASSERT_TRUE(c.ok());
  CheckpointWriteOptions options;
  options.dtype = "bf16";
  auto e = EstimateRandomCheckpointMemory(*c, options);
  ASSERT_TRUE(e.ok()) << e.status();
  std::printf(
      "openvla-oft-7b bf16: %.2f GB on disk, peak memory %.2f GB, largest submodule %lld "
      "parameters\n",
      e->disk_bytes / 1e9, e->peak_memory_bytes / 1e9,
      static_cast<long long>(e->largest_unit_parameters));
  EXPECT_EQ(e->parameters, CountParameters(*c).total());
  EXPECT_EQ(e->disk_bytes, 2 * e->parameters);
  // The largest submodule is the SigLIP tower (412M parameters, 1.65 GB in fp32), not the model.
  EXPECT_LT(e->largest_unit_parameters, 450000000);
  EXPECT_LT(e->peak_memory_bytes, int64_t{12} << 30);
  // Materializing the model in fp32 first (the old way) would need 4 bytes per parameter.
  EXPECT_GT(e->parameters * 4, int64_t{24} << 30);
  // Drawn in bf16 on the CPU: no fp32 unit; drawn on a GPU: no unit in host memory at all.
  options.init = ParameterInit::kRandomOnDevice;
  auto on_cpu = EstimateRandomCheckpointMemory(*c, options);
  ASSERT_TRUE(on_cpu.ok()) << on_cpu.status();
  EXPECT_EQ(e->peak_memory_bytes - on_cpu->peak_memory_bytes, e->largest_unit_parameters * 4);
  options.device = "cuda";
  auto on_gpu = EstimateRandomCheckpointMemory(*c, options);
  if (torch::cuda::is_available()) {
    ASSERT_TRUE(on_gpu.ok()) << on_gpu.status();
    EXPECT_EQ(on_cpu->peak_memory_bytes - on_gpu->peak_memory_bytes,
              on_gpu->largest_unit_parameters * 2);
  } else {
    EXPECT_EQ(on_gpu.status().code(), absl::StatusCode::kFailedPrecondition);
  }
  options = {.dtype = "bf16", .max_shard_bytes = 0};
  EXPECT_FALSE(EstimateRandomCheckpointMemory(*c, options).ok());
}

// A /proc/self/status field in bytes ("VmRSS:", "VmHWM:"), or -1.
int64_t ProcStatusBytes(const std::string& key) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind(key, 0) == 0) return std::stoll(line.substr(key.size())) * 1024;
  return -1;
}

TEST_F(CheckpointTest, LoadingHoldsTheWeightsOnceInTheirDtypeNotInFp32OrTwice) {
  // bf16 `small` (45M parameters, 91 MB): building it in fp32 first, or keeping the copied
  // tensors' mapped pages resident, would peak at 2-3x the weights.
  auto small = PresetConfig("small");
  ASSERT_TRUE(small.ok());
  const fs::path out = dir_ / "small-bf16";
  CheckpointWriteOptions options;
  options.dtype = "bf16";
  options.max_shard_bytes = 16 << 20;
  auto written = WriteRandomCheckpoint(*small, 5, out.string(), options);
  ASSERT_TRUE(written.ok()) << written.status();
  fs::copy_file(dir_ / "tokenizer.model", out / "tokenizer.model");
  fs::copy_file(dir_ / "dataset_statistics.json", out / "dataset_statistics.json");
  {
    std::ofstream reset("/proc/self/clear_refs");  // "5": the peak RSS starts again from now
    reset << "5";
  }
  const int64_t before = ProcStatusBytes("VmRSS:");
  if (before < 0 || ProcStatusBytes("VmHWM:") > before + (8 << 20))
    GTEST_SKIP() << "this kernel cannot reset the peak RSS (/proc/self/clear_refs)";
  auto loaded = LoadModelDir(out.string(), {.dtype = "bf16"});
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  const int64_t weights = 2 * written->parameters;
  const int64_t peak = ProcStatusBytes("VmHWM:") - before;
  std::printf("weights %.1f MB, peak RSS growth while loading %.1f MB\n", weights / 1e6,
              peak / 1e6);
  EXPECT_LT(peak, weights * 13 / 10);
  for (const auto& p : loaded->model->module()->parameters())
    EXPECT_EQ(p.scalar_type(), torch::kBFloat16);
}

}  // namespace
}  // namespace specprune
