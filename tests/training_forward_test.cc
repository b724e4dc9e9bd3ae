// The training forward (tools/training_forward.h) against the served model: the same actions,
// the attention taps the served pruner scores by, and token drops equal to served pruning.
#include <gtest/gtest.h>

#include <memory>
#include <optional>
#include <random>

#include "absl/strings/str_cat.h"
#include "model/tokenizer.h"
#include "pruning/policies.h"
#include "pruning/pruning_config.h"
#include "tests/bc_test_util.h"
#include "tools/bc_data.h"

namespace specprune {
namespace {
using testing_support::kTokenizer;
using testing_support::SmallStats;
using testing_support::TinyConfig;

// The model input the policy step builds for the episode's current observation.
absl::StatusOr<SampleInput> ServedInput(const VlaModel& model, const Tokenizer& tok,
                                        const sim::Episode& ep, const DatasetStats& st) {
  auto observation = EpisodeObservation(ep, model.config());
  if (!observation.ok()) return observation.status();
  auto prepared = PolicyStep(model, tok).Prepare(*observation, &st);
  if (!prepared.ok()) return prepared.status();
  return SampleInput{prepared->images, prepared->prompt_ids, prepared->proprio, nullptr};
}

// A batch of served-model inputs as TrainingForward takes it.
struct Stacked {
  torch::Tensor pixels, proprio;
  std::vector<std::vector<int64_t>> prompts;
};
Stacked Stack(const std::vector<SampleInput>& inputs) {
  std::vector<torch::Tensor> imgs, props;
  Stacked out;
  for (const auto& in : inputs) {
    imgs.push_back(torch::stack(in.images));
    props.push_back(in.proprio);
    out.prompts.push_back(in.prompt_ids);
  }
  out.pixels = torch::stack(imgs);
  out.proprio = torch::stack(props);
  return out;
}

void ExpectTrainingForwardMatchesVlaModelForward(const std::string& film) {
  ModelConfig c = TinyConfig();
  c.instruction_film = !film.empty();
  if (!film.empty()) c.instruction_film_pooling = film;
  ModelOptions mo;
  mo.seed = 3;
  auto model = VlaModel::Create(c, mo);
  ASSERT_TRUE(model.ok());
  if (c.instruction_film) {  // away from its zero initialization, so the test sees the FiLM
    torch::NoGradGuard no_grad;
    torch::manual_seed(5);
    auto& mod = (*model)->module()->instruction_film;
    mod->fc->weight.normal_(0, 0.3);
    if (mod->query.defined()) mod->query.normal_(0, 1);
  }
  auto tok = Tokenizer::Load(kTokenizer);
  ASSERT_TRUE(tok.ok());
  DatasetStats st = SmallStats();
  std::vector<sim::Episode> eps;
  std::vector<SampleInput> inputs;
  for (int i = 0; i < 3; ++i) {
    const EpisodeSpec spec{sim::kAllSuites[i + 1], static_cast<uint64_t>(i), -1, 0.0f};
    auto ep = sim::Episode::Create(spec.suite, spec.seed, SpecSimOptions(spec, 64));
    ASSERT_TRUE(ep.ok());
    auto in = ServedInput(**model, **tok, *ep, st);
    ASSERT_TRUE(in.ok()) << in.status();
    inputs.push_back(*in);
  }
  ASSERT_NE(inputs[0].prompt_ids.size(),
            inputs[2].prompt_ids.size());  // ragged batch
  auto served = (*model)->Forward(inputs);
  ASSERT_TRUE(served.ok()) << served.status();
  const Stacked stacked = Stack(inputs);
  const auto& prompts = stacked.prompts;
  torch::NoGradGuard ng;
  torch::Tensor projected, llm_input;
  ForwardTaps taps;
  taps.vision_tokens = &projected;
  taps.llm_vision_input = &llm_input;
  auto trained =
      TrainingForward((*model)->module(), c, stacked.pixels, stacked.proprio, prompts, taps);
  ASSERT_EQ(trained.sizes(), torch::IntArrayRef({3, 8, 7}));
  // The LLM's vision input is the projector output, FiLM-ed by each sample's own prompt.
  ASSERT_EQ(llm_input.sizes(), projected.sizes());
  auto embed = (*model)->module()->language_model->model->embed_tokens;
  for (int b = 0; b < 3; ++b) {
    auto expected = c.instruction_film
                        ? (*model)->module()->instruction_film->forward(
                              projected[b], embed->forward(torch::tensor(prompts[b])))
                        : projected[b];
    EXPECT_TRUE(torch::allclose(llm_input[b], expected, 1e-5, 1e-6)) << b;
    EXPECT_EQ(torch::equal(llm_input[b], projected[b]), !c.instruction_film) << b;
  }
  for (int b = 0; b < 3; ++b)
    EXPECT_LT((trained[b] - (*served)[b].normalized_actions).abs().max().item<float>(), 1e-5f) << b;
  // Gradients reach the vision tower (the path visual grounding depends on).
  torch::AutoGradMode grad(true);
  (*model)->module()->zero_grad();
  TrainingForward((*model)->module(), c, stacked.pixels, stacked.proprio, prompts)
      .abs()
      .mean()
      .backward();
  double g = 0;
  for (const auto& p : (*model)->module()->vision_backbone->parameters())
    if (p.grad().defined()) g += p.grad().abs().sum().item<double>();
  EXPECT_GT(g, 0.0);
  if (c.instruction_film) {
    const auto& fg = (*model)->module()->instruction_film->fc->weight.grad();
    ASSERT_TRUE(fg.defined());
    EXPECT_GT(fg.abs().sum().item<double>(), 0.0);
  }
}

TEST(TrainingForwardTest, TrainingForwardMatchesVlaModelForward) {
  for (const char* film : {"", "mean", "attention"}) {
    SCOPED_TRACE(std::string("instruction FiLM pooling: ") + film);
    ExpectTrainingForwardMatchesVlaModelForward(film);
  }
}

TEST(TrainingForwardTest, TextTapsAreThePromptRowsOfARaggedBatch) {
  ModelConfig c = TinyConfig();
  auto model = VlaModel::Create(c, {});
  ASSERT_TRUE(model.ok());
  const std::vector<std::vector<int64_t>> prompts = {{5, 6, 7, 8, 9}, {10, 11}, {12, 13, 14}};
  torch::manual_seed(4);
  auto pixels = torch::rand({3, 2, 3, c.image_size, c.image_size});
  auto proprio = torch::randn({3, c.proprio_dim});
  torch::Tensor action_hidden, text_hidden, text_mask;
  ForwardTaps taps;
  taps.action_hidden = &action_hidden;
  taps.text_hidden = &text_hidden;
  taps.text_mask = &text_mask;
  torch::NoGradGuard ng;
  TrainingForward((*model)->module(), c, pixels, proprio, prompts, taps);
  ASSERT_EQ(text_hidden.sizes(), torch::IntArrayRef({3, 5, c.llm.hidden}));
  ASSERT_EQ(text_mask.sizes(), torch::IntArrayRef({3, 5}));
  for (int b = 0; b < 3; ++b) {
    const int64_t m = static_cast<int64_t>(prompts[b].size());
    EXPECT_EQ(text_mask[b].sum().item<float>(), static_cast<float>(m)) << b;
    EXPECT_EQ(text_mask[b].slice(0, 0, m).min().item<float>(), 1.0f) << b;
    // The first action row the head reads is the last prompt row (OpenVLA-OFT's convention).
    EXPECT_TRUE(torch::equal(action_hidden[b][0], text_hidden[b][m - 1])) << b;
  }
}

TEST(TrainingForwardTest, AttentionTapMatchesTheScoresTheServedModelPrunesBy) {
  ModelConfig c = TinyConfig();
  ModelOptions mo;
  mo.seed = 5;
  auto model = VlaModel::Create(c, mo);
  ASSERT_TRUE(model.ok());
  auto tok = Tokenizer::Load(kTokenizer);
  ASSERT_TRUE(tok.ok());
  DatasetStats st = SmallStats();
  PruningConfig none = DefaultPruningConfig(static_cast<int>(c.llm.layers), c.vision_tokens(),
                                            c.patches_per_image());
  none.method = PruningMethod::kNone;
  const std::vector<int> layers = {0, 2, 5};
  std::vector<SampleInput> inputs;
  std::vector<std::unique_ptr<SamplePruner>> pruners;
  for (int i = 0; i < 2; ++i) {  // ragged prompts
    const EpisodeSpec spec{sim::kAllSuites[2 * i + 1], static_cast<uint64_t>(i), -1, 0.0f};
    auto ep = sim::Episode::Create(spec.suite, spec.seed, SpecSimOptions(spec, 64));
    ASSERT_TRUE(ep.ok());
    auto in = ServedInput(**model, **tok, *ep, st);
    ASSERT_TRUE(in.ok()) << in.status();
    PrunerContext ctx;
    ctx.config = &none;
    ctx.num_layers = static_cast<int>(c.llm.layers);
    ctx.num_vision_tokens = c.vision_tokens();
    ctx.record_layers = layers;
    auto pruner = CreatePruner(ctx);
    ASSERT_TRUE(pruner.ok()) << pruner.status();
    in->pruner = pruner->get();
    inputs.push_back(*std::move(in));
    pruners.push_back(*std::move(pruner));
  }
  ASSERT_NE(inputs[0].prompt_ids.size(), inputs[1].prompt_ids.size());
  ASSERT_TRUE((*model)->Forward(inputs).ok());
  std::vector<torch::Tensor> scores;
  const Stacked stacked = Stack(inputs);
  const auto& prompts = stacked.prompts;
  ForwardTaps taps;
  taps.attention_layers = layers;
  taps.text_vision_attention = &scores;
  torch::NoGradGuard ng;
  TrainingForward((*model)->module(), c, stacked.pixels, stacked.proprio, prompts, taps);
  ASSERT_EQ(scores.size(), layers.size());
  for (int b = 0; b < 2; ++b) {
    const auto& recorded = dynamic_cast<KeepAllPruner*>(pruners[b].get())->recorded_scores();
    for (size_t i = 0; i < layers.size(); ++i) {
      ASSERT_EQ(recorded.count(layers[i]), 1u);
      EXPECT_LT((scores[i][b] - recorded.at(layers[i])).abs().max().item<float>(), 1e-5f)
          << "sample " << b << " layer " << layers[i];
    }
  }
}

// Keeps a fixed set of vision tokens from layer `after + 1` on.
class FixedSetPruner : public SamplePruner {
 public:
  FixedSetPruner(int after, std::vector<int64_t> keep) : after_(after), keep_(std::move(keep)) {}
  StatsRows StatsWanted(int) const override { return StatsRows::kNone; }
  std::optional<std::vector<int64_t>> AfterLayer(int layer, const std::vector<int64_t>&,
                                                 const LayerAttentionStats*) override {
    if (layer != after_) return std::nullopt;
    return keep_;
  }

