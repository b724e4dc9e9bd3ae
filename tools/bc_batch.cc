#include "tools/bc_batch.h"

#include <algorithm>
#include <cctype>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "model/tokenizer.h"

namespace specprune {

RgbImage ShiftImage(const RgbImage& image, int dx, int dy) {
  RgbImage out = image;
  const int h = image.height, w = image.width;
  for (int y = 0; y < h; ++y) {
    const int sy = std::clamp(y - dy, 0, h - 1);
    for (int x = 0; x < w; ++x) {
      const int sx = std::clamp(x - dx, 0, w - 1);
      for (int c = 0; c < 3; ++c)
        out.pixels[(y * w + x) * 3 + c] = image.pixels[(sy * w + sx) * 3 + c];
    }
  }
  return out;
}

namespace {

// A word of an instruction and the character offset in the prompt text where it ends.
struct PromptWord {
  std::string text;
  size_t end;
};

// The lower-cased instruction's words (runs of letters), offsets into the prompt text.
std::vector<PromptWord> InstructionWords(const ModelConfig& config, const std::string& lower) {
  std::vector<PromptWord> words;
  const size_t at = config.prompt_template.find("{}");
  if (at == std::string::npos) return words;
  for (size_t i = 0; i < lower.size();) {
    if (!std::isalpha(static_cast<unsigned char>(lower[i]))) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < lower.size() && std::isalpha(static_cast<unsigned char>(lower[j]))) ++j;
    words.push_back({lower.substr(i, j - i), at + j});
    i = j;
  }
  return words;
}

// The prompt rows of the tokens containing each character offset in `ends` (ascending) of the
// prompt built from `lower`; empty when the tokenizer does not round-trip the prompt. Decodes
// growing prefixes (prompts are short).
std::vector<int64_t> RowsEndingAt(const ModelConfig& config, const Tokenizer& tokenizer,
                                  const std::string& lower, const std::vector<size_t>& ends) {
  const std::string text = absl::StrReplaceAll(config.prompt_template, {{"{}", lower}});
  const std::vector<int64_t> encoded = tokenizer.Encode(text);
  if (tokenizer.Decode(encoded) != text) return {};
  std::vector<int64_t> rows;
  size_t k = 0;
  for (size_t end : ends) {
    while (k < encoded.size() &&
           tokenizer.Decode(std::vector<int64_t>(encoded.begin(), encoded.begin() + k + 1)).size() <
               end)
      ++k;
    if (k == encoded.size()) return {};
    rows.push_back(static_cast<int64_t>(k));
  }
  return rows;  // BuildPromptIds appends at most a suffix token after `encoded`
}

}  // namespace

std::vector<int64_t> MentionRows(const ModelConfig& config, const Tokenizer& tokenizer,
                                 std::string_view instruction, int expected) {
  std::string lower(instruction);
  absl::AsciiStrToLower(&lower);
  const std::vector<PromptWord> words = InstructionWords(config, lower);
  const auto is_shape = [](const std::string& w) {
    for (int k = 0; k < sim::kNumShapes; ++k)
      if (w == sim::ShapeName(static_cast<sim::Shape>(k))) return true;
    return false;
  };
  const auto is_position = [](const std::string& w) {
    return w == "left" || w == "right" || w == "front" || w == "back";
  };
  std::vector<size_t> ends;     // character offsets where mentions end
  std::vector<size_t> word_of;  // the word index of each mention
  for (size_t w = 0; w < words.size(); ++w) {
    if (is_position(words[w].text) && !word_of.empty() && word_of.back() + 3 == w &&
        is_shape(words[word_of.back()].text)) {
      ends.back() = words[w].end;
      word_of.back() = w;
    } else if (is_shape(words[w].text) || words[w].text == "plate") {
      ends.push_back(words[w].end);
      word_of.push_back(w);
    }
  }
  if (static_cast<int>(ends.size()) != expected) return {};
  return RowsEndingAt(config, tokenizer, lower, ends);
}

std::vector<std::pair<int64_t, int>> ColourWordRows(const ModelConfig& config,
                                                    const Tokenizer& tokenizer,
                                                    std::string_view instruction) {
  std::string lower(instruction);
  absl::AsciiStrToLower(&lower);
  std::vector<size_t> ends;
  std::vector<int> classes;
  for (const PromptWord& w : InstructionWords(config, lower))
    for (int k = 0; k < sim::kNumColors; ++k)
      if (w.text == sim::ColorName(static_cast<sim::Color>(k))) {
        ends.push_back(w.end);
        classes.push_back(1 + k);
      }
  const std::vector<int64_t> rows = RowsEndingAt(config, tokenizer, lower, ends);
  std::vector<std::pair<int64_t, int>> out;
  for (size_t i = 0; i < rows.size(); ++i) out.push_back({rows[i], classes[i]});
  return out;
}

