// Hugging Face OpenVLA(-OFT) model directories: config.json mapping and norm_stats.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>

#include "model/checkpoint.h"
#include "model/hf_config.h"
#include "nlohmann/json.hpp"

namespace specprune {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// The config.json of a public OpenVLA-OFT LIBERO checkpoint, abridged: transformers serializes
// text_config sparsely (only the fields that differ from LlamaConfig's defaults).
json HfOftConfig() {
  return json::parse(R"({
    "arch_specifier": "no-align+fused-gelu-mlp",
    "architectures": ["OpenVLAForActionPrediction"],
    "auto_map": {"AutoConfig": "configuration_prismatic.OpenVLAConfig",
                 "AutoModelForVision2Seq": "modeling_prismatic.OpenVLAForActionPrediction"},
    "hf_llm_id": "meta-llama/Llama-2-7b-hf",
    "image_resize_strategy": "resize-naive",
    "image_sizes": [224, 224],
    "llm_backbone_id": "llama2-7b-pure",
    "llm_max_length": 2048,
    "model_type": "openvla",
    "n_action_bins": 256,
    "norm_stats": {
      "libero_spatial_no_noops": {
        "action": {"mask": [true, true, true, true, true, true, false],
                   "max": [0.94, 0.87, 0.94, 0.17, 0.18, 0.20, 1.0],
                   "mean": [0.15, 0.13, -0.15, -0.005, -0.01, -0.002, -0.03],
                   "min": [-0.94, -0.94, -0.94, -0.13, -0.19, -0.19, -1.0],
                   "q01": [-0.74, -0.66, -0.94, -0.10, -0.16, -0.11, -1.0],
                   "q99": [0.93, 0.86, 0.94, 0.13, 0.13, 0.15, 1.0],
                   "std": [0.41, 0.34, 0.50, 0.04, 0.06, 0.05, 0.99]},
        "num_trajectories": 432,
        "num_transitions": 52970,
        "proprio": {"max": [0.2, 0.3, 1.2, 3.3, 0.6, 0.5, 0.04, 0.0],
                    "mean": [-0.02, 0.1, 1.0, 3.0, 0.0, -0.1, 0.03, -0.03],
                    "min": [-0.2, -0.1, 0.9, 2.6, -0.6, -0.6, 0.0, -0.04],
                    "q01": [-0.18, -0.09, 0.91, 2.7, -0.5, -0.5, 0.002, -0.04],
                    "q99": [0.15, 0.28, 1.15, 3.2, 0.5, 0.4, 0.04, -0.001],
                    "std": [0.1, 0.1, 0.07, 0.1, 0.2, 0.2, 0.01, 0.01]}
      }
    },
    "output_projector_states": false,
    "pad_to_multiple_of": 64,
    "pad_token_id": 32000,
    "text_config": {"model_type": "llama", "pad_token_id": 32000, "torch_dtype": "bfloat16",
                    "vocab_size": 32064},
    "timm_model_ids": ["vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_224"],
    "timm_override_act_layers": [null, null],
    "torch_dtype": "bfloat16",
    "transformers_version": "4.40.1",
    "use_fused_vision_backbone": true,
    "vision_backbone_id": "dinosiglip-vit-so-224px"
  })");
}

class HfCheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("specprune_hf_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  void WriteConfig(const json& j) { std::ofstream(dir_ / "config.json") << j.dump(2); }

  fs::path dir_;
};

TEST_F(HfCheckpointTest, RealSparseOftConfigMapsExactlyOntoThe7bPreset) {
  ASSERT_TRUE(IsHfOpenVlaConfig(HfOftConfig()));
  auto c = ModelConfigFromHfConfig(HfOftConfig());
  ASSERT_TRUE(c.ok()) << c.status();
  auto preset = PresetConfig("openvla-oft-7b");
  ASSERT_TRUE(preset.ok());
  EXPECT_EQ(ConfigToJson(*c).dump(1), ConfigToJson(*preset).dump(1));
  EXPECT_EQ(c->name, "openvla-oft-7b");
  EXPECT_EQ(c->llm.vocab_size, 32064);
  EXPECT_EQ(c->llm.pad_token_id, 32000);
  EXPECT_THAT(c->cameras, ElementsAre("main", "wrist"));
}

