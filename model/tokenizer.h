// Llama-style SentencePiece tokenizer (docs/ARCHITECTURE.md "The model": the prompt is tokenized
// with the model's SentencePiece model; the embedded tiny model ships one trained by
// tools/train_tokenizer.sh). No LibTorch dependency.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace specprune {

// Immutable after Load(): Encode/Decode and the id accessors are const and safe
// to call concurrently from many threads (SentencePieceProcessor's
// encode/decode are const and keep no mutable state).
class Tokenizer {
 public:
  // Loads a SentencePiece `tokenizer.model`. NotFoundError when the file does
  // not exist, InvalidArgumentError (naming the path) when it is not a valid
  // SentencePiece model.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Load(const std::string& model_path);

  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // Token ids of `text` without BOS/EOS (the caller adds them). Models trained
  // with byte fallback (ours, Llama's) encode any text without <unk>; invalid
  // UTF-8 bytes are encoded as U+FFFD. Never fails for a loaded model.
  std::vector<int64_t> Encode(std::string_view text) const;
  // Text of `ids`. Control tokens (BOS/EOS) decode to nothing; ids outside
  // [0, vocab_size()) decode like unk_id() (" ⁇ ").
  std::string Decode(const std::vector<int64_t>& ids) const;

  int64_t vocab_size() const;
  int64_t bos_id() const;
  int64_t eos_id() const;
  int64_t unk_id() const;
  // The model's pad id, or, when the model defines none (Llama: pad_id = -1),
  // unk_id() as the HF Llama convention pads with id 0. Padded positions are
  // masked anyway.
  int64_t pad_id() const;
  // Id of a vocabulary piece (e.g. "▁", OpenVLA's prompt suffix 29871), or -1
  // when absent.
  int64_t PieceToId(std::string_view piece) const;
  // The piece of `id`, or an empty string when out of range.
  std::string IdToPiece(int64_t id) const;

 private:
  struct Impl;
  explicit Tokenizer(std::unique_ptr<Impl> impl);

  std::unique_ptr<Impl> impl_;
};

}  // namespace specprune
