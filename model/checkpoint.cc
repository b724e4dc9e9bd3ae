#include "model/checkpoint.h"

#include <caffe2/serialize/inline_container.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <unordered_map>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "model/flops.h"
#include "model/hf_config.h"
#include "model/safetensors.h"
#include "nlohmann/json.hpp"

namespace specprune {
namespace fs = std::filesystem;
namespace {

constexpr const char* kActionHeadPrefix = "action_head.";
constexpr const char* kProprioPrefix = "proprio_projector.";
constexpr const char* kActionHeadFile = "action_head--specprune.safetensors";
constexpr const char* kProprioFile = "proprio_projector--specprune.safetensors";

#define SP_RETURN_IF_ERROR(expr) \
  do {                           \
    absl::Status _st = (expr);   \
    if (!_st.ok()) return _st;   \
  } while (0)

// ---------------------------------------------------------------------------------------------
// A restricted unpickler for torch.save state dicts (pickle protocols 2-5, the opcodes CPython's
// and LibTorch's picklers emit for dicts of tensors). Every read is bounds-checked; only the
// globals a state dict needs resolve, so nothing in the file can run code or allocate more than
// its storages.
namespace pickle {

struct Value;
using Ref = std::shared_ptr<Value>;

enum class Kind {
  kNone,
  kBool,
  kInt,
  kFloat,
  kStr,
  kTuple,
  kList,
  kDict,
  kGlobal,
  kStorage,
  kTensor
};

const char* KindName(Kind k) {
  switch (k) {
    case Kind::kNone:
      return "None";
    case Kind::kBool:
      return "bool";
    case Kind::kInt:
      return "int";
    case Kind::kFloat:
      return "float";
    case Kind::kStr:
      return "str";
    case Kind::kTuple:
      return "tuple";
    case Kind::kList:
      return "list";
    case Kind::kDict:
      return "dict";
    case Kind::kGlobal:
      return "global";
    case Kind::kStorage:
      return "storage";
    case Kind::kTensor:
      return "tensor";
  }
  return "?";
}

struct Value {
  Kind kind = Kind::kNone;
  int64_t i = 0;                                  // kBool, kInt
  double f = 0;                                   // kFloat
  std::string s;                                  // kStr; kGlobal: "module.name"
  std::vector<Ref> items;                         // kTuple, kList
  std::vector<std::pair<Ref, Ref>> dict;          // kDict, in insertion order
  torch::Tensor tensor;                           // kStorage (1-D), kTensor
  std::optional<torch::ScalarType> storage_type;  // kGlobal naming a torch.*Storage class
};

std::optional<torch::ScalarType> StorageType(const std::string& name) {
  static const std::map<std::string, torch::ScalarType> kTypes = {
      {"FloatStorage", torch::kFloat32}, {"DoubleStorage", torch::kFloat64},
      {"HalfStorage", torch::kFloat16},  {"BFloat16Storage", torch::kBFloat16},
      {"LongStorage", torch::kInt64},    {"IntStorage", torch::kInt32},
      {"ShortStorage", torch::kInt16},   {"CharStorage", torch::kInt8},
      {"ByteStorage", torch::kUInt8},    {"BoolStorage", torch::kBool}};
  auto it = kTypes.find(name);
  if (it == kTypes.end()) return std::nullopt;
  return it->second;
}

// Returns the storage (a 1-D CPU tensor of `numel` elements) for a persistent id.
using StorageLoader = std::function<absl::StatusOr<torch::Tensor>(
    const std::string& key, torch::ScalarType type, int64_t numel)>;

class StateDictUnpickler {
 public:
  StateDictUnpickler(const uint8_t* data, size_t size, StorageLoader loader)
      : data_(data), size_(size), loader_(std::move(loader)) {}
  // Values may nest deeply or form cycles (through the memo); unlinking them all first keeps
  // their destruction flat.
  ~StateDictUnpickler() {
    for (auto& v : arena_) {
      v->items.clear();
      v->dict.clear();
    }
  }
  StateDictUnpickler(const StateDictUnpickler&) = delete;
  StateDictUnpickler& operator=(const StateDictUnpickler&) = delete;

  absl::StatusOr<Ref> Run() {
    bool stop = false;
    while (!stop) {
      if (pos_ >= size_) return absl::InvalidArgumentError("pickle ends without STOP (truncated)");
      const size_t at = pos_;
      const uint8_t op = data_[pos_++];
      if (auto s = Step(op, &stop); !s.ok())
        return absl::InvalidArgumentError(
            absl::StrFormat("pickle byte %d (opcode 0x%02x): %s", at, op, s.message()));
    }
    if (stack_.size() != 1 || !marks_.empty())
      return absl::InvalidArgumentError(
          absl::StrCat("pickle leaves ", stack_.size(), " values on the stack at STOP"));
    return stack_[0];
  }