TEST_F(HfCheckpointTest, EpsVocabPadAndCameraCountAreReadFromTheFile) {
  json j = HfOftConfig();
  j["text_config"]["rms_norm_eps"] = 1e-5;
  j["text_config"]["vocab_size"] = 32128;
  j["text_config"]["rope_theta"] = 500000.0;
  j["text_config"]["pad_token_id"] = 32001;
  j["pad_token_id"] = 32001;
  j["num_images_in_input"] = 3;
  auto c = ModelConfigFromHfConfig(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_DOUBLE_EQ(c->llm.rms_norm_eps, 1e-5);
  EXPECT_DOUBLE_EQ(c->llm.rope_theta, 500000.0);
  EXPECT_EQ(c->llm.vocab_size, 32128);
  EXPECT_EQ(c->llm.pad_token_id, 32001);
  EXPECT_THAT(c->cameras, ElementsAre("main", "wrist", "wrist2"));
  EXPECT_EQ(c->vision_tokens(), 3 * 256);
  EXPECT_THAT(HfCameraNames(1), ElementsAre("main"));
  EXPECT_THAT(HfCameraNames(4), ElementsAre("main", "wrist", "wrist2", "wrist3"));
  // The pad id may come from the top level alone.
  j = HfOftConfig();
  j["text_config"].erase("pad_token_id");
  j["pad_token_id"] = 7;
  EXPECT_EQ(ModelConfigFromHfConfig(j)->llm.pad_token_id, 7);
}

TEST_F(HfCheckpointTest, OtherLlamaSizesComeFromTextConfigWithThe7bVision) {
  json j = HfOftConfig();
  j["text_config"].update({{"hidden_size", 64},
                           {"intermediate_size", 172},
                           {"num_hidden_layers", 2},
                           {"num_attention_heads", 4},
                           {"num_key_value_heads", 4},
                           {"hidden_act", "silu"},
                           {"rope_scaling", nullptr},
                           {"attention_bias", false}});
  j["num_actions_chunk"] = 25;
  j["action_dim"] = 14;
  j["proprio_dim"] = 14;
  auto c = ModelConfigFromHfConfig(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->name, "openvla-oft-hf");
  EXPECT_EQ(c->llm.hidden, 64);
  EXPECT_EQ(c->llm.layers, 2);
  EXPECT_EQ(c->llm.heads, 4);
  EXPECT_EQ(c->llm.intermediate, 172);
  EXPECT_EQ(c->action_head_hidden, 64);
  EXPECT_EQ(c->chunk_size, 25);
  EXPECT_EQ(c->action_dim, 14);
  EXPECT_EQ(c->proprio_dim, 14);
  auto preset = PresetConfig("openvla-oft-7b");
  EXPECT_EQ(ConfigToJson(*c)["towers"], ConfigToJson(*preset)["towers"]);
  EXPECT_EQ(c->projector_hidden, 8704);
}

TEST_F(HfCheckpointTest, UnsupportedOrMalformedFieldsAreErrorsNamingTheField) {
  struct Case {
    std::function<void(json&)> edit;
    std::string field;
  };
  const std::vector<Case> cases = {
      {[](json& j) { j["timm_model_ids"][1] = "vit_so400m_patch14_siglip_384"; }, "timm_model_ids"},
      {[](json& j) { j.erase("timm_model_ids"); }, "timm_model_ids"},
      {[](json& j) { j["use_fused_vision_backbone"] = false; }, "use_fused_vision_backbone"},
      {[](json& j) {
         j["image_sizes"] = {384, 384};
       },
       "image_sizes[0]"},
      {[](json& j) { j["image_sizes"] = {224}; }, "image_sizes"},
      {[](json& j) { j["arch_specifier"] = "no-align+gelu-mlp"; }, "arch_specifier"},
      {[](json& j) { j["image_resize_strategy"] = "letterbox"; }, "image_resize_strategy"},
      {[](json& j) {
         j["timm_override_act_layers"] = {"gelu", nullptr};
       },
       "timm_override_act_layers"},
      {[](json& j) { j["text_config"]["model_type"] = "mistral"; }, "text_config.model_type"},
      {[](json& j) { j["text_config"]["num_key_value_heads"] = 8; },
       "text_config.num_key_value_heads"},
      {[](json& j) { j["text_config"]["hidden_act"] = "gelu"; }, "text_config.hidden_act"},
      {[](json& j) {
         j["text_config"]["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
       },
       "text_config.rope_scaling"},
      {[](json& j) { j["text_config"]["attention_bias"] = true; }, "text_config.attention_bias"},
      {[](json& j) { j["text_config"]["hidden_size"] = "big"; }, "text_config.hidden_size"},
      {[](json& j) { j["text_config"]["num_hidden_layers"] = 0; }, "text_config.num_hidden_layers"},
      {[](json& j) { j["text_config"]["num_attention_heads"] = 3; },
       "text_config.num_attention_heads"},
      {[](json& j) { j["text_config"]["rms_norm_eps"] = -1.0; }, "text_config.rms_norm_eps"},
      {[](json& j) { j["text_config"] = "llama"; }, "text_config"},
      {[](json& j) { j["pad_token_id"] = 0; }, "pad_token_id"},
      {[](json& j) { j["text_config"]["vocab_size"] = 32000; }, "pad_token_id"},
      {[](json& j) { j["num_images_in_input"] = 0; }, "num_images_in_input"},
      {[](json& j) { j["num_actions_chunk"] = -8; }, "num_actions_chunk"},
      {[](json& j) {
         j["architectures"] = {"LlamaForCausalLM"};
         j.erase("model_type");
       },
       "architectures"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    json j = HfOftConfig();
    cases[i].edit(j);
    auto c = ModelConfigFromHfConfig(j);
    ASSERT_FALSE(c.ok()) << "case " << i << " (" << cases[i].field << ") was accepted";
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(c.status().message()), HasSubstr("\"" + cases[i].field + "\""))
        << "case " << i;
  }
}

TEST_F(HfCheckpointTest, LoadModelConfigReadsBothConfigFormats) {
  WriteConfig(HfOftConfig());
  auto c = LoadModelConfig(dir_.string());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->name, "openvla-oft-7b");

  json bad = HfOftConfig();
  bad["text_config"]["num_key_value_heads"] = 8;
  WriteConfig(bad);
  c = LoadModelConfig(dir_.string());
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("config.json"));
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("text_config.num_key_value_heads"));

  WriteConfig(json{{"specprune", ConfigToJson(*PresetConfig("tiny"))}});
  c = LoadModelConfig(dir_.string());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->name, "tiny");

  WriteConfig(json{{"architectures", {"LlamaForCausalLM"}}, {"hidden_size", 4096}});
  c = LoadModelConfig(dir_.string());
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("\"specprune\""));
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("OpenVLAForActionPrediction"));
}

