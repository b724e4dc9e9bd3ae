// SentencePiece is reached through a small shared library (model/sentencepiece_shim.cc) loaded
// with RTLD_LOCAL: libsentencepiece embeds its own protobuf and must not be linked next to
// libprotobuf (LibTorch, gRPC). See the shim and model/CMakeLists.txt for details.
#include "model/tokenizer.h"

#include <dlfcn.h>
#include <sys/stat.h>

#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

#ifndef SPECPRUNE_SPM_SHIM_PATH
#define SPECPRUNE_SPM_SHIM_PATH "libspecprune_spm_shim.so"
#endif

namespace specprune {

namespace {

// Entry points of the shim (see model/sentencepiece_shim.cc).
struct SpmApi {
  void* (*load)(const char*, char**);
  void (*free_handle)(void*);
  void (*free_buffer)(void*);
  int (*encode)(void*, const char*, size_t, int**, size_t*);
  int (*decode)(void*, const int*, size_t, char**, size_t*);
  int (*piece_size)(void*);
  int (*bos_id)(void*);
  int (*eos_id)(void*);
  int (*unk_id)(void*);
  int (*pad_id)(void*);
  int (*piece_to_id)(void*, const char*, size_t);
  char* (*id_to_piece)(void*, int, size_t*);
};

// Beside an installed executable: <prefix>/bin/x -> <prefix>/lib/libspecprune_spm_shim.so.
std::string InstalledShimPath() {
  std::error_code error;
  const std::filesystem::path exe = std::filesystem::read_symlink("/proc/self/exe", error);
  if (error) return "";
  return (exe.parent_path().parent_path() / "lib" / "libspecprune_spm_shim.so").string();
}

// Loads the shim once per process. Search order: $SPECPRUNE_SPM_SHIM, the build-time path, the
// installed layout beside the executable, the dynamic loader's search path.
absl::StatusOr<const SpmApi*> GetSpmApi() {
  static SpmApi api;
  static absl::Status status = [] {
    std::vector<std::string> candidates;
    if (const char* env = std::getenv("SPECPRUNE_SPM_SHIM")) candidates.push_back(env);
    candidates.push_back(SPECPRUNE_SPM_SHIM_PATH);
    if (std::string installed = InstalledShimPath(); !installed.empty()) {
      candidates.push_back(installed);
    }
    candidates.push_back("libspecprune_spm_shim.so");
    void* lib = nullptr;
    std::string errors;
    for (const auto& c : candidates) {
      // No RTLD_DEEPBIND: the shim's libsentencepiece copy is DF_SYMBOLIC instead, so sanitizer
      // builds load it too.
      lib = ::dlopen(c.c_str(), RTLD_NOW | RTLD_LOCAL);
      if (lib != nullptr) break;
      const char* e = ::dlerror();
      absl::StrAppend(&errors, " ", c, ": ", e ? e : "?", ";");
    }
    if (lib == nullptr)
      return absl::FailedPreconditionError(
          absl::StrCat("cannot load the SentencePiece shim library:", errors));
    bool ok = true;
    auto sym = [&](const char* name) {
      void* p = ::dlsym(lib, name);
      ok = ok && p != nullptr;
      return p;
    };
    api.load = reinterpret_cast<decltype(api.load)>(sym("spm_load"));
    api.free_handle = reinterpret_cast<decltype(api.free_handle)>(sym("spm_free"));
    api.free_buffer = reinterpret_cast<decltype(api.free_buffer)>(sym("spm_free_buffer"));
    api.encode = reinterpret_cast<decltype(api.encode)>(sym("spm_encode"));
    api.decode = reinterpret_cast<decltype(api.decode)>(sym("spm_decode"));
    api.piece_size = reinterpret_cast<decltype(api.piece_size)>(sym("spm_piece_size"));
    api.bos_id = reinterpret_cast<decltype(api.bos_id)>(sym("spm_bos_id"));
    api.eos_id = reinterpret_cast<decltype(api.eos_id)>(sym("spm_eos_id"));
    api.unk_id = reinterpret_cast<decltype(api.unk_id)>(sym("spm_unk_id"));
    api.pad_id = reinterpret_cast<decltype(api.pad_id)>(sym("spm_pad_id"));
    api.piece_to_id = reinterpret_cast<decltype(api.piece_to_id)>(sym("spm_piece_to_id"));
    api.id_to_piece = reinterpret_cast<decltype(api.id_to_piece)>(sym("spm_id_to_piece"));
    if (!ok) return absl::FailedPreconditionError("SentencePiece shim library lacks symbols");
    return absl::OkStatus();
  }();
  if (!status.ok()) return status;
  return &api;
}

}  // namespace

// Owns one SentencePiece processor inside the shim.
struct Tokenizer::Impl {
  const SpmApi* api = nullptr;
  void* handle = nullptr;
  ~Impl() {
    if (handle != nullptr) api->free_handle(handle);
  }
};

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Tokenizer::~Tokenizer() = default;

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Load(const std::string& model_path) {
  struct stat st;
  if (::stat(model_path.c_str(), &st) != 0) {
    return absl::NotFoundError(absl::StrCat(model_path, ": tokenizer model not found"));
  }
  if (!S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat(model_path, ": not a regular file"));
  }
  auto api = GetSpmApi();
  if (!api.ok()) return api.status();
  auto impl = std::make_unique<Impl>();
  impl->api = *api;
  char* error = nullptr;
  impl->handle = impl->api->load(model_path.c_str(), &error);
  if (impl->handle == nullptr) {
    std::string message = error != nullptr ? error : "unknown error";
    if (error != nullptr) impl->api->free_buffer(error);
    return absl::InvalidArgumentError(
        absl::StrCat(model_path, ": not a valid SentencePiece model: ", message));
  }
  if (impl->api->piece_size(impl->handle) <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(model_path, ": empty vocabulary"));
  }
  return std::unique_ptr<Tokenizer>(new Tokenizer(std::move(impl)));
}