 private:
  Ref Make(Kind k) {
    auto v = std::make_shared<Value>();
    v->kind = k;
    arena_.push_back(v);
    return v;
  }
  Ref MakeInt(int64_t i, Kind k = Kind::kInt) {
    auto v = Make(k);
    v->i = i;
    return v;
  }
  Ref MakeStr(std::string s, Kind k = Kind::kStr) {
    auto v = Make(k);
    v->s = std::move(s);
    return v;
  }
  absl::Status Need(size_t n) {
    if (n > size_ - pos_) return absl::InvalidArgumentError("truncated operand");
    return absl::OkStatus();
  }
  uint64_t ReadLe(size_t n) {  // after Need(n)
    uint64_t v = 0;
    for (size_t k = 0; k < n; ++k) v |= static_cast<uint64_t>(data_[pos_ + k]) << (8 * k);
    pos_ += n;
    return v;
  }
  absl::StatusOr<uint64_t> Le(size_t n) {
    SP_RETURN_IF_ERROR(Need(n));
    return ReadLe(n);
  }
  absl::StatusOr<std::string> Bytes(uint64_t n) {
    if (n > size_ - pos_) return absl::InvalidArgumentError("string runs past the end");
    std::string s(reinterpret_cast<const char*>(data_ + pos_), n);
    pos_ += n;
    return s;
  }
  absl::StatusOr<std::string> Line() {
    const size_t start = pos_;
    while (pos_ < size_ && data_[pos_] != '\n' && pos_ - start < 256) ++pos_;
    if (pos_ >= size_ || data_[pos_] != '\n') return absl::InvalidArgumentError("bad GLOBAL name");
    std::string s(reinterpret_cast<const char*>(data_ + start), pos_ - start);
    ++pos_;
    return s;
  }
  absl::StatusOr<Ref> Pop() {
    if (stack_.empty() || (!marks_.empty() && stack_.size() <= marks_.back()))
      return absl::InvalidArgumentError("stack underflow");
    Ref v = std::move(stack_.back());
    stack_.pop_back();
    return v;
  }
  absl::StatusOr<std::vector<Ref>> PopToMark() {
    if (marks_.empty()) return absl::InvalidArgumentError("no MARK");
    const size_t m = marks_.back();
    marks_.pop_back();
    if (m > stack_.size()) return absl::InvalidArgumentError("MARK above the stack");
    std::vector<Ref> items(stack_.begin() + m, stack_.end());
    stack_.resize(m);
    return items;
  }
  absl::StatusOr<Ref> Top(Kind want) {
    if (stack_.empty() || (!marks_.empty() && stack_.size() <= marks_.back()))
      return absl::InvalidArgumentError("stack underflow");
    if (stack_.back()->kind != want)
      return absl::InvalidArgumentError(
          absl::StrCat("expected a ", KindName(want), ", found a ", KindName(stack_.back()->kind)));
    return stack_.back();
  }
  absl::Status Memo(uint64_t id) {
    if (stack_.empty()) return absl::InvalidArgumentError("memoizing an empty stack");
    memo_[id] = stack_.back();
    return absl::OkStatus();
  }
  absl::Status Get(uint64_t id) {
    auto it = memo_.find(id);
    if (it == memo_.end()) return absl::InvalidArgumentError(absl::StrCat("memo ", id, " unset"));
    stack_.push_back(it->second);
    return absl::OkStatus();
  }
  absl::Status SetItems(const Ref& dict, std::vector<Ref>& kv) {
    if (kv.size() % 2 != 0) return absl::InvalidArgumentError("odd number of dict items");
    for (size_t k = 0; k < kv.size(); k += 2) dict->dict.emplace_back(kv[k], kv[k + 1]);
    return absl::OkStatus();
  }
  absl::Status Tuple(size_t n) {
    std::vector<Ref> items(n);
    for (size_t k = n; k-- > 0;) {
      auto v = Pop();
      if (!v.ok()) return v.status();
      items[k] = *v;
    }
    auto t = Make(Kind::kTuple);
    t->items = std::move(items);
    stack_.push_back(t);
    return absl::OkStatus();
  }

  absl::StatusOr<Ref> Global(const std::string& module, const std::string& name) {
    const std::string full = absl::StrCat(module, ".", name);
    static const std::set<std::string> kCallables = {"collections.OrderedDict",
                                                     "torch._utils._rebuild_tensor_v2",
                                                     "torch._utils._rebuild_tensor",
                                                     "torch._utils._rebuild_parameter",
                                                     "torch._utils._rebuild_parameter_with_state",
                                                     "torch.jit._pickle.restore_type_tag"};
    if (kCallables.count(full)) return MakeStr(full, Kind::kGlobal);
    if (module == "torch") {
      if (auto t = StorageType(name)) {
        auto g = MakeStr(full, Kind::kGlobal);
        g->storage_type = t;
        return g;
      }
    }
    return absl::InvalidArgumentError(absl::StrCat(
        "global ", full, " is not allowed (only tensors, storages and dicts are read)"));
  }

  absl::StatusOr<Ref> RebuildTensor(const std::vector<Ref>& a) {
    const Ref& storage = a[0];
    if (storage->kind != Kind::kStorage)
      return absl::InvalidArgumentError("tensor without a storage");
    if (a[1]->kind != Kind::kInt || a[2]->kind != Kind::kTuple || a[3]->kind != Kind::kTuple ||
        a[2]->items.size() != a[3]->items.size() || a[2]->items.size() > 16)
      return absl::InvalidArgumentError("malformed tensor (offset, size, stride)");
    const int64_t offset = a[1]->i, numel = storage->tensor.numel();
    std::vector<int64_t> size, stride;
    int64_t count = 1, last = offset;
    constexpr int64_t kMax = int64_t{1} << 40;
    for (size_t d = 0; d < a[2]->items.size(); ++d) {
      const Ref& sz = a[2]->items[d];
      const Ref& st = a[3]->items[d];
      if (sz->kind != Kind::kInt || st->kind != Kind::kInt || sz->i < 0 || sz->i > kMax ||
          st->i < 0 || st->i > kMax)
        return absl::InvalidArgumentError("malformed tensor size or stride");
      size.push_back(sz->i);
      stride.push_back(st->i);
      if (sz->i == 0) {
        count = 0;
      } else if (count > 0 && (__builtin_mul_overflow(count, sz->i, &count) || count > kMax)) {
        return absl::InvalidArgumentError("tensor too large");
      }
      int64_t extent = 0;
      if (sz->i > 0 && (__builtin_mul_overflow(sz->i - 1, st->i, &extent) ||
                        __builtin_add_overflow(last, extent, &last)))
        return absl::InvalidArgumentError("tensor view overflows");
    }
    if (offset < 0 || (count > 0 && last >= numel))
      return absl::InvalidArgumentError(absl::StrCat("tensor view (offset ", offset,
                                                     ", last element ", last,
                                                     ") outside its storage of ", numel));
    auto t = Make(Kind::kTensor);
    t->tensor = storage->tensor.as_strided(size, stride, offset);
    return t;
  }