TEST_F(HfCheckpointTest, NormStatsServeWhenDatasetStatisticsJsonIsMissing) {
  WriteConfig(HfOftConfig());
  auto stats = LoadModelStatistics(dir_.string());
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_THAT(stats->keys(), ElementsAre("libero_spatial_no_noops"));
  auto s = stats->Get("libero_spatial_no_noops");
  ASSERT_TRUE(s.ok());
  EXPECT_EQ((*s)->action.dim(), 7);
  EXPECT_FLOAT_EQ((*s)->action.q01[0], -0.74f);
  EXPECT_FALSE((*s)->action.mask[6]);
  EXPECT_EQ((*s)->proprio.dim(), 8);
  EXPECT_FLOAT_EQ((*s)->proprio.q99[3], 3.2f);
  EXPECT_EQ((*s)->num_transitions, 52970);

  // dataset_statistics.json, when present, wins.
  DatasetStatistics file_stats;
  DatasetStats other;
  other.key = "from_file";
  other.action.q01.assign(7, -1.0f);
  other.action.q99.assign(7, 1.0f);
  ASSERT_TRUE(file_stats.Add(other).ok());
  ASSERT_TRUE(file_stats.Save((dir_ / "dataset_statistics.json").string()).ok());
  stats = LoadModelStatistics(dir_.string());
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_THAT(stats->keys(), ElementsAre("from_file"));
}

TEST_F(HfCheckpointTest, MalformedOrMissingStatisticsAreClearErrors) {
  json j = HfOftConfig();
  j["norm_stats"]["libero_spatial_no_noops"]["action"].erase("q99");
  WriteConfig(j);
  auto stats = LoadModelStatistics(dir_.string());
  ASSERT_FALSE(stats.ok());
  EXPECT_THAT(std::string(stats.status().message()), HasSubstr("config.json: norm_stats"));
  EXPECT_THAT(std::string(stats.status().message()), HasSubstr("q99"));

  j.erase("norm_stats");
  WriteConfig(j);
  stats = LoadModelStatistics(dir_.string());
  EXPECT_EQ(stats.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(stats.status().message()), HasSubstr("dataset_statistics.json"));
}

TEST_F(HfCheckpointTest, LoadModelDirChecksNormStatsAgainstTheMappedConfigBeforeAllocating) {
  // ALOHA-like statistics (14-dim actions) against the LIBERO-shaped mapping: rejected before
  // the (0.7B-parameter) vision towers are built.
  json j = HfOftConfig();
  auto& action = j["norm_stats"]["libero_spatial_no_noops"]["action"];
  for (const char* f : {"q01", "q99", "mean", "std", "min", "max"}) {
    auto v = action[f];
    for (int i = 0; i < 7; ++i) action[f].push_back(v[i]);
  }
  auto mask = action["mask"];
  for (int i = 0; i < 7; ++i) action["mask"].push_back(mask[i]);
  WriteConfig(j);
  fs::copy_file(fs::path(SPECPRUNE_SOURCE_DIR) / "tests/data/tokenizer_test.model",
                dir_ / "tokenizer.model");
  auto loaded = LoadModelDir(dir_.string(), {});
  ASSERT_FALSE(loaded.ok());
  const std::string msg(loaded.status().message());
  EXPECT_THAT(msg, HasSubstr("norm_stats"));
  EXPECT_THAT(msg, HasSubstr("libero_spatial_no_noops"));
  EXPECT_THAT(msg, HasSubstr("14/8"));
}

}  // namespace
}  // namespace specprune