std::vector<int64_t> Tokenizer::Encode(std::string_view text) const {
  int* ids = nullptr;
  size_t n = 0;
  // Encode only fails for an unloaded model, which Load() rules out.
  if (impl_->api->encode(impl_->handle, text.data(), text.size(), &ids, &n) != 0) return {};
  std::vector<int64_t> out(ids, ids + n);
  impl_->api->free_buffer(ids);
  return out;
}

std::string Tokenizer::Decode(const std::vector<int64_t>& ids) const {
  const int64_t n = vocab_size();
  std::vector<int> in;
  in.reserve(ids.size());
  for (int64_t id : ids) in.push_back(static_cast<int>(id >= 0 && id < n ? id : unk_id()));
  char* text = nullptr;
  size_t len = 0;
  if (impl_->api->decode(impl_->handle, in.data(), in.size(), &text, &len) != 0) return "";
  std::string out(text, len);
  impl_->api->free_buffer(text);
  return out;
}

int64_t Tokenizer::vocab_size() const { return impl_->api->piece_size(impl_->handle); }
int64_t Tokenizer::bos_id() const { return impl_->api->bos_id(impl_->handle); }
int64_t Tokenizer::eos_id() const { return impl_->api->eos_id(impl_->handle); }
int64_t Tokenizer::unk_id() const { return impl_->api->unk_id(impl_->handle); }

int64_t Tokenizer::pad_id() const {
  const int pad = impl_->api->pad_id(impl_->handle);
  return pad >= 0 ? pad : unk_id();
}

int64_t Tokenizer::PieceToId(std::string_view piece) const {
  const int id = impl_->api->piece_to_id(impl_->handle, piece.data(), piece.size());
  // SentencePiece answers unk_id for unknown pieces; only "<unk>" itself
  // really maps there.
  if (id == unk_id() && piece != IdToPiece(id)) return -1;
  return id;
}

std::string Tokenizer::IdToPiece(int64_t id) const {
  if (id < 0 || id >= vocab_size()) return "";
  size_t len = 0;
  char* p = impl_->api->id_to_piece(impl_->handle, static_cast<int>(id), &len);
  if (p == nullptr) return "";
  std::string out(p, len);
  impl_->api->free_buffer(p);
  return out;
}

}  // namespace specprune