  absl::StatusOr<Ref> Call(const Ref& fn, const Ref& args) {
    if (fn->kind != Kind::kGlobal || fn->storage_type)
      return absl::InvalidArgumentError(absl::StrCat("cannot call a ", KindName(fn->kind)));
    if (args->kind != Kind::kTuple) return absl::InvalidArgumentError("arguments are not a tuple");
    const auto& a = args->items;
    const std::string& f = fn->s;
    if (f == "collections.OrderedDict") {
      auto d = Make(Kind::kDict);
      if (a.empty()) return d;
      if (a.size() == 1 && (a[0]->kind == Kind::kList || a[0]->kind == Kind::kTuple)) {
        for (const Ref& pair : a[0]->items) {
          if (pair->kind != Kind::kTuple || pair->items.size() != 2)
            return absl::InvalidArgumentError("OrderedDict items are not pairs");
          d->dict.emplace_back(pair->items[0], pair->items[1]);
        }
        return d;
      }
      return absl::InvalidArgumentError("unsupported OrderedDict arguments");
    }
    if (f == "torch._utils._rebuild_tensor_v2" && (a.size() == 6 || a.size() == 7))
      return RebuildTensor(a);
    if (f == "torch._utils._rebuild_tensor" && a.size() == 4) return RebuildTensor(a);
    if ((f == "torch._utils._rebuild_parameter" && a.size() == 3) ||
        (f == "torch._utils._rebuild_parameter_with_state" && a.size() == 4)) {
      if (a[0]->kind != Kind::kTensor) return absl::InvalidArgumentError("parameter without data");
      return a[0];
    }
    if (f == "torch.jit._pickle.restore_type_tag" && a.size() == 2) return a[0];
    return absl::InvalidArgumentError(absl::StrCat(f, " called with ", a.size(), " arguments"));
  }

  absl::StatusOr<Ref> PersistentLoad(const Ref& pid) {
    if (pid->kind != Kind::kTuple || pid->items.size() != 5 || pid->items[0]->kind != Kind::kStr ||
        pid->items[0]->s != "storage" || pid->items[1]->kind != Kind::kGlobal ||
        !pid->items[1]->storage_type || pid->items[2]->kind != Kind::kStr ||
        pid->items[4]->kind != Kind::kInt)
      return absl::InvalidArgumentError(
          "persistent id is not ('storage', torch.<T>Storage, key, location, numel)");
    const std::string& key = pid->items[2]->s;
    if (key.empty() || key.size() > 64 ||
        key.find_first_not_of("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_") !=
            std::string::npos)
      return absl::InvalidArgumentError(absl::StrCat("bad storage key \"", key, "\""));
    auto t = loader_(key, *pid->items[1]->storage_type, pid->items[4]->i);
    if (!t.ok()) return t.status();
    auto v = Make(Kind::kStorage);
    v->tensor = *t;
    return v;
  }