absl::StatusOr<BcBatch> MakeBatch(const std::vector<RawSample>& samples, const ModelConfig& config,
                                  const Tokenizer& tokenizer, const DatasetStats& stats,
                                  int max_shift, std::mt19937_64* rng) {
  if (samples.empty()) return absl::InvalidArgumentError("samples: empty batch");
  if (config.cameras.size() != 2)
    return absl::InvalidArgumentError("config.cameras: the simulator renders exactly 2 cameras");
  if (config.action_dim != sim::kActionDim || config.proprio_dim != sim::kProprioDim)
    return absl::InvalidArgumentError("config: action_dim/proprio_dim must match the simulator");
  const int64_t b = static_cast<int64_t>(samples.size());
  const int64_t chunk = config.chunk_size, s = config.image_size;
  BcBatch batch;
  batch.pixels = torch::empty({b, 2, 3, s, s}, torch::kFloat32);
  batch.proprio = torch::empty({b, config.proprio_dim}, torch::kFloat32);
  batch.actions = torch::empty({b, chunk, config.action_dim}, torch::kFloat32);
  batch.aux = torch::empty({b, kAuxTargetDim}, torch::kFloat32);
  const int64_t pp = config.patches_per_image();
  const int patch = static_cast<int>(config.towers.at(0).patch_size);
  batch.patch_labels = torch::empty({b, 2 * pp, kPatchTargetItems}, torch::kFloat32);
  batch.named_labels = torch::empty({b, 2 * pp, kPatchTargetItems}, torch::kFloat32);
  batch.patch_attributes = torch::empty({b, 2 * pp, 2}, torch::kLong);
  batch.mention_rows = torch::full({b, kMaxMentions}, -1, torch::kLong);
  batch.mention_labels = torch::zeros({b, 2 * pp, kMaxMentions}, torch::kFloat32);
  batch.colour_rows = torch::full({b, kMaxColourWords}, -1, torch::kLong);
  batch.colour_classes = torch::zeros({b, kMaxColourWords}, torch::kLong);
  std::uniform_int_distribution<int> shift(-max_shift, max_shift);
  for (int64_t i = 0; i < b; ++i) {
    const RawSample& r = samples[i];
    if (static_cast<int64_t>(r.actions.size()) != chunk)
      return absl::InvalidArgumentError(
          absl::StrCat("samples[", i, "].actions: expected ", chunk, " actions"));
    const RgbImage* cams[2] = {&r.main, &r.wrist};
    for (int c = 0; c < 2; ++c) {
      RgbImage img = *cams[c];
      int dx = 0, dy = 0;
      if (max_shift > 0 && rng != nullptr) {
        dx = shift(*rng), dy = shift(*rng);
        img = ShiftImage(img, dx, dy);
      }
      batch.patch_labels[i]
          .slice(0, c * pp, (c + 1) * pp)
          .copy_(PatchLabels(&r.discs[c * kPatchTargetItems], static_cast<int>(s), patch, dx, dy));
      auto named = batch.named_labels[i].slice(0, c * pp, (c + 1) * pp);
      named.zero_();
      auto mentions = batch.mention_labels[i].slice(0, c * pp, (c + 1) * pp);
      for (size_t g = 0; g < r.named_discs.size(); ++g) {
        auto goal_labels = PatchLabels(&r.named_discs[g][c * kPatchTargetItems],
                                       static_cast<int>(s), patch, dx, dy);
        named.copy_(torch::maximum(named, goal_labels));
        if (static_cast<int>(g) * kPatchTargetItems < kMaxMentions)
          mentions.slice(1, g * kPatchTargetItems, (g + 1) * kPatchTargetItems).copy_(goal_labels);
      }
      batch.patch_attributes[i]
          .slice(0, c * pp, (c + 1) * pp)
          .copy_(PatchAttributes(r.items[c], static_cast<int>(s), patch, dx, dy));
      auto t = ModelImage(img, config);
      if (!t.ok()) return t.status();
      batch.pixels[i][c].copy_(*t);
    }
    float p[sim::kProprioDim];
    if (auto st = NormalizeProprio(stats.proprio, r.proprio.data(), p, sim::kProprioDim); !st.ok())
      return st;
    batch.proprio[i].copy_(torch::from_blob(p, {sim::kProprioDim}, torch::kFloat32));
    std::vector<float> a;
    for (const auto& act : r.actions) a.insert(a.end(), act.begin(), act.end());
    if (auto st = NormalizeActions(stats.action, a.data(), chunk, sim::kActionDim); !st.ok())
      return st;
    batch.actions[i].copy_(torch::from_blob(a.data(), {chunk, sim::kActionDim}, torch::kFloat32));
    batch.aux[i].copy_(
        torch::from_blob(const_cast<float*>(r.aux.data()), {kAuxTargetDim}, torch::kFloat32));
    batch.prompt_ids.push_back(BuildPromptIds(config, tokenizer, r.instruction));
    const int goals = std::min<int>(r.named_discs.size(), kMaxMentions / kPatchTargetItems);
    const std::vector<int64_t> rows =
        MentionRows(config, tokenizer, r.instruction, goals * kPatchTargetItems);
    for (size_t j = 0; j < rows.size(); ++j) batch.mention_rows[i][j] = rows[j];
    const auto colours = ColourWordRows(config, tokenizer, r.instruction);
    for (size_t j = 0; j < colours.size() && j < kMaxColourWords; ++j) {
      batch.colour_rows[i][j] = colours[j].first;
      batch.colour_classes[i][j] = colours[j].second;
    }
  }
  return batch;
}

}  // namespace specprune
