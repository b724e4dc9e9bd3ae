// A C ABI over SentencePiece, built as its own shared library and loaded by model/tokenizer.cc
// with dlopen(RTLD_LOCAL).
//
// Why: Debian's libsentencepiece embeds protobuf-lite 3.14 and exports its symbols. A process
// that also loads libprotobuf 3.21 (LibTorch and gRPC do) aborts in SentencePiece's static
// initializers when both are linked normally: its protobuf references bind to 3.21. This shim
// links a copy of libsentencepiece marked DF_SYMBOLIC (model/elf_set_symbolic.py, found through
// the shim's RUNPATH), which resolves its own symbols inside itself; loaded locally, nothing else
// sees them. (RTLD_DEEPBIND did the same before, but ASan and TSan refuse it.)
//
// Every function is thread-safe for concurrent calls on one handle except spm_free.
#define absl specprune_sentencepiece_absl  // see tokenizer.cc history: header/Abseil clash
#include <sentencepiece_processor.h>
#undef absl

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

char* CopyOut(const std::string& s, size_t* len) {
  char* out = static_cast<char*>(std::malloc(s.size() + 1));
  if (out == nullptr) return nullptr;
  std::memcpy(out, s.data(), s.size());
  out[s.size()] = '\0';
  if (len != nullptr) *len = s.size();
  return out;
}

sentencepiece::SentencePieceProcessor* P(void* h) {
  return static_cast<sentencepiece::SentencePieceProcessor*>(h);
}

}  // namespace

extern "C" {

// Returns a handle, or null with a malloc'ed message in *error (free with spm_free_buffer).
void* spm_load(const char* path, char** error) {
  auto* sp = new sentencepiece::SentencePieceProcessor();
  const auto status = sp->Load(path);
  if (!status.ok()) {
    if (error != nullptr) *error = CopyOut(status.ToString(), nullptr);
    delete sp;
    return nullptr;
  }
  return sp;
}

void spm_free(void* handle) { delete P(handle); }
void spm_free_buffer(void* buffer) { std::free(buffer); }

// Encodes text into malloc'ed ids (*ids, *n). Returns 0 on success.
int spm_encode(void* handle, const char* text, size_t len, int** ids, size_t* n) {
  std::vector<int> out;
  if (!P(handle)->Encode(std::string(text, len), &out).ok()) return 1;
  *n = out.size();
  *ids = static_cast<int*>(std::malloc(sizeof(int) * (out.empty() ? 1 : out.size())));
  if (*ids == nullptr) return 1;
  if (!out.empty()) std::memcpy(*ids, out.data(), sizeof(int) * out.size());
  return 0;
}

// Decodes ids into a malloc'ed string (*text, *len). Returns 0 on success.
int spm_decode(void* handle, const int* ids, size_t n, char** text, size_t* len) {
  std::string out;
  if (!P(handle)->Decode(std::vector<int>(ids, ids + n), &out).ok()) return 1;
  *text = CopyOut(out, len);
  return *text == nullptr ? 1 : 0;
}

int spm_piece_size(void* handle) { return P(handle)->GetPieceSize(); }
int spm_bos_id(void* handle) { return P(handle)->bos_id(); }
int spm_eos_id(void* handle) { return P(handle)->eos_id(); }
int spm_unk_id(void* handle) { return P(handle)->unk_id(); }
int spm_pad_id(void* handle) { return P(handle)->pad_id(); }
int spm_piece_to_id(void* handle, const char* piece, size_t len) {
  return P(handle)->PieceToId(std::string(piece, len));
}
// Malloc'ed piece string of an id (caller checks the range).
char* spm_id_to_piece(void* handle, int id, size_t* len) {
  return CopyOut(P(handle)->IdToPiece(id), len);
}

}  // extern "C"