  absl::Status Step(uint8_t op, bool* stop) {
    switch (op) {
      case 0x80: {  // PROTO
        auto v = Le(1);
        if (!v.ok()) return v.status();
        if (*v < 2 || *v > 5)
          return absl::InvalidArgumentError(absl::StrCat("pickle protocol ", *v));
        return absl::OkStatus();
      }
      case 0x95:  // FRAME
        return Le(8).status();
      case '(':
        marks_.push_back(stack_.size());
        return absl::OkStatus();
      case '.':
        *stop = true;
        return absl::OkStatus();
      case '0':
        return Pop().status();
      case '1':
        return PopToMark().status();
      case '2': {
        if (stack_.empty()) return absl::InvalidArgumentError("stack underflow");
        stack_.push_back(stack_.back());
        return absl::OkStatus();
      }
      case 'N':
        stack_.push_back(Make(Kind::kNone));
        return absl::OkStatus();
      case 0x88:
      case 0x89:
        stack_.push_back(MakeInt(op == 0x88 ? 1 : 0, Kind::kBool));
        return absl::OkStatus();
      case 'J': {
        auto v = Le(4);
        if (!v.ok()) return v.status();
        stack_.push_back(MakeInt(static_cast<int32_t>(static_cast<uint32_t>(*v))));
        return absl::OkStatus();
      }
      case 'K':
      case 'M': {
        auto v = Le(op == 'K' ? 1 : 2);
        if (!v.ok()) return v.status();
        stack_.push_back(MakeInt(static_cast<int64_t>(*v)));
        return absl::OkStatus();
      }
      case 0x8a: {  // LONG1
        auto n = Le(1);
        if (!n.ok()) return n.status();
        if (*n > 8) return absl::InvalidArgumentError("integer wider than 64 bits");
        auto v = Le(*n);
        if (!v.ok()) return v.status();
        uint64_t u = *v;
        if (*n > 0 && *n < 8 && (u >> (8 * *n - 1)) & 1) u |= ~uint64_t{0} << (8 * *n);
        stack_.push_back(MakeInt(static_cast<int64_t>(u)));
        return absl::OkStatus();
      }
      case 'G': {  // BINFLOAT, big-endian
        SP_RETURN_IF_ERROR(Need(8));
        uint64_t u = 0;
        for (int k = 0; k < 8; ++k) u = (u << 8) | data_[pos_ + k];
        pos_ += 8;
        auto v = Make(Kind::kFloat);
        std::memcpy(&v->f, &u, 8);
        stack_.push_back(v);
        return absl::OkStatus();
      }
      case 'X':
      case 0x8c:
      case 0x8d: {  // BINUNICODE, SHORT_BINUNICODE, BINUNICODE8
        auto n = Le(op == 'X' ? 4 : op == 0x8c ? 1 : 8);
        if (!n.ok()) return n.status();
        auto s = Bytes(*n);
        if (!s.ok()) return s.status();
        stack_.push_back(MakeStr(std::move(*s)));
        return absl::OkStatus();
      }
      case ')':
        return Tuple(0);
      case 0x85:
      case 0x86:
      case 0x87:
        return Tuple(op - 0x84);
      case 't': {
        auto items = PopToMark();
        if (!items.ok()) return items.status();
        auto t = Make(Kind::kTuple);
        t->items = std::move(*items);
        stack_.push_back(t);
        return absl::OkStatus();
      }
      case ']':
        stack_.push_back(Make(Kind::kList));
        return absl::OkStatus();
      case 'l': {
        auto items = PopToMark();
        if (!items.ok()) return items.status();
        auto l = Make(Kind::kList);
        l->items = std::move(*items);
        stack_.push_back(l);
        return absl::OkStatus();
      }
      case 'a': {
        auto v = Pop();
        if (!v.ok()) return v.status();
        auto l = Top(Kind::kList);
        if (!l.ok()) return l.status();
        (*l)->items.push_back(*v);
        return absl::OkStatus();
      }
      case 'e': {
        auto items = PopToMark();
        if (!items.ok()) return items.status();
        auto l = Top(Kind::kList);
        if (!l.ok()) return l.status();
        (*l)->items.insert((*l)->items.end(), items->begin(), items->end());
        return absl::OkStatus();
      }
      case '}':
        stack_.push_back(Make(Kind::kDict));
        return absl::OkStatus();
      case 'd': {
        auto items = PopToMark();
        if (!items.ok()) return items.status();
        auto d = Make(Kind::kDict);
        SP_RETURN_IF_ERROR(SetItems(d, *items));
        stack_.push_back(d);
        return absl::OkStatus();
      }
      case 's': {
        auto v = Pop();
        if (!v.ok()) return v.status();
        auto k = Pop();
        if (!k.ok()) return k.status();
        auto d = Top(Kind::kDict);
        if (!d.ok()) return d.status();
        (*d)->dict.emplace_back(*k, *v);
        return absl::OkStatus();
      }
      case 'u': {
        auto items = PopToMark();
        if (!items.ok()) return items.status();
        auto d = Top(Kind::kDict);
        if (!d.ok()) return d.status();
        return SetItems(*d, *items);
      }
      case 'q':
      case 'r': {
        auto id = Le(op == 'q' ? 1 : 4);
        if (!id.ok()) return id.status();
        return Memo(*id);
      }
      case 0x94:  // MEMOIZE
        return Memo(memo_.size());
      case 'h':
      case 'j': {
        auto id = Le(op == 'h' ? 1 : 4);
        if (!id.ok()) return id.status();
        return Get(*id);
      }
      case 'c': {
        auto module = Line();
        if (!module.ok()) return module.status();
        auto name = Line();
        if (!name.ok()) return name.status();
        auto g = Global(*module, *name);
        if (!g.ok()) return g.status();
        stack_.push_back(*g);
        return absl::OkStatus();
      }
      case 0x93: {  // STACK_GLOBAL
        auto name = Pop();
        if (!name.ok()) return name.status();
        auto module = Pop();
        if (!module.ok()) return module.status();
        if ((*name)->kind != Kind::kStr || (*module)->kind != Kind::kStr)
          return absl::InvalidArgumentError("STACK_GLOBAL needs two strings");
        auto g = Global((*module)->s, (*name)->s);
        if (!g.ok()) return g.status();
        stack_.push_back(*g);
        return absl::OkStatus();
      }
      case 'R': {
        auto args = Pop();
        if (!args.ok()) return args.status();
        auto fn = Pop();
        if (!fn.ok()) return fn.status();
        auto r = Call(*fn, *args);
        if (!r.ok()) return r.status();
        stack_.push_back(*r);
        return absl::OkStatus();
      }
      case 'b': {  // BUILD: only the state of dicts (OrderedDict._metadata) and tensors, dropped
        auto state = Pop();
        if (!state.ok()) return state.status();
        if (stack_.empty() ||
            (stack_.back()->kind != Kind::kDict && stack_.back()->kind != Kind::kTensor))
          return absl::InvalidArgumentError("BUILD on something other than a dict or tensor");
        return absl::OkStatus();
      }
      case 'Q': {
        auto pid = Pop();
        if (!pid.ok()) return pid.status();
        auto st = PersistentLoad(*pid);
        if (!st.ok()) return st.status();
        stack_.push_back(*st);
        return absl::OkStatus();
      }
      default:
        return absl::InvalidArgumentError("unsupported opcode");
    }
  }

  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
  StorageLoader loader_;
  std::vector<Ref> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, Ref> memo_;
  std::vector<Ref> arena_;  // every value created, see the destructor
};

}  // namespace pickle

// ---------------------------------------------------------------------------------------------

// Tensors a real OpenVLA checkpoint carries that the served model does not use.
bool IsKnownUnused(const std::string& name) {
  static const char* kUnused[] = {"language_model.lm_head.",
                                  ".norm.weight",
                                  ".norm.bias",
                                  ".attn_pool.",
                                  ".head.",
                                  ".fc_norm."};
  if (absl::StartsWith(name, "language_model.lm_head.")) return true;
  if (!absl::StartsWith(name, "vision_backbone.")) return false;
  for (const char* u : kUnused)
    if (absl::StrContains(name, u)) {
      // vision_backbone.<tower>.norm.* (final norm) but not blocks.N.norm1/norm2.
      if (!absl::StrContains(name, ".blocks.")) return true;
    }
  return false;
}

absl::StatusOr<torch::ScalarType> TorchDType(DType t) {
  switch (t) {
    case DType::kF32:
      return torch::kFloat32;
    case DType::kF16:
      return torch::kFloat16;
    case DType::kBF16:
      return torch::kBFloat16;
    case DType::kF64:
      return torch::kFloat64;
    default:
      return absl::InvalidArgumentError(std::string(DTypeName(t)));
  }
}

bool IsWeightDType(torch::ScalarType t) {
  return t == torch::kFloat32 || t == torch::kFloat16 || t == torch::kBFloat16 ||
         t == torch::kFloat64;
}

std::string ShapeString(const std::vector<int64_t>& s) {
  return absl::StrCat("[", absl::StrJoin(s, ","), "]");
}

// One checkpoint tensor: a view into a mapped safetensors file, or a tensor read from a .pt file.
struct Entry {
  const TensorView* view = nullptr;
  torch::Tensor tensor;
  std::vector<int64_t> shape() const { return view ? view->shape : tensor.sizes().vec(); }
  bool dtype_ok() const {
    return view ? TorchDType(view->dtype).ok() : IsWeightDType(tensor.scalar_type());
  }
  std::string dtype_name() const {
    return view ? std::string(DTypeName(view->dtype))
                : std::string(c10::toString(tensor.scalar_type()));
  }
};

// All checkpoint tensors of a directory under their model names.
struct CheckpointTensors {
  std::vector<std::unique_ptr<ShardedSafetensors>> backbone;
  std::vector<std::unique_ptr<SafetensorsFile>> side_files;
  std::map<std::string, Entry> by_name;
  std::vector<std::string> duplicates;
};

// The side file `<stem>--*.safetensors` or `<stem>--*.pt` of a directory (exactly one).
absl::StatusOr<std::string> FindSideFile(const std::string& dir, const std::string& stem) {
  std::vector<std::string> found;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string n = e.path().filename().string();
    if (absl::StartsWith(n, stem + "--") &&
        (absl::EndsWith(n, ".safetensors") || absl::EndsWith(n, ".pt")))
      found.push_back(n);
  }
  if (found.empty())
    return absl::NotFoundError(
        absl::StrCat(dir, ": no ", stem, "--*.safetensors (or ", stem, "--*.pt) file"));
  std::sort(found.begin(), found.end());
  if (found.size() > 1)
    return absl::FailedPreconditionError(
        absl::StrCat(dir, ": several ", stem, "--* files: ", absl::StrJoin(found, ", ")));
  return (fs::path(dir) / found[0]).string();
}

absl::StatusOr<CheckpointTensors> OpenCheckpoint(const std::string& dir) {
  CheckpointTensors ct;
  auto backbone = ShardedSafetensors::Open(dir);
  if (!backbone.ok()) return backbone.status();
  for (const auto& n : (*backbone)->names()) ct.by_name[n].view = (*backbone)->Find(n);
  ct.backbone.push_back(std::move(*backbone));
  for (auto [stem, prefix] : {std::pair{"action_head", kActionHeadPrefix},
                              std::pair{"proprio_projector", kProprioPrefix}}) {
    auto path = FindSideFile(dir, stem);
    if (!path.ok()) return path.status();
    std::vector<std::pair<std::string, Entry>> entries;
    if (absl::EndsWith(*path, ".pt")) {
      auto sd = ReadTorchStateDict(*path);
      if (!sd.ok()) return sd.status();
      for (auto& [n, t] : *sd) entries.push_back({n, Entry{nullptr, std::move(t)}});
    } else {
      auto file = SafetensorsFile::Open(*path);
      if (!file.ok()) return file.status();
      for (const auto& n : (*file)->names()) entries.push_back({n, Entry{(*file)->Find(n), {}}});
      ct.side_files.push_back(std::move(*file));
    }
    for (auto& [n, entry] : entries) {
      const std::string name = prefix + (absl::StartsWith(n, "module.") ? n.substr(7) : n);
      if (!ct.by_name.emplace(name, std::move(entry)).second) ct.duplicates.push_back(name);
    }
  }
  return ct;
}

absl::StatusOr<nlohmann::json> ReadConfigJson(const std::string& dir) {
  const std::string path = (fs::path(dir) / "config.json").string();
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  nlohmann::json j;
  try {
    in >> j;
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": invalid JSON: ", e.what()));
  }
  return j;
}

