// PyTorch .pt side files (action_head--*.pt, proprio_projector--*.pt): state dicts written by
// torch::pickle_save and by Python's torch.save (emulated byte for byte, PythonStateDictPickler),
// read by the restricted pickle reader (model/torch_pickle.h), and corrupt or foreign files.
#include <caffe2/serialize/inline_container.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>

#include "absl/strings/escaping.h"
#include "model/checkpoint.h"
#include "tests/checkpoint_test_fixture.h"

namespace specprune {
namespace {
namespace fs = std::filesystem;
// The .pt tests on the model-directory fixture, under their own name.
class TorchPickleTest : public testing_support::CheckpointTest {};

// ---- torch.save files as PyTorch writes them ---------------------------------------------------

// One tensor of a state dict pickle: its storage and its view of it.
struct PtTensor {
  std::string name;
  std::string storage_type;  // "FloatStorage", "BFloat16Storage", ...
  std::string key;           // storage record data/<key>
  int64_t numel = 0;         // of the storage
  int64_t offset = 0;
  std::vector<int64_t> size, stride;
};

// Writes the pickle (protocol 2) that CPython's pickle module produces for torch.save(
// module.state_dict()): an OrderedDict carrying a _metadata attribute (another OrderedDict of
// {"version": 1} dicts), each tensor reduced through torch._utils._rebuild_tensor_v2 with a
// persistent storage id and an empty OrderedDict of backward hooks. Memoization follows CPython:
// every GLOBAL, str, non-empty tuple, dict and reduced object gets a BINPUT (LONG_BINPUT from id
// 256); repeated globals and the interned strings "storage", "cpu", "version" are BINGETs. Checked
// byte for byte against CPython 3.11 by PickleEmitterMatchesCPython.
class PythonStateDictPickler {
 public:
  std::string Pickle(const std::vector<PtTensor>& tensors,
                     const std::vector<std::string>& modules) {
    out_.clear();
    memo_.clear();
    next_ = 0;
    out_ += '\x80';
    out_ += '\x02';
    OrderedDict();
    SetItems(tensors.size(), [&](size_t i) {
      Str(tensors[i].name, false);
      Tensor(tensors[i]);
    });
    out_ += '}';  // state: {"_metadata": OrderedDict(...)}
    Put();
    Str("_metadata", false);
    OrderedDict();
    SetItems(modules.size(), [&](size_t i) {
      Str(modules[i], false);
      out_ += '}';
      Put();
      Str("version", true);
      Int(1);
      out_ += 's';
    });
    out_ += 's';
    out_ += 'b';
    out_ += '.';
    return out_;
  }

