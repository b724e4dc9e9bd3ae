#include "model/checkpoint.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "model/safetensors.h"
#include "nlohmann/json.hpp"

namespace specprune {
namespace {
namespace fs = std::filesystem;

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("specprune_ckpt_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    auto c = PresetConfig("tiny");
    ASSERT_TRUE(c.ok());
    config_ = *c;
    auto m = VlaModel::Create(config_, {.seed = 3});
    ASSERT_TRUE(m.ok());
    model_ = std::move(*m);
    ASSERT_TRUE(SaveWeights(*model_, dir_.string(), "fp32").ok());
    fs::copy_file(fs::path(SPECPRUNE_SOURCE_DIR) / "tests/data/tokenizer_test.model",
                  dir_ / "tokenizer.model");
    DatasetStatistics stats;
    DatasetStats s;
    s.key = "test";
    s.action.q01.assign(config_.action_dim, -2.0f);
    s.action.q99.assign(config_.action_dim, 2.0f);
    s.action.mask.assign(config_.action_dim, true);
    s.proprio.q01.assign(config_.proprio_dim, -1.0f);
    s.proprio.q99.assign(config_.proprio_dim, 1.0f);
    s.proprio.mask.assign(config_.proprio_dim, true);
    ASSERT_TRUE(stats.Add(s).ok());
    ASSERT_TRUE(stats.Save((dir_ / "dataset_statistics.json").string()).ok());
  }
  void TearDown() override { fs::remove_all(dir_); }

  SampleInput Sample() {
    torch::manual_seed(5);
    SampleInput in;
    for (int i = 0; i < 2; ++i) in.images.push_back(torch::rand({3, 64, 64}));
    in.prompt_ids = {5, 6, 7, 8, 9};
    in.proprio = torch::zeros({config_.proprio_dim});
    return in;
  }
  // Rewrites model.safetensors keeping every tensor but applying `edit` to the list.
  void EditBackbone(const std::function<void(std::vector<TensorView>&)>& edit) {
    auto f = SafetensorsFile::Open((dir_ / "model.safetensors").string());
    ASSERT_TRUE(f.ok());
    std::vector<TensorView> views;
    for (const auto& n : (*f)->names()) views.push_back(*(*f)->Find(n));
    edit(views);
    std::vector<std::vector<uint8_t>> keep;
    for (auto& v : views) {
      keep.emplace_back(v.data, v.data + v.nbytes);
      v.data = keep.back().data();
    }
    auto tmp = dir_ / "model.tmp";
    ASSERT_TRUE(WriteSafetensors(tmp.string(), views).ok());
    f->reset();
    fs::rename(tmp, dir_ / "model.safetensors");
  }

  fs::path dir_;
  ModelConfig config_;
  std::unique_ptr<VlaModel> model_;
};

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

}  // namespace
}  // namespace specprune