absl::StatusOr<ModelConfig> ConfigFromConfigJson(const nlohmann::json& j, const std::string& path) {
  if (j.is_object() && j.contains("specprune")) {
    auto config = ConfigFromJson(j["specprune"]);
    if (!config.ok())
      return absl::InvalidArgumentError(absl::StrCat(path, ": ", config.status().message()));
    return config;
  }
  if (IsHfOpenVlaConfig(j)) {
    auto config = ModelConfigFromHfConfig(j);
    if (!config.ok())
      return absl::InvalidArgumentError(absl::StrCat(path, ": ", config.status().message()));
    return config;
  }
  return absl::InvalidArgumentError(
      absl::StrCat(path,
                   ": missing the \"specprune\" object with the model shapes, and not a "
                   "Hugging Face OpenVLA config (\"architectures\": "
                   "[\"OpenVLAForActionPrediction\"])"));
}

// ---------------------------------------------------------------------------------------------
// Writing.

absl::Status WriteConfigJson(const ModelConfig& config, const fs::path& dir,
                             torch::ScalarType dtype) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec)
    return absl::InternalError(absl::StrCat("cannot create ", dir.string(), ": ", ec.message()));
  std::ofstream out((dir / "config.json").string());
  nlohmann::json j = {{"specprune", ConfigToJson(config)},
                      {"torch_dtype", dtype == torch::kBFloat16 ? "bfloat16" : "float32"}};
  out << j.dump(2) << "\n";
  if (!out) return absl::InternalError(absl::StrCat("cannot write ", dir.string(), "/config.json"));
  return absl::OkStatus();
}

// Streams named tensors into the directory layout: model.* tensors into size-limited shards,
// action_head.* / proprio_projector.* into their side files. Each tensor is converted to the
// output dtype when added; a shard is written (and its tensors released) once full.
class ModelFileWriter {
 public:
  ModelFileWriter(fs::path dir, torch::ScalarType dtype, int64_t max_shard_bytes)
      : dir_(std::move(dir)), dtype_(dtype), max_shard_bytes_(max_shard_bytes) {}

  absl::Status Add(const std::string& name, const torch::Tensor& t) {
    auto out = t.detach().to(torch::kCPU, dtype_).contiguous();
    parameters_ += out.numel();
    const int64_t bytes = out.numel() * static_cast<int64_t>(out.element_size());
    if (absl::StartsWith(name, kActionHeadPrefix)) {
      action_head_.emplace_back(name.substr(std::string(kActionHeadPrefix).size()), out);
    } else if (absl::StartsWith(name, kProprioPrefix)) {
      proprio_.emplace_back(name.substr(std::string(kProprioPrefix).size()), out);
    } else {
      if (!shard_.empty() && shard_bytes_ + bytes > max_shard_bytes_) SP_RETURN_IF_ERROR(Flush());
      shard_.emplace_back(name, out);
      shard_bytes_ += bytes;
    }
    return absl::OkStatus();
  }

