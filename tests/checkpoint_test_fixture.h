// The fixture of the checkpoint tests (checkpoint_test.cc, torch_pickle_test.cc): a random `tiny`
// model saved as a model directory in a fresh temporary directory per test (fp32 safetensors, the
// test tokenizer, dataset statistics with key "test"), and helpers to edit and reload it.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "model/checkpoint.h"
#include "model/safetensors.h"

namespace specprune {
namespace testing_support {
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

  // The model's parameters under `prefix` ("action_head." / "proprio_projector."), names
  // relative to it, each prefixed with `add` (e.g. "module." as DDP writes it).
  std::vector<std::pair<std::string, torch::Tensor>> SideTensors(const std::string& prefix,
                                                                 const std::string& add = "") {
    std::vector<std::pair<std::string, torch::Tensor>> out;
    for (const auto& p : model_->module()->named_parameters(true))
      if (p.key().rfind(prefix, 0) == 0)
        out.emplace_back(add + p.key().substr(prefix.size()), p.value().detach().clone());
    return out;
  }
  void RemoveSafetensorsSideFiles() {
    fs::remove(dir_ / "action_head--specprune.safetensors");
    fs::remove(dir_ / "proprio_projector--specprune.safetensors");
  }
  void ExpectSameForwardAsSavedModel() {
    auto loaded = LoadModelDir(dir_.string(), {.seed = 99});
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    auto a = model_->Forward({Sample()});
    auto b = loaded->model->Forward({Sample()});
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_TRUE(torch::equal((*a)[0].normalized_actions, (*b)[0].normalized_actions));
  }

  fs::path dir_;
  ModelConfig config_;
  std::unique_ptr<VlaModel> model_;
};

}  // namespace testing_support
}  // namespace specprune