 private:
  int after_;
  std::vector<int64_t> keep_;
};

TEST(TrainingForwardTest, TokenDropMatchesTheServedModelPruningTheSameSet) {
  ModelConfig c = TinyConfig();
  ModelOptions mo;
  mo.seed = 8;
  auto model = VlaModel::Create(c, mo);
  ASSERT_TRUE(model.ok());
  auto tok = Tokenizer::Load(kTokenizer);
  ASSERT_TRUE(tok.ok());
  DatasetStats st = SmallStats();
  const int64_t p = c.vision_tokens();
  std::mt19937_64 rng(9);
  std::vector<SampleInput> inputs;
  std::vector<std::unique_ptr<FixedSetPruner>> pruners;
  auto keep = torch::zeros({3, p}, torch::kBool);
  for (int i = 0; i < 3; ++i) {  // ragged prompts, a different kept set per sample
    const EpisodeSpec spec{sim::kAllSuites[i + 1], static_cast<uint64_t>(i + 10), -1, 0.0f};
    auto ep = sim::Episode::Create(spec.suite, spec.seed, SpecSimOptions(spec, 64));
    ASSERT_TRUE(ep.ok());
    auto in = ServedInput(**model, **tok, *ep, st);
    ASSERT_TRUE(in.ok()) << in.status();
    std::vector<int64_t> ids;
    for (int64_t v = 0; v < p; ++v)
      if (std::uniform_real_distribution<double>(0, 1)(rng) < 0.2 + 0.15 * i) {
        ids.push_back(v);
        keep[i][v] = true;
      }
    pruners.push_back(std::make_unique<FixedSetPruner>(1, ids));
    in->pruner = pruners.back().get();
    inputs.push_back(*std::move(in));
  }
  auto served = (*model)->Forward(inputs);
  ASSERT_TRUE(served.ok()) << served.status();
  ASSERT_LT((*served)[0].vision_tokens_per_layer.back(), p);  // the served pass did prune
  const Stacked stacked = Stack(inputs);
  const auto& prompts = stacked.prompts;
  torch::NoGradGuard ng;
  const auto& px = stacked.pixels;
  const auto& pr = stacked.proprio;
  auto dropped = TrainingForward((*model)->module(), c, px, pr, prompts, {}, {2, keep});
  auto full = TrainingForward((*model)->module(), c, px, pr, prompts);
  auto all_kept =
      TrainingForward((*model)->module(), c, px, pr, prompts, {}, {2, torch::ones_like(keep)});
  for (int b = 0; b < 3; ++b) {
    EXPECT_LT((dropped[b] - (*served)[b].normalized_actions).abs().max().item<float>(), 1e-5f) << b;
    EXPECT_GT((dropped[b] - full[b]).abs().max().item<float>(), 1e-4f) << "dropping is visible";
  }
  EXPECT_TRUE(torch::equal(all_kept, full));
  // The drop starts at its layer: dropping before layer 0 is another pass.
  auto from_start = TrainingForward((*model)->module(), c, px, pr, prompts, {}, {0, keep});
  EXPECT_GT((from_start - dropped).abs().max().item<float>(), 1e-4f);
  EXPECT_THROW(TrainingForward((*model)->module(), c, px, pr, prompts, {}, {2, keep.slice(1, 1)}),
               c10::Error);
}

TEST(TrainingForwardTest, SpecPruneStaticKeepIsTheSetTheServedPrunerKeeps) {
  ModelConfig c = TinyConfig();
  ModelOptions mo;
  mo.seed = 12;
  auto model = VlaModel::Create(c, mo);
  ASSERT_TRUE(model.ok());
  auto tok = Tokenizer::Load(kTokenizer);
  ASSERT_TRUE(tok.ok());
  DatasetStats st = SmallStats();
  const int layers = static_cast<int>(c.llm.layers);
  const int64_t p = c.vision_tokens();
  PruningConfig config = DefaultPruningConfig(layers, p, c.patches_per_image());
  config.specprune.prune_fraction = 0.0;  // static pruning only: the set decides the output
  config.specprune.k_global = 6;
  const int first_pruned = config.specprune.local_layers.back() + 1;
  const std::vector<int> tap_layers = SpecPruneScoreLayers(config);
  std::vector<int> expected_taps = config.specprune.local_layers;  // {0}, then {2, 5} on tiny
  expected_taps.insert(expected_taps.end(), config.specprune.global_layers.begin(),
                       config.specprune.global_layers.end());
  ASSERT_EQ(tap_layers, expected_taps);
  torch::manual_seed(13);
  for (int i = 0; i < 2; ++i) {  // a slow (fine) and a fast (coarse) previous chunk
    const EpisodeSpec spec{sim::kAllSuites[i + 2], static_cast<uint64_t>(i + 20), -1, 0.0f};
    auto ep = sim::Episode::Create(spec.suite, spec.seed, SpecSimOptions(spec, 64));
    ASSERT_TRUE(ep.ok());
    auto in = ServedInput(**model, **tok, *ep, st);
    ASSERT_TRUE(in.ok()) << in.status();
    const Stacked one = Stack({*in});
    std::vector<torch::Tensor> scores;
    ForwardTaps taps;
    taps.attention_layers = tap_layers;
    taps.text_vision_attention = &scores;
    torch::NoGradGuard ng;
    TrainingForward((*model)->module(), c, one.pixels, one.proprio, one.prompts, taps);
    ASSERT_EQ(scores.size(), tap_layers.size());
    std::vector<torch::Tensor> by_layer(layers);
    for (size_t t = 0; t < tap_layers.size(); ++t) by_layer[tap_layers[t]] = scores[t][0];
    auto prior = torch::zeros({p});
    for (int l : config.specprune.global_layers) prior += by_layer[l];
    prior /= static_cast<double>(config.specprune.global_layers.size());
    auto chunk = torch::zeros({c.chunk_size, c.action_dim});  // moving in x and y only
    chunk.slice(1, 0, 2).fill_(i == 0 ? 0.01 : 0.8);
    auto keep = SpecPruneStaticKeep(config, layers, by_layer, chunk);
    ASSERT_TRUE(keep.ok()) << keep.status();
    ASSERT_EQ(keep->sizes(), torch::IntArrayRef({p}));
    const int64_t kept = keep->sum().item<int64_t>();
    EXPECT_GT(kept, 0);
    EXPECT_LT(kept, p);
    // The served pass with this prior and previous chunk keeps exactly that set.
    EpisodeState state;
    state.global_prior = prior.clone();
    state.last_actions = chunk.clone();
    PrunerContext ctx;
    ctx.config = &config;
    ctx.state = &state;
    ctx.num_layers = layers;
    ctx.num_vision_tokens = p;
    auto pruner = CreatePruner(ctx);
    ASSERT_TRUE(pruner.ok());
    in->pruner = pruner->get();
    auto served = (*model)->Forward({*in});
    ASSERT_TRUE(served.ok()) << served.status();
    EXPECT_EQ((*served)[0].vision_tokens_per_layer[first_pruned], kept) << i;
    auto dropped = TrainingForward((*model)->module(), c, one.pixels, one.proprio, one.prompts, {},
                                   {first_pruned, keep->unsqueeze(0)});
    EXPECT_LT((dropped[0] - (*served)[0].normalized_actions).abs().max().item<float>(), 1e-5f) << i;
    EXPECT_EQ((*pruner)->mode(), i == 0 ? ControllerMode::kFine : ControllerMode::kCoarse);
  }
  // Bad inputs are refused, naming what is wrong.
  PruningConfig fastv = config;
  fastv.method = PruningMethod::kFastV;
  auto zeros = torch::zeros({p});
  std::vector<torch::Tensor> by_layer(layers, zeros);
  auto chunk = torch::zeros({c.chunk_size, c.action_dim});
  EXPECT_EQ(SpecPruneStaticKeep(fastv, layers, by_layer, chunk).status().code(),
            absl::StatusCode::kInvalidArgument);
  auto missing = SpecPruneStaticKeep(config, layers, {}, chunk);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(missing.status().message().find("layer_scores[0]"), std::string::npos);
  std::vector<torch::Tensor> no_global = by_layer;  // the prior's layer is missing
  no_global[config.specprune.global_layers.back()] = torch::Tensor();
  auto no_prior = SpecPruneStaticKeep(config, layers, no_global, chunk);
  EXPECT_EQ(no_prior.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(no_prior.status().message().find(
                absl::StrCat("layer_scores[", config.specprune.global_layers.back(), "]")),
            std::string::npos);
}

TEST(TrainingForwardTest, RowAttentionTapAveragesToThePooledScores) {
  ModelConfig c = TinyConfig();
  ModelOptions mo;
  mo.seed = 6;
  auto model = VlaModel::Create(c, mo);
  ASSERT_TRUE(model.ok());
  const std::vector<std::vector<int64_t>> prompts = {{5, 6, 7, 8, 9}, {10, 11}};
  torch::manual_seed(7);
  auto pixels = torch::rand({2, 2, 3, c.image_size, c.image_size});
  auto proprio = torch::randn({2, c.proprio_dim});
  std::vector<torch::Tensor> pooled, rows;
  ForwardTaps taps;
  taps.attention_layers = {1, 3};
  taps.text_vision_attention = &pooled;
  taps.row_attention_layers = {3};
  taps.text_row_vision_attention = &rows;
  torch::NoGradGuard ng;
  TrainingForward((*model)->module(), c, pixels, proprio, prompts, taps);
  ASSERT_EQ(pooled.size(), 2u);
  ASSERT_EQ(rows.size(), 1u);
  ASSERT_EQ(rows[0].sizes(), torch::IntArrayRef({2, 5, c.vision_tokens()}));
  for (int b = 0; b < 2; ++b) {
    const int64_t m = static_cast<int64_t>(prompts[b].size());
    EXPECT_LT((rows[0][b].slice(0, 0, m).mean(0) - pooled[1][b]).abs().max().item<float>(), 1e-6f);
    EXPECT_EQ(rows[0][b].slice(0, m).abs().sum().item<float>(), 0.0f) << "padded rows";
  }
}

}  // namespace
}  // namespace specprune