  // Writes the side files and the last shard, names the shards and writes the index.
  absl::StatusOr<int64_t> Finish() {
    if (!shard_.empty() || shard_files_.empty()) SP_RETURN_IF_ERROR(Flush());
    SP_RETURN_IF_ERROR(Write(dir_ / kActionHeadFile, action_head_));
    SP_RETURN_IF_ERROR(Write(dir_ / kProprioFile, proprio_));
    const int64_t n = static_cast<int64_t>(shard_files_.size());
    std::set<std::string> final_names;
    std::error_code ec;
    nlohmann::json weight_map = nlohmann::json::object();
    for (int64_t k = 0; k < n; ++k) {
      const std::string name = n == 1 ? "model.safetensors"
                                      : absl::StrFormat("model-%05d-of-%05d.safetensors", k + 1, n);
      fs::rename(dir_ / shard_files_[k], dir_ / name, ec);
      if (ec)
        return absl::InternalError(
            absl::StrCat("renaming shard in ", dir_.string(), ": ", ec.message()));
      final_names.insert(name);
      for (const auto& t : shard_names_[k]) weight_map[t] = name;
    }
    // Files of an earlier checkpoint in the same directory would shadow or contradict this one.
    for (const auto& e : fs::directory_iterator(dir_, ec)) {
      const std::string f = e.path().filename().string();
      const bool ours = f == "model.safetensors" || f == "model.safetensors.index.json" ||
                        (absl::StartsWith(f, "model-") && absl::EndsWith(f, ".safetensors"));
      if (ours && !final_names.count(f)) fs::remove(e.path(), ec);
    }
    if (n > 1) {
      nlohmann::json index = {{"metadata", {{"total_size", total_bytes_}}},
                              {"weight_map", weight_map}};
      const fs::path tmp = dir_ / "model.safetensors.index.json.tmp";
      {
        std::ofstream out(tmp.string());
        out << index.dump(2) << "\n";
        if (!out) return absl::InternalError(absl::StrCat("cannot write ", tmp.string()));
      }
      fs::rename(tmp, dir_ / "model.safetensors.index.json", ec);
      if (ec) return absl::InternalError(absl::StrCat("cannot write the index in ", dir_.string()));
    }
    return n;
  }

  int64_t parameters() const { return parameters_; }

 private:
  using Tensors = std::vector<std::pair<std::string, torch::Tensor>>;

  absl::Status Flush() {
    const std::string tmp =
        absl::StrFormat("model-%05d.safetensors.partial", shard_files_.size() + 1);
    SP_RETURN_IF_ERROR(Write(dir_ / tmp, shard_));
    shard_files_.push_back(tmp);
    std::vector<std::string> names;
    for (const auto& [n, t] : shard_) names.push_back(n);
    shard_names_.push_back(std::move(names));
    total_bytes_ += shard_bytes_;
    shard_.clear();
    shard_bytes_ = 0;
    return absl::OkStatus();
  }

  absl::Status Write(const fs::path& path, const Tensors& tensors) {
    std::vector<TensorView> views;
    views.reserve(tensors.size());
    for (const auto& [name, t] : tensors) {
      TensorView v;
      v.name = name;
      v.dtype = dtype_ == torch::kBFloat16 ? DType::kBF16 : DType::kF32;
      v.shape = t.sizes().vec();
      v.data = static_cast<const uint8_t*>(t.data_ptr());
      v.nbytes = t.numel() * t.element_size();
      views.push_back(std::move(v));
    }
    return WriteSafetensors(path.string(), views, {{"format", "pt"}});
  }

  fs::path dir_;
  torch::ScalarType dtype_;
  int64_t max_shard_bytes_;
  Tensors shard_, action_head_, proprio_;
  int64_t shard_bytes_ = 0, total_bytes_ = 0, parameters_ = 0;
  std::vector<std::string> shard_files_;
  std::vector<std::vector<std::string>> shard_names_;
};

absl::StatusOr<torch::ScalarType> OutputDtype(const CheckpointWriteOptions& options) {
  auto dt = ParseDtype(options.dtype);
  if (!dt.ok()) return dt.status();
  if (options.max_shard_bytes <= 0)
    return absl::InvalidArgumentError("max_shard_bytes must be positive");
  return *dt;
}

}  // namespace

