#include "model/torch_pickle.h"

#include <cstring>
#include <map>
#include <set>
#include <unordered_map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "util/status_macros.h"

namespace specprune::torch_pickle {

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

namespace {

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

// The pickle machine: a stack, MARKs and a memo over data[0, size), one opcode at a time (see the
// header for what it accepts).
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

  // Runs one opcode (dispatching it to the handler of its group); STOP sets *stop.
  absl::Status Step(uint8_t op, bool* stop) {
    switch (op) {
      case 0x80:
      case 0x95:
      case '(':
      case '.':
      case '0':
      case '1':
      case '2':
      case 'q':
      case 'r':
      case 0x94:
      case 'h':
      case 'j':
        return StepStack(op, stop);
      case 'N':
      case 0x88:
      case 0x89:
      case 'J':
      case 'K':
      case 'M':
      case 0x8a:
      case 'G':
      case 'X':
      case 0x8c:
      case 0x8d:
        return StepScalar(op);
      case ')':
      case 0x85:
      case 0x86:
      case 0x87:
      case 't':
      case ']':
      case 'l':
      case 'a':
      case 'e':
      case '}':
      case 'd':
      case 's':
      case 'u':
        return StepContainer(op);
      case 'c':
      case 0x93:
      case 'R':
      case 'b':
      case 'Q':
        return StepObject(op);
      default:
        return absl::InvalidArgumentError("unsupported opcode");
    }
  }

  // PROTO, FRAME, MARK, STOP, POP, POP_MARK, DUP and the memo opcodes.
  absl::Status StepStack(uint8_t op, bool* stop) {
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
      default:
        return absl::InvalidArgumentError("unsupported opcode");
    }
  }

  // None, bools, ints, floats and strings.
  absl::Status StepScalar(uint8_t op) {
    switch (op) {
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
      default:
        return absl::InvalidArgumentError("unsupported opcode");
    }
  }

  // Tuples, lists and dicts.
  absl::Status StepContainer(uint8_t op) {
    switch (op) {
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
      default:
        return absl::InvalidArgumentError("unsupported opcode");
    }
  }

  // GLOBAL, STACK_GLOBAL, REDUCE, BUILD and BINPERSID: the restricted object model.
  absl::Status StepObject(uint8_t op) {
    switch (op) {
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

}  // namespace

absl::Status Unpickle(const uint8_t* data, size_t size, const StorageLoader& loader,
                      const std::function<absl::Status(const Value& root)>& visit) {
  StateDictUnpickler unpickler(data, size, loader);
  absl::StatusOr<Ref> root = unpickler.Run();
  if (!root.ok()) return root.status();
  return visit(**root);
}

}  // namespace specprune::torch_pickle