 private:
  void U32(uint32_t v) {
    for (int k = 0; k < 4; ++k) out_ += static_cast<char>((v >> (8 * k)) & 0xff);
  }
  void Put() {
    if (next_ < 256) {
      out_ += 'q';
      out_ += static_cast<char>(next_);
    } else {
      out_ += 'r';
      U32(next_);
    }
    ++next_;
  }
  void Get(uint32_t id) {
    if (id < 256) {
      out_ += 'h';
      out_ += static_cast<char>(id);
    } else {
      out_ += 'j';
      U32(id);
    }
  }
  bool Memoized(const std::string& key) {
    auto it = memo_.find(key);
    if (it == memo_.end()) return false;
    Get(it->second);
    return true;
  }
  void Global(const std::string& module, const std::string& name) {
    const std::string key = "global:" + module + "." + name;
    if (Memoized(key)) return;
    out_ += 'c' + module + '\n' + name + '\n';
    memo_[key] = next_;
    Put();
  }
  void Str(const std::string& s, bool interned) {
    if (interned && Memoized("str:" + s)) return;
    out_ += 'X';
    U32(static_cast<uint32_t>(s.size()));
    out_ += s;
    if (interned) memo_["str:" + s] = next_;
    Put();
  }
  void Int(int64_t v) {
    if (v >= 0 && v < 256) {
      out_ += 'K';
      out_ += static_cast<char>(v);
    } else if (v >= 0 && v < 65536) {
      out_ += 'M';
      out_ += static_cast<char>(v & 0xff);
      out_ += static_cast<char>(v >> 8);
    } else if (v >= INT32_MIN && v <= INT32_MAX) {
      out_ += 'J';
      U32(static_cast<uint32_t>(v));
    } else {  // LONG1, minimal two's complement
      std::string b;
      uint64_t u = static_cast<uint64_t>(v);
      do {
        b += static_cast<char>(u & 0xff);
        u = static_cast<uint64_t>(static_cast<int64_t>(u) >> 8);
      } while (!((u == 0 && !(b.back() & 0x80)) || (u == ~uint64_t{0} && (b.back() & 0x80))));
      out_ += '\x8a';
      out_ += static_cast<char>(b.size());
      out_ += b;
    }
  }
  void IntTuple(const std::vector<int64_t>& v) {
    if (v.empty()) {
      out_ += ')';
      return;
    }
    if (v.size() > 3) out_ += '(';
    for (int64_t x : v) Int(x);
    out_ += v.size() > 3 ? 't' : static_cast<char>(0x84 + v.size());
    Put();
  }
  void OrderedDict() {
    Global("collections", "OrderedDict");
    out_ += ')';
    out_ += 'R';
    Put();
  }
  // CPython's _batch_setitems: batches of 1000, a lone item as SETITEM.
  void SetItems(size_t n, const std::function<void(size_t)>& item) {
    for (size_t start = 0; start < n; start += 1000) {
      const size_t end = std::min(n, start + 1000);
      if (end - start > 1) out_ += '(';
      for (size_t i = start; i < end; ++i) item(i);
      out_ += end - start > 1 ? 'u' : 's';
    }
  }
  void Tensor(const PtTensor& t) {
    Global("torch._utils", "_rebuild_tensor_v2");
    out_ += '(';
    out_ += '(';  // persistent id ('storage', torch.<T>Storage, key, 'cpu', numel)
    Str("storage", true);
    Global("torch", t.storage_type);
    Str(t.key, false);
    Str("cpu", true);
    Int(t.numel);
    out_ += 't';
    Put();
    out_ += 'Q';
    Int(t.offset);
    IntTuple(t.size);
    IntTuple(t.stride);
    out_ += '\x89';  // requires_grad=False
    OrderedDict();   // backward hooks
    out_ += 't';
    Put();
    out_ += 'R';
    Put();
  }