absl::StatusOr<std::vector<std::pair<std::string, torch::Tensor>>> ReadTorchStateDict(
    const std::string& path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec))
    return absl::NotFoundError(absl::StrCat(path, ": no such file"));
  {
    std::ifstream in(path, std::ios::binary);
    char magic[4] = {};
    if (!in.read(magic, 4) || std::memcmp(magic, "PK\x03\x04", 4) != 0)
      return absl::InvalidArgumentError(
          absl::StrCat(path,
                       ": not a zip-format torch.save file (corrupt, or the legacy format of "
                       "PyTorch < 1.6: re-save it with torch.save in a current PyTorch)"));
  }
  auto fail = [&](const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", why));
  };
  try {
    caffe2::serialize::PyTorchStreamReader reader(path);
    if (reader.hasRecord("byteorder")) {
      auto [ptr, n] = reader.getRecord("byteorder");
      const std::string order(static_cast<const char*>(ptr.get()), n);
      if (order != "little")
        return fail(absl::StrCat("byte order \"", order, "\" is not supported"));
    }
    if (!reader.hasRecord("data.pkl")) return fail("no data.pkl record (not a torch.save file)");
    auto [pkl, pkl_size] = reader.getRecord("data.pkl");
    std::map<std::string, torch::Tensor> storages;
    pickle::StorageLoader load = [&](const std::string& key, torch::ScalarType type,
                                     int64_t numel) -> absl::StatusOr<torch::Tensor> {
      if (auto it = storages.find(key); it != storages.end()) {
        if (it->second.scalar_type() != type || it->second.numel() != numel)
          return absl::InvalidArgumentError(
              absl::StrCat("storage ", key, " referenced with two types or sizes"));
        return it->second;
      }
      const std::string record = "data/" + key;
      if (!reader.hasRecord(record))
        return absl::InvalidArgumentError(absl::StrCat("storage record ", record, " is missing"));
      const int64_t item = static_cast<int64_t>(c10::elementSize(type));
      if (numel < 0 || numel > (int64_t{1} << 40))
        return absl::InvalidArgumentError(absl::StrCat("storage ", key, ": bad size ", numel));
      auto [data, n] = reader.getRecord(record);
      if (static_cast<int64_t>(n) != numel * item)
        return absl::InvalidArgumentError(absl::StrCat("storage record ", record, " has ", n,
                                                       " bytes, its header says ", numel * item));
      auto t = torch::empty({numel}, torch::TensorOptions().dtype(type));
      if (n > 0) std::memcpy(t.data_ptr(), data.get(), n);
      storages[key] = t;
      return t;
    };
    pickle::StateDictUnpickler unpickler(static_cast<const uint8_t*>(pkl.get()), pkl_size, load);
    auto root = unpickler.Run();
    if (!root.ok()) return fail(std::string(root.status().message()));
    if ((*root)->kind != pickle::Kind::kDict)
      return fail(absl::StrCat("holds a ", pickle::KindName((*root)->kind),
                               ", not a state dict {name: tensor}"));
    std::vector<std::pair<std::string, torch::Tensor>> out;
    std::map<std::string, size_t> position;
    for (const auto& [k, v] : (*root)->dict) {
      if (k->kind != pickle::Kind::kStr)
        return fail(absl::StrCat("state dict key is a ", pickle::KindName(k->kind), ", not a str"));
      if (v->kind != pickle::Kind::kTensor)
        return fail(absl::StrCat("entry \"", k->s, "\" is a ", pickle::KindName(v->kind),
                                 ", not a tensor (expected a flat state dict such as "
                                 "Module.state_dict())"));
      if (auto it = position.find(k->s); it != position.end()) {
        out[it->second].second = v->tensor;  // Python semantics: the last value wins
      } else {
        position[k->s] = out.size();
        out.emplace_back(k->s, v->tensor);
      }
    }
    return out;
  } catch (const c10::Error& e) {
    return fail(absl::StrCat("not a readable torch.save archive (truncated or corrupt?): ",
                             e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return fail(absl::StrCat("not a readable torch.save archive: ", e.what()));
  }
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& dir) {
  auto j = ReadConfigJson(dir);
  if (!j.ok()) return j.status();
  return ConfigFromConfigJson(*j, (fs::path(dir) / "config.json").string());
}

absl::Status LoadWeights(const std::string& dir, VlaModel& model,
                         const std::string& may_be_missing_prefix) {
  auto ct = OpenCheckpoint(dir);
  if (!ct.ok()) return ct.status();
  std::vector<std::string> missing, mismatched, unexpected, bad_dtype;
  auto params = model.module()->named_parameters(/*recurse=*/true);
  std::map<std::string, torch::Tensor> targets;
  for (const auto& p : params) targets[p.key()] = p.value();
  for (const auto& [name, param] : targets) {
    auto it = ct->by_name.find(name);
    if (it == ct->by_name.end()) {
      if (may_be_missing_prefix.empty() || !absl::StartsWith(name, may_be_missing_prefix))
        missing.push_back(name);
      continue;
    }
    const Entry& e = it->second;
    if (!e.dtype_ok()) bad_dtype.push_back(absl::StrCat(name, " (", e.dtype_name(), ")"));
    if (e.shape() != param.sizes().vec())
      mismatched.push_back(absl::StrCat(name, " checkpoint ", ShapeString(e.shape()), " vs model ",
                                        ShapeString(param.sizes().vec())));
  }
  for (const auto& [name, entry] : ct->by_name)
    if (!targets.count(name) && !IsKnownUnused(name)) unexpected.push_back(name);
  if (!missing.empty() || !mismatched.empty() || !unexpected.empty() || !bad_dtype.empty() ||
      !ct->duplicates.empty()) {
    std::string msg =
        absl::StrCat("checkpoint ", dir, " does not match config \"", model.config().name, "\":");
    auto add = [&](const char* what, const std::vector<std::string>& v) {
      if (v.empty()) return;
      const size_t shown = std::min<size_t>(v.size(), 20);
      absl::StrAppend(&msg, " ", v.size(), " ", what, ": ",
                      absl::StrJoin(v.begin(), v.begin() + shown, ", "),
                      v.size() > shown ? ", ..." : "", ";");
    };
    add("missing", missing);
    add("mis-shaped", mismatched);
    add("unexpected", unexpected);
    add("unsupported dtype", bad_dtype);
    add("duplicated", ct->duplicates);
    return absl::InvalidArgumentError(msg);
  }
  try {
    torch::NoGradGuard no_grad;
    for (auto& [name, param] : targets) {
      auto it = ct->by_name.find(name);
      if (it == ct->by_name.end()) continue;  // allowed by may_be_missing_prefix
      const Entry& e = it->second;
      if (e.view != nullptr) {
        const TensorView* v = e.view;
        auto src = torch::from_blob(const_cast<uint8_t*>(v->data), v->shape,
                                    torch::TensorOptions().dtype(*TorchDType(v->dtype)));
        param.copy_(src);
      } else {
        param.copy_(e.tensor);
      }
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("loading ", dir, ": ", e.what_without_backtrace()));
  }
  return absl::OkStatus();
}

absl::StatusOr<DatasetStatistics> LoadModelStatistics(const std::string& dir) {
  const fs::path stats_path = fs::path(dir) / "dataset_statistics.json";
  std::error_code ec;
  if (!fs::exists(stats_path, ec)) {
    auto j = ReadConfigJson(dir);
    if (j.ok() && j->is_object() && j->contains("norm_stats")) {
      auto stats = NormStatsFromHfConfig(*j);
      if (!stats.ok())
        return absl::InvalidArgumentError(
            absl::StrCat((fs::path(dir) / "config.json").string(), ": ", stats.status().message()));
      return stats;
    }
  }
  return DatasetStatistics::Load(stats_path.string());
}

absl::StatusOr<LoadedModel> LoadModelDir(const std::string& dir, const ModelOptions& options) {
  if (!fs::is_directory(dir))
    return absl::NotFoundError(absl::StrCat("model directory ", dir, " does not exist"));
  auto config_json = ReadConfigJson(dir);
  if (!config_json.ok()) return config_json.status();
  const std::string config_path = (fs::path(dir) / "config.json").string();
  auto config = ConfigFromConfigJson(*config_json, config_path);
  if (!config.ok()) return config.status();
  LoadedModel lm;
  lm.dir = dir;
  auto tok = Tokenizer::Load((fs::path(dir) / "tokenizer.model").string());
  if (!tok.ok()) return tok.status();
  if ((*tok)->vocab_size() > config->llm.vocab_size)
    return absl::InvalidArgumentError(absl::StrCat(dir, ": tokenizer has ", (*tok)->vocab_size(),
                                                   " pieces but llm.vocab_size is ",
                                                   config->llm.vocab_size));
  lm.tokenizer = std::move(*tok);
  auto stats = LoadModelStatistics(dir);
  if (!stats.ok()) return stats.status();
  std::error_code ec;
  const std::string stats_source = fs::exists(fs::path(dir) / "dataset_statistics.json", ec)
                                       ? (fs::path(dir) / "dataset_statistics.json").string()
                                       : absl::StrCat(config_path, " norm_stats");
  lm.stats = std::move(*stats);
  for (const auto& key : lm.stats.keys()) {
    auto s = lm.stats.Get(key);
    if ((*s)->action.dim() != config->action_dim ||
        ((*s)->proprio.dim() != 0 && (*s)->proprio.dim() != config->proprio_dim))
      return absl::InvalidArgumentError(absl::StrCat(
          stats_source, ": key \"", key, "\" has action/proprio dims ", (*s)->action.dim(), "/",
          (*s)->proprio.dim(), ", the model needs ", config->action_dim, "/", config->proprio_dim));
  }
  auto model = VlaModel::Create(*config, options);
  if (!model.ok()) return model.status();
  if (auto s = LoadWeights(dir, **model); !s.ok()) return s;
  lm.model = std::move(*model);
  return lm;
}

absl::Status SaveWeights(const VlaModel& model, const std::string& dir, const std::string& dtype) {
  CheckpointWriteOptions options;
  options.dtype = dtype;
  return SaveWeights(model, dir, options);
}

absl::Status SaveWeights(const VlaModel& model, const std::string& dir,
                         const CheckpointWriteOptions& options) {
  auto dt = OutputDtype(options);
  if (!dt.ok()) return dt.status();
  SP_RETURN_IF_ERROR(WriteConfigJson(model.config(), dir, *dt));
  ModelFileWriter writer(dir, *dt, options.max_shard_bytes);
  try {
    for (const auto& p : model.module()->named_parameters(true))
      SP_RETURN_IF_ERROR(writer.Add(p.key(), p.value()));
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("saving ", dir, ": ", e.what_without_backtrace()));
  }
  return writer.Finish().status();
}

absl::StatusOr<CheckpointWriteStats> WriteRandomCheckpoint(const ModelConfig& config, uint64_t seed,
                                                           const std::string& dir,
                                                           const CheckpointWriteOptions& options) {
  if (auto s = ValidateConfig(config); !s.ok()) return s;
  auto dt = OutputDtype(options);
  if (!dt.ok()) return dt.status();
  SP_RETURN_IF_ERROR(WriteConfigJson(config, dir, *dt));
  ModelFileWriter writer(dir, *dt, options.max_shard_bytes);
  CheckpointWriteStats stats;
  // Adds one freshly built submodule's parameters under `prefix`, then lets it go.
  auto add = [&](const std::string& prefix, const torch::nn::Module& unit) -> absl::Status {
    int64_t n = 0;
    for (const auto& p : unit.named_parameters(true)) {
      n += p.value().numel();
      SP_RETURN_IF_ERROR(writer.Add(prefix + p.key(), p.value()));
    }
    stats.largest_unit_parameters = std::max(stats.largest_unit_parameters, n);
    return absl::OkStatus();
  };
  try {
    torch::NoGradGuard no_grad;
    // The order of VlaModuleImpl / VisionBackboneImpl / LlamaModelImpl construction, so the
    // generator's draws land in the same tensors as in VlaModel::Create.
    torch::manual_seed(seed);
    for (const auto& t : config.towers)
      SP_RETURN_IF_ERROR(
          add("vision_backbone." + t.name + ".", *VisionTower(t, config.image_size)));
    SP_RETURN_IF_ERROR(add("projector.", *VisionProjector(config)));
    SP_RETURN_IF_ERROR(add("language_model.model.embed_tokens.",
                           *torch::nn::Embedding(config.llm.vocab_size, config.llm.hidden)));
    for (int64_t l = 0; l < config.llm.layers; ++l)
      SP_RETURN_IF_ERROR(add(absl::StrCat("language_model.model.layers.", l, "."),
                             *LlamaDecoderLayer(config.llm)));
    SP_RETURN_IF_ERROR(
        add("language_model.model.norm.", *RmsNorm(config.llm.hidden, config.llm.rms_norm_eps)));
    SP_RETURN_IF_ERROR(add("action_head.", *L1RegressionActionHead(config)));
    SP_RETURN_IF_ERROR(add("proprio_projector.", *ProprioProjector(config)));
    if (config.instruction_film)
      SP_RETURN_IF_ERROR(add("instruction_film.", *InstructionFilm(config)));
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("writing ", dir, ": ", e.what_without_backtrace()));
  }
  auto shards = writer.Finish();
  if (!shards.ok()) return shards.status();
  stats.shards = *shards;
  stats.parameters = writer.parameters();
  return stats;
}

absl::StatusOr<CheckpointSizeEstimate> EstimateRandomCheckpointMemory(
    const ModelConfig& config, const CheckpointWriteOptions& options) {
  if (auto s = ValidateConfig(config); !s.ok()) return s;
  auto dt = OutputDtype(options);
  if (!dt.ok()) return dt.status();
  const int64_t out_bytes = *dt == torch::kBFloat16 ? 2 : 4;
  const ParameterCounts all = CountParameters(config);
  const int64_t d = config.llm.hidden;
  std::vector<int64_t> units = {all.projector, config.llm.vocab_size * d,
                                (all.llm - config.llm.vocab_size * d - d) / config.llm.layers,
                                all.action_head, all.proprio_projector};
  for (const auto& t : config.towers) {
    ModelConfig one = config;
    one.towers = {t};
    units.push_back(CountParameters(one).vision);
  }
  CheckpointSizeEstimate e;
  e.parameters = all.total();
  e.largest_unit_parameters = *std::max_element(units.begin(), units.end());
  e.disk_bytes = e.parameters * out_bytes;
  // One unit in fp32 + its converted copy + a full shard (its tensors may exceed the limit by
  // one tensor) + the side files (kept until the end).
  const int64_t side = (all.action_head + all.proprio_projector) * out_bytes;
  const int64_t shard =
      std::min(options.max_shard_bytes + e.largest_unit_parameters * out_bytes, e.disk_bytes);
  e.peak_memory_bytes =
      e.largest_unit_parameters * (4 + (out_bytes == 4 ? 0 : out_bytes)) + shard + side;
  return e;
}

}  // namespace specprune