  std::string out_;
  std::map<std::string, uint32_t> memo_;
  uint32_t next_ = 0;
};

// A torch.save zip archive ("archive/data.pkl", "archive/data/<key>", "archive/version") written
// with LibTorch's PyTorchStreamWriter, as torch.save does.
void WriteTorchZip(const fs::path& path, const std::string& pkl,
                   const std::map<std::string, std::string>& storages) {
  std::vector<char> bytes;
  {
    caffe2::serialize::PyTorchStreamWriter w([&](const void* p, size_t n) {
      bytes.insert(bytes.end(), static_cast<const char*>(p), static_cast<const char*>(p) + n);
      return n;
    });
    w.writeRecord("data.pkl", pkl.data(), pkl.size());
    for (const auto& [key, data] : storages) w.writeRecord("data/" + key, data.data(), data.size());
    w.writeEndOfFile();
  }
  std::ofstream(path, std::ios::binary).write(bytes.data(), bytes.size());
}

std::string Bytes(const torch::Tensor& t) {
  auto c = t.contiguous();
  return std::string(static_cast<const char*>(c.data_ptr()), c.numel() * c.element_size());
}

std::vector<int64_t> ContiguousStrides(const std::vector<int64_t>& size) {
  std::vector<int64_t> s(size.size(), 1);
  for (size_t d = size.size(); d-- > 1;) s[d - 1] = s[d] * size[d];
  return s;
}

// torch.save(state_dict) as PyTorch writes it (fp32 or bf16 storages, one per tensor).
void PythonTorchSave(const fs::path& path,
                     const std::vector<std::pair<std::string, torch::Tensor>>& state_dict,
                     torch::ScalarType dtype = torch::kFloat32) {
  std::vector<PtTensor> tensors;
  std::map<std::string, std::string> storages;
  std::vector<std::string> modules = {""};
  for (size_t i = 0; i < state_dict.size(); ++i) {
    const auto& [name, t] = state_dict[i];
    PtTensor p;
    p.name = name;
    p.storage_type = dtype == torch::kBFloat16 ? "BFloat16Storage" : "FloatStorage";
    p.key = std::to_string(i);
    p.numel = t.numel();
    p.size = t.sizes().vec();
    p.stride = ContiguousStrides(p.size);
    tensors.push_back(p);
    storages[p.key] = Bytes(t.to(dtype));
    const std::string module = name.substr(0, name.rfind('.'));
    if (std::find(modules.begin(), modules.end(), module) == modules.end())
      modules.push_back(module);
  }
  WriteTorchZip(path, PythonStateDictPickler().Pickle(tensors, modules), storages);
}

// torch::pickle_save of a c10::Dict<std::string, at::Tensor>.
void CppPickleSave(const fs::path& path,
                   const std::vector<std::pair<std::string, torch::Tensor>>& state_dict) {
  c10::Dict<std::string, at::Tensor> d;
  for (const auto& [name, t] : state_dict) d.insert(name, t);
  const std::vector<char> bytes = torch::pickle_save(d);
  std::ofstream(path, std::ios::binary).write(bytes.data(), bytes.size());
}

// ---- PyTorch .pt side files -------------------------------------------------------------------

TEST_F(TorchPickleTest, PtSideFilesWrittenWithPickleSaveLoadAndForwardIdentically) {
  CppPickleSave(dir_ / "action_head--150000_checkpoint.pt", SideTensors("action_head.", "module."));
  CppPickleSave(dir_ / "proprio_projector--150000_checkpoint.pt",
                SideTensors("proprio_projector."));
  RemoveSafetensorsSideFiles();
  ExpectSameForwardAsSavedModel();
}

TEST_F(TorchPickleTest, PythonTorchSaveOrderedDictPtFilesLoadAndForwardIdentically) {
  PythonTorchSave(dir_ / "action_head--150000_checkpoint.pt",
                  SideTensors("action_head.", "module."));
  PythonTorchSave(dir_ / "proprio_projector--150000_checkpoint.pt",
                  SideTensors("proprio_projector.", "module."));
  RemoveSafetensorsSideFiles();
  ExpectSameForwardAsSavedModel();
}

TEST_F(TorchPickleTest, PickleEmitterMatchesCPython) {
  // CPython 3.11: pickle.Pickler(protocol=2) with torch.save's persistent_id on an OrderedDict
  // {fc1.weight: float[3,2], fc1.bias: float[3]} with _metadata {"": {version: 1}, fc1: {...}}.
  const std::string cpython = absl::HexStringToBytes(
      "800263636f6c6c656374696f6e730a4f726465726564446963740a71002952710128580a0000006663312e77"
      "6569676874710263746f7263682e5f7574696c730a5f72656275696c645f74656e736f725f76320a71032828"
      "580700000073746f72616765710463746f7263680a466c6f617453746f726167650a710558010000003071"
      "06580300000063707571074b06747108514b004b034b028671094b024b0186710a8968002952710b74710c"
      "52710d58080000006663312e62696173710e6803282868046805580100000031710f68074b03747110514b"
      "004b038571114b0185711289680029527113747114527115757d711658090000005f6d6574616461746171"
      "1768002952711828580000000071197d711a580700000076657273696f6e711b4b01735803000000666331"
      "711c7d711d681b4b01737573622e");
  std::vector<PtTensor> t(2);
  t[0] = {"fc1.weight", "FloatStorage", "0", 6, 0, {3, 2}, {2, 1}};
  t[1] = {"fc1.bias", "FloatStorage", "1", 3, 0, {3}, {1}};
  EXPECT_EQ(absl::BytesToHexString(PythonStateDictPickler().Pickle(t, {"", "fc1"})),
            absl::BytesToHexString(cpython));
  // And it reads back.
  auto w = torch::arange(6, torch::kFloat32), b = torch::full({3}, 2.5f);
  WriteTorchZip(dir_ / "golden.pt", cpython, {{"0", Bytes(w)}, {"1", Bytes(b)}});
  auto sd = ReadTorchStateDict((dir_ / "golden.pt").string());
  ASSERT_TRUE(sd.ok()) << sd.status();
  ASSERT_EQ(sd->size(), 2u);
  EXPECT_EQ((*sd)[0].first, "fc1.weight");
  EXPECT_TRUE(torch::equal((*sd)[0].second, w.view({3, 2})));
  EXPECT_EQ((*sd)[1].first, "fc1.bias");
  EXPECT_TRUE(torch::equal((*sd)[1].second, b));
}

TEST_F(TorchPickleTest, ReadTorchStateDictHandlesBf16SharedStoragesViewsAndLongMemo) {
  auto base = torch::arange(12, torch::kFloat32).to(torch::kBFloat16);
  std::vector<PtTensor> t;
  t.push_back({"shared.whole", "BFloat16Storage", "0", 12, 0, {12}, {1}});
  t.push_back({"shared.transposed", "BFloat16Storage", "0", 12, 2, {2, 3}, {1, 2}});
  t.push_back({"shared.scalar", "BFloat16Storage", "0", 12, 11, {}, {}});
  std::vector<std::string> modules = {"", "shared"};
  std::map<std::string, std::string> storages = {{"0", Bytes(base)}};
  for (int i = 0; i < 40; ++i) {  // > 256 memo entries: LONG_BINPUT / LONG_BINGET
    const std::string k = std::to_string(i + 1);
    t.push_back({"m" + k + ".w", "FloatStorage", k, 70000, 0, {70000}, {1}});
    modules.push_back("m" + k);
    storages[k] = Bytes(torch::full({70000}, static_cast<float>(i)));
  }
  const std::string pkl = PythonStateDictPickler().Pickle(t, modules);
  ASSERT_NE(pkl.find('r'), std::string::npos);
  WriteTorchZip(dir_ / "views.pt", pkl, storages);
  auto sd = ReadTorchStateDict((dir_ / "views.pt").string());
  ASSERT_TRUE(sd.ok()) << sd.status();
  ASSERT_EQ(sd->size(), 43u);
  EXPECT_EQ((*sd)[0].second.scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(torch::equal((*sd)[0].second, base));
  EXPECT_TRUE(torch::equal((*sd)[1].second, base.as_strided({2, 3}, {1, 2}, 2)));
  EXPECT_TRUE((*sd)[1].second.is_alias_of((*sd)[0].second));  // one storage
  EXPECT_EQ((*sd)[2].second.dim(), 0);
  EXPECT_EQ((*sd)[2].second.item<float>(), 11.0f);
  EXPECT_EQ((*sd)[42].first, "m40.w");
  EXPECT_EQ((*sd)[42].second.numel(), 70000);
  EXPECT_EQ((*sd)[42].second[69999].item<float>(), 39.0f);
}

TEST_F(TorchPickleTest, CorruptOrForeignPtFilesAreClearErrorsNotCrashes) {
  const fs::path good = dir_ / "good.pt";
  PythonTorchSave(good, SideTensors("proprio_projector."));
  ASSERT_TRUE(ReadTorchStateDict(good.string()).ok());
  auto expect_error = [&](const fs::path& p, const std::string& what) {
    auto sd = ReadTorchStateDict(p.string());
    ASSERT_FALSE(sd.ok()) << what;
    EXPECT_EQ(sd.status().code(), absl::StatusCode::kInvalidArgument) << what;
    const std::string msg(sd.status().message());
    EXPECT_NE(msg.find(p.string()), std::string::npos) << msg;
    EXPECT_NE(msg.find(what), std::string::npos) << msg;
  };
  // Truncated zip.
  const fs::path truncated = dir_ / "truncated.pt";
  fs::copy_file(good, truncated);
  fs::resize_file(truncated, fs::file_size(good) / 2);
  expect_error(truncated, "truncated or corrupt");
  // Not a zip (legacy torch.save or garbage).
  {
    std::ofstream(dir_ / "legacy.pt", std::ios::binary)
        << "\x80\x02\x8a\x0a" << std::string(64, 'x');
  }
  expect_error(dir_ / "legacy.pt", "not a zip-format torch.save file");
  EXPECT_EQ(ReadTorchStateDict((dir_ / "absent.pt").string()).status().code(),
            absl::StatusCode::kNotFound);

  std::vector<PtTensor> one = {{"w", "FloatStorage", "0", 4, 0, {4}, {1}}};
  const std::string floats = Bytes(torch::ones({4}));
  // A global outside the state-dict subset (what a malicious pickle would use).
  const char evil[] =
      "\x80\x02"
      "cos\nsystem\n"
      "X\x02\x00\x00\x00"
      "ls"
      "\x85"
      "R.";
  WriteTorchZip(dir_ / "evil.pt", std::string(evil, sizeof(evil) - 1), {});
  expect_error(dir_ / "evil.pt", "global os.system is not allowed");
  // Missing storage record.
  WriteTorchZip(dir_ / "nostorage.pt", PythonStateDictPickler().Pickle(one, {""}), {});
  expect_error(dir_ / "nostorage.pt", "storage record data/0 is missing");
  // Storage shorter than its header says.
  WriteTorchZip(dir_ / "short.pt", PythonStateDictPickler().Pickle(one, {""}),
                {{"0", floats.substr(0, 8)}});
  expect_error(dir_ / "short.pt", "has 8 bytes");
  // A view past the end of its storage.
  std::vector<PtTensor> past = {{"w", "FloatStorage", "0", 4, 2, {2, 2}, {2, 1}}};
  WriteTorchZip(dir_ / "view.pt", PythonStateDictPickler().Pickle(past, {""}), {{"0", floats}});
  expect_error(dir_ / "view.pt", "outside its storage");
  // A training checkpoint rather than a state dict.
  const char epoch[] =
      "\x80\x02}q\x00X\x05\x00\x00\x00"
      "epoch"
      "K\x03"
      "s.";
  WriteTorchZip(dir_ / "epoch.pt", std::string(epoch, sizeof(epoch) - 1), {});
  expect_error(dir_ / "epoch.pt", "entry \"epoch\" is a int, not a tensor");
  // Garbage pickle.
  WriteTorchZip(dir_ / "garbage.pt", std::string("\x80\x02\xff\xfe", 4), {});
  expect_error(dir_ / "garbage.pt", "unsupported opcode");

  // Every truncation of a valid pickle fails cleanly; single-byte corruptions never crash.
  const std::string pkl = PythonStateDictPickler().Pickle(one, {""});
  const fs::path p = dir_ / "fuzz.pt";
  for (size_t n = 0; n < pkl.size(); ++n) {
    WriteTorchZip(p, pkl.substr(0, n), {{"0", floats}});
    EXPECT_FALSE(ReadTorchStateDict(p.string()).ok()) << "prefix " << n;
  }
  for (size_t i = 0; i < pkl.size(); ++i)
    for (uint8_t x : {0x01, 0x80, 0xff}) {
      std::string bad = pkl;
      bad[i] = static_cast<char>(bad[i] ^ x);
      WriteTorchZip(p, bad, {{"0", floats}});
      auto sd = ReadTorchStateDict(p.string());
      if (!sd.ok()) {
        EXPECT_NE(sd.status().message().find(p.string()), std::string::npos);
      }
    }
}

TEST_F(TorchPickleTest, PtSideFileMismatchesAreListedTogether) {
  auto proprio = SideTensors("proprio_projector.", "module.");
  proprio.erase(std::remove_if(proprio.begin(), proprio.end(),
                               [](const auto& p) { return p.first == "module.fc2.bias"; }),
                proprio.end());
  for (auto& [name, t] : proprio)
    if (name == "module.fc1.weight") t = t.reshape({-1});
  proprio.emplace_back("module.fc3.weight", torch::zeros({2}));
  PythonTorchSave(dir_ / "proprio_projector--1_checkpoint.pt", proprio);
  fs::remove(dir_ / "proprio_projector--specprune.safetensors");
  auto loaded = LoadModelDir(dir_.string(), {});
  ASSERT_FALSE(loaded.ok());
  const std::string msg(loaded.status().message());
  EXPECT_NE(msg.find("1 missing: proprio_projector.fc2.bias"), std::string::npos) << msg;
  EXPECT_NE(msg.find("mis-shaped: proprio_projector.fc1.weight checkpoint [1024]"),
            std::string::npos)
      << msg;
  EXPECT_NE(msg.find("unexpected: proprio_projector.fc3.weight"), std::string::npos) << msg;
}

TEST_F(TorchPickleTest, SideFileInBothFormatsIsAmbiguous) {
  CppPickleSave(dir_ / "action_head--specprune.pt", SideTensors("action_head."));
  auto loaded = LoadModelDir(dir_.string(), {});
  ASSERT_FALSE(loaded.ok());
  EXPECT_NE(loaded.status().message().find("several action_head--* files"), std::string::npos)
      << loaded.status();
}

}  // namespace
}  // namespace specprune
