#include "model/safetensors.h"

#include <stdlib.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace specprune {
namespace {

namespace fs = std::filesystem;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "safetensors_test_XXXXXX").string();
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string Path(const std::string& name) const { return (fs::path(dir_) / name).string(); }

  // Writes a raw safetensors file: the 8-byte header length (default:
  // header.size()), then `header`, then `data`.
  std::string WriteRaw(const std::string& name, const std::string& header,
                       const std::vector<uint8_t>& data, int64_t header_len = -1) {
    const std::string path = Path(name);
    std::ofstream out(path, std::ios::binary);
    const uint64_t len = header_len < 0 ? header.size() : static_cast<uint64_t>(header_len);
    for (int i = 0; i < 8; ++i) out.put(static_cast<char>((len >> (8 * i)) & 0xFF));
    out << header;
    out.write(reinterpret_cast<const char*>(data.data()), data.size());
    return path;
  }

  std::string dir_;
};

template <typename T>
TensorView View(const std::string& name, DType dtype, std::vector<int64_t> shape,
                const std::vector<T>& values) {
  TensorView v;
  v.name = name;
  v.dtype = dtype;
  v.shape = std::move(shape);
  v.data = reinterpret_cast<const uint8_t*>(values.data());
  v.nbytes = values.size() * sizeof(T);
  return v;
}

void ExpectStatus(const absl::Status& status, absl::StatusCode code,
                  const std::vector<std::string>& substrings) {
  EXPECT_EQ(status.code(), code) << status;
  for (const std::string& s : substrings) EXPECT_THAT(status.message(), HasSubstr(s));
}

TEST(DTypeTest, NamesSizesAndParsingAgree) {
  const DType all[] = {DType::kF32, DType::kF16, DType::kBF16, DType::kF64, DType::kI64,
                       DType::kI32, DType::kI16, DType::kI8,   DType::kU8,  DType::kBool};
  const size_t sizes[] = {4, 2, 2, 8, 8, 4, 2, 1, 1, 1};
  for (size_t i = 0; i < std::size(all); ++i) {
    absl::StatusOr<DType> parsed = ParseDType(DTypeName(all[i]));
    ASSERT_TRUE(parsed.ok()) << DTypeName(all[i]);
    EXPECT_EQ(*parsed, all[i]);
    EXPECT_EQ(DTypeSize(all[i]), sizes[i]) << DTypeName(all[i]);
  }
  EXPECT_EQ(DTypeName(DType::kBF16), "BF16");
  EXPECT_EQ(DTypeName(DType::kBool), "BOOL");
  ExpectStatus(ParseDType("F8_E4M3").status(), absl::StatusCode::kInvalidArgument, {"F8_E4M3"});
  EXPECT_FALSE(ParseDType("f32").ok());
}

TEST(DTypeTest, NumElementsOfScalarAndEmptyShapes) {
  EXPECT_EQ(NumElements({}), 1);
  EXPECT_EQ(NumElements({0, 4}), 0);
  EXPECT_EQ(NumElements({2, 3, 4}), 24);
}

TEST_F(SafetensorsTest, RoundTripsSeveralDtypesAndShapes) {
  const std::vector<float> f32 = {1.5f, -2.0f, 3.25f, 0.0f, -0.0f, 1e-30f};
  const std::vector<uint16_t> bf16 = {FloatToBf16(1.0f), FloatToBf16(-3.5f), 0x7F80, 0x0001};
  const std::vector<uint16_t> f16 = {FloatToHalf(0.5f), FloatToHalf(-1.0f), FloatToHalf(65504.0f),
                                     0x0001};
  const std::vector<double> f64 = {1e300, -1e-300, 3.0};
  const std::vector<int64_t> i64 = {std::numeric_limits<int64_t>::min(), 42};
  const std::vector<int32_t> i32 = {-7, 7};
  const std::vector<int16_t> i16 = {-300, 0, 300};
  const std::vector<int8_t> i8 = {-128, -1, 0, 1, 127};
  const std::vector<uint8_t> u8 = {0, 1, 2, 3, 250, 251, 255};
  const std::vector<uint8_t> boolean = {1, 0, 1};
  const std::vector<float> scalar = {7.0f};
  const std::vector<float> empty_f32;
  const std::vector<int64_t> empty_i64;
  const std::vector<TensorView> tensors = {
      View("w.f32", DType::kF32, {2, 3}, f32),
      View("w.bf16", DType::kBF16, {4}, bf16),
      View("w.f16", DType::kF16, {2, 2}, f16),
      View("w.f64", DType::kF64, {3}, f64),
      View("ids.i64", DType::kI64, {2}, i64),
      View("ids.i32", DType::kI32, {1, 1, 2}, i32),
      View("ids.i16", DType::kI16, {3}, i16),
      View("ids.i8", DType::kI8, {5}, i8),
      View("pixels", DType::kU8, {7}, u8),
      View("mask", DType::kBool, {3}, boolean),
      View("scalar", DType::kF32, {}, scalar),
      View("empty", DType::kF32, {0, 4}, empty_f32),
      View("empty_ids", DType::kI64, {0}, empty_i64),
  };
  const std::string path = Path("model.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, tensors, {{"format", "pt"}, {"step", "12"}}).ok());
  EXPECT_EQ(std::distance(fs::directory_iterator(dir_), fs::directory_iterator()), 1)
      << "temporary file left behind";

  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  const SafetensorsFile& f = **file;
  EXPECT_TRUE(f.mapped());
  EXPECT_THAT(f.names(),
              ElementsAre("empty", "empty_ids", "ids.i16", "ids.i32", "ids.i64", "ids.i8", "mask",
                          "pixels", "scalar", "w.bf16", "w.f16", "w.f32", "w.f64"));
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.metadata().at("step"), "12");
  for (const TensorView& expected : tensors) {
    const TensorView* got = f.Find(expected.name);
    ASSERT_NE(got, nullptr) << expected.name;
    EXPECT_EQ(got->name, expected.name);
    EXPECT_EQ(got->dtype, expected.dtype) << expected.name;
    EXPECT_EQ(got->shape, expected.shape) << expected.name;
    ASSERT_EQ(got->nbytes, expected.nbytes) << expected.name;
    if (expected.nbytes > 0) {
      EXPECT_EQ(std::memcmp(got->data, expected.data, expected.nbytes), 0) << expected.name;
    }
    EXPECT_EQ(reinterpret_cast<uintptr_t>(got->data) % DTypeSize(got->dtype), 0u)
        << expected.name << " is not aligned to its element size";
  }
  EXPECT_EQ(f.Find("scalar")->numel(), 1);
  EXPECT_EQ(f.Find("empty")->numel(), 0);
  EXPECT_EQ(f.Find("missing"), nullptr);
}

TEST_F(SafetensorsTest, ReleasedPagesReadBackUnchangedAndForeignViewsAreRefused) {
  std::vector<float> big(64 * 1024);  // 256 KiB: many whole pages
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<float>(i) * 0.25f;
  const std::vector<float> small = {1.0f, 2.0f};
  const std::string path = Path("model.safetensors");
  ASSERT_TRUE(
      WriteSafetensors(
          path, {View("big", DType::kF32, {64, 1024}, big), View("small", DType::kF32, {2}, small)},
          {})
          .ok());
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_TRUE((*file)->mapped());
  const TensorView* view = (*file)->Find("big");
  ASSERT_NE(view, nullptr);
  ASSERT_EQ(std::memcmp(view->data, big.data(), view->nbytes), 0);
  EXPECT_TRUE((*file)->ReleasePages(*view));
  EXPECT_TRUE((*file)->ReleasePages(*(*file)->Find("small")));  // less than a page: nothing
  EXPECT_EQ(std::memcmp(view->data, big.data(), view->nbytes), 0) << "re-read from the file";
  const TensorView foreign = View("big", DType::kF32, {64, 1024}, big);
  EXPECT_FALSE((*file)->ReleasePages(foreign));
  EXPECT_EQ(big[1000], 250.0f) << "heap memory outside the mapping was not touched";

  auto sharded = ShardedSafetensors::Open(path);
  ASSERT_TRUE(sharded.ok()) << sharded.status();
  EXPECT_TRUE((*sharded)->ReleasePages(*(*sharded)->Find("big")));
  EXPECT_FALSE((*sharded)->ReleasePages(foreign));
}

TEST_F(SafetensorsTest, WriterPadsHeaderAndLaysOutDataWithoutGaps) {
  const std::vector<uint8_t> a = {1, 2, 3};
  const std::vector<float> b = {1.0f, 2.0f};
  const std::vector<uint16_t> c = {1, 2, 3};
  const std::vector<double> d = {4.0};
  const std::string path = Path("layout.safetensors");
  ASSERT_TRUE(
      WriteSafetensors(path, {View("a", DType::kU8, {3}, a), View("b", DType::kF32, {2}, b),
                              View("c", DType::kF16, {3}, c), View("d", DType::kF64, {1}, d)})
          .ok());
  std::ifstream in(path, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(bytes[i]);
  EXPECT_EQ(n % 8, 0u);
  const std::string header = bytes.substr(8, n);
  EXPECT_EQ(header.front(), '{');
  const nlohmann::json j = nlohmann::json::parse(header);
  // Decreasing element size, then name: d (8), b (4), c (2), a (1), packed
  // from offset 0.
  EXPECT_EQ(j["d"]["data_offsets"], nlohmann::json::array({0, 8}));
  EXPECT_EQ(j["b"]["data_offsets"], nlohmann::json::array({8, 16}));
  EXPECT_EQ(j["c"]["data_offsets"], nlohmann::json::array({16, 22}));
  EXPECT_EQ(j["a"]["data_offsets"], nlohmann::json::array({22, 25}));
  EXPECT_EQ(bytes.size(), 8 + n + 25);
  EXPECT_FALSE(j.contains("__metadata__"));
}

TEST_F(SafetensorsTest, ReadsHandWrittenReferenceFile) {
  // The layout the Python reference writes for
  // {"x": float32 [2], "y": int8 [3]}.
  std::vector<uint8_t> data(11);
  const float x[2] = {0.25f, -8.0f};
  std::memcpy(data.data(), x, 8);
  data[8] = 0xFF;
  data[9] = 0x00;
  data[10] = 0x05;
  const std::string path =
      WriteRaw("ref.safetensors",
               R"({"__metadata__":{"format":"pt"},"x":{"dtype":"F32","shape":[2],)"
               R"("data_offsets":[0,8]},"y":{"dtype":"I8","shape":[3],"data_offsets":[8,11]}}   )",
               data);
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  const TensorView* tx = (*file)->Find("x");
  ASSERT_NE(tx, nullptr);
  float got[2];
  std::memcpy(got, tx->data, 8);
  EXPECT_EQ(got[0], 0.25f);
  EXPECT_EQ(got[1], -8.0f);
  const TensorView* ty = (*file)->Find("y");
  ASSERT_NE(ty, nullptr);
  EXPECT_EQ(static_cast<int8_t>(ty->data[0]), -1);
  EXPECT_EQ(ty->data[2], 5);
}

TEST_F(SafetensorsTest, ConcurrentReadersSeeTheSameBytes) {
  std::vector<float> values(4096);
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  for (float& v : values) v = dist(rng);
  const std::string path = Path("big.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, {View("t", DType::kF32, {64, 64}, values)}).ok());
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok());
  std::vector<std::thread> threads;
  std::vector<int> ok(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 100; ++i) {
        const TensorView* v = (*file)->Find("t");
        ok[t] += v != nullptr && std::memcmp(v->data, values.data(), v->nbytes) == 0;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_THAT(ok, ElementsAre(100, 100, 100, 100));
}

// ---- Open() error paths

TEST_F(SafetensorsTest, MissingFileIsNotFound) {
  const std::string path = Path("nope.safetensors");
  ExpectStatus(SafetensorsFile::Open(path).status(), absl::StatusCode::kNotFound, {path});
}

TEST_F(SafetensorsTest, FileShorterThanEightBytesIsDataLoss) {
  const std::string path = Path("short.safetensors");
  std::ofstream(path, std::ios::binary) << "abcde";
  ExpectStatus(SafetensorsFile::Open(path).status(), absl::StatusCode::kDataLoss,
               {path, "5 bytes"});
}

TEST_F(SafetensorsTest, HeaderLengthPastEndOfFileIsDataLoss) {
  const std::string path = WriteRaw("h.safetensors", "{}", {}, 1000);
  ExpectStatus(SafetensorsFile::Open(path).status(), absl::StatusCode::kDataLoss,
               {path, "header length 1000"});
}

TEST_F(SafetensorsTest, HugeHeaderLengthIsRejected) {
  const std::string path = WriteRaw("h.safetensors", "{}", {}, 200'000'000);
  ExpectStatus(SafetensorsFile::Open(path).status(), absl::StatusCode::kInvalidArgument,
               {path, "100 MB"});
}

TEST_F(SafetensorsTest, BadJsonIsRejected) {
  const std::string path = WriteRaw("j.safetensors", R"({"x": {"dtype": )", {});
  ExpectStatus(SafetensorsFile::Open(path).status(), absl::StatusCode::kInvalidArgument,
               {path, "not valid JSON"});
  const std::string array = WriteRaw("a.safetensors", "[1, 2]", {});
  ExpectStatus(SafetensorsFile::Open(array).status(), absl::StatusCode::kInvalidArgument,
               {"not a JSON object"});
}

TEST_F(SafetensorsTest, UnknownDtypeNamesTensorAndDtype) {
  const std::string path = WriteRaw(
      "d.safetensors", R"({"layer.w":{"dtype":"F8","shape":[2],"data_offsets":[0,2]}})", {0, 0});
  ExpectStatus(SafetensorsFile::Open(path).status(), absl::StatusCode::kInvalidArgument,
               {path, "layer.w", "F8"});
}

TEST_F(SafetensorsTest, MissingOrMalformedFieldsNameTheField) {
  const struct {
    const char* header;
    const char* field;
  } cases[] = {
      {R"({"t":{"shape":[1],"data_offsets":[0,4]}})", "dtype"},
      {R"({"t":{"dtype":"F32","data_offsets":[0,4]}})", "shape"},
      {R"({"t":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", "shape[0]"},
      {R"({"t":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})", "shape[0]"},
      {R"({"t":{"dtype":"F32","shape":[1]}})", "data_offsets"},
      {R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[0]}})", "data_offsets"},
      {R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}})", "data_offsets"},
      {R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}})", "begin > end"},
      {R"({"t":[1,2]})", "not an object"},
      {R"({"__metadata__":{"k":1}})", "__metadata__"},
      {R"({"__metadata__":[]})", "__metadata__"},
  };
  for (const auto& c : cases) {
    const std::string path = WriteRaw("f.safetensors", c.header, {0, 0, 0, 0});
    ExpectStatus(SafetensorsFile::Open(path).status(), absl::StatusCode::kInvalidArgument,
                 {path, c.field});
  }
}

TEST_F(SafetensorsTest, ShapeAndByteCountMismatchIsRejected) {
  const std::string path =
      WriteRaw("m.safetensors", R"({"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}})",
               std::vector<uint8_t>(16));
  ExpectStatus(SafetensorsFile::Open(path).status(), absl::StatusCode::kInvalidArgument,
               {path, "'w'", "12 bytes", "needs 16"});
}

TEST_F(SafetensorsTest, OffsetsPastTheDataBufferAreDataLoss) {
  const std::string path = WriteRaw("o.safetensors",
                                    R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                                    R"("b":{"dtype":"U8","shape":[4],"data_offsets":[100,104]}})",
                                    std::vector<uint8_t>(8));
  ExpectStatus(SafetensorsFile::Open(path).status(), absl::StatusCode::kDataLoss,
               {path, "'b'", "[100, 104]", "8 bytes"});
}

TEST_F(SafetensorsTest, OverflowingShapeIsRejected) {
  const std::string path =
      WriteRaw("o.safetensors",
               R"({"a":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,8]}})",
               std::vector<uint8_t>(8));
  ExpectStatus(SafetensorsFile::Open(path).status(), absl::StatusCode::kInvalidArgument,
               {"'a'", "too large"});
}

TEST_F(SafetensorsTest, TruncatedDataIsDataLoss) {
  const std::vector<float> values(16, 1.0f);
  const std::string path = Path("t.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, {View("weight", DType::kF32, {16}, values)}).ok());
  fs::resize_file(path, fs::file_size(path) - 3);
  ExpectStatus(SafetensorsFile::Open(path).status(), absl::StatusCode::kDataLoss,
               {path, "'weight'", "truncated"});
}

TEST_F(SafetensorsTest, OverlappingTensorsAreRejected) {
  const std::string path = WriteRaw("ov.safetensors",
                                    R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                                    R"("b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}})",
                                    std::vector<uint8_t>(24));
  ExpectStatus(SafetensorsFile::Open(path).status(), absl::StatusCode::kInvalidArgument,
               {path, "'a'", "'b'", "overlap"});
  // A tensor nested inside another, listed after a disjoint one.
  const std::string nested =
      WriteRaw("nested.safetensors",
               R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[20,24]},)"
               R"("big":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
               R"("small":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
               std::vector<uint8_t>(24));
  ExpectStatus(SafetensorsFile::Open(nested).status(), absl::StatusCode::kInvalidArgument,
               {"'big'", "'small'", "overlap"});
}

TEST_F(SafetensorsTest, EmptyTensorsDoNotOverlapAnything) {
  const std::string path = WriteRaw("e.safetensors",
                                    R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                    R"("b":{"dtype":"F32","shape":[0],"data_offsets":[4,4]}})",
                                    std::vector<uint8_t>(8));
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->Find("b")->nbytes, 0u);
}

TEST_F(SafetensorsTest, DuplicateTensorNamesAreRejected) {
  const std::string path = WriteRaw("dup.safetensors",
                                    R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                                    R"("a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})",
                                    {1, 2});
  ExpectStatus(SafetensorsFile::Open(path).status(), absl::StatusCode::kInvalidArgument,
               {"duplicate", "'a'"});
}

// ---- Writer errors

TEST_F(SafetensorsTest, WriterRejectsInconsistentTensors) {
  const std::vector<float> v = {1, 2, 3};
  const std::string path = Path("w.safetensors");
  ExpectStatus(WriteSafetensors(path, {View("x", DType::kF32, {2, 2}, v)}),
               absl::StatusCode::kInvalidArgument, {"'x'", "12 bytes"});
  ExpectStatus(
      WriteSafetensors(path, {View("x", DType::kF32, {3}, v), View("x", DType::kF32, {3}, v)}),
      absl::StatusCode::kInvalidArgument, {"duplicate"});
  ExpectStatus(WriteSafetensors(path, {View("__metadata__", DType::kF32, {3}, v)}),
               absl::StatusCode::kInvalidArgument, {"__metadata__"});
  TensorView null_data = View("n", DType::kF32, {3}, v);
  null_data.data = nullptr;
  ExpectStatus(WriteSafetensors(path, {null_data}), absl::StatusCode::kInvalidArgument,
               {"null data"});
  EXPECT_FALSE(fs::exists(path));
  ExpectStatus(
      WriteSafetensors(Path("no/such/dir/w.safetensors"), {View("x", DType::kF32, {3}, v)}),
      absl::StatusCode::kNotFound, {"no/such/dir"});
}

// ---- Sharded checkpoints

class ShardedSafetensorsTest : public SafetensorsTest {
 protected:
  void WriteShards() {
    ASSERT_TRUE(WriteSafetensors(Path("model-00001-of-00002.safetensors"),
                                 {View("a", DType::kF32, {2}, a_), View("b", DType::kF32, {1}, b_)})
                    .ok());
    ASSERT_TRUE(WriteSafetensors(Path("model-00002-of-00002.safetensors"),
                                 {View("c", DType::kI64, {1}, c_)})
                    .ok());
  }
  void WriteIndex(const nlohmann::json& weight_map) {
    std::ofstream(Path("model.safetensors.index.json"))
        << nlohmann::json{{"metadata", {{"total_size", 20}}}, {"weight_map", weight_map}}.dump();
  }
  const nlohmann::json kGoodMap = {{"a", "model-00001-of-00002.safetensors"},
                                   {"b", "model-00001-of-00002.safetensors"},
                                   {"c", "model-00002-of-00002.safetensors"}};
  std::vector<float> a_ = {1.0f, 2.0f}, b_ = {3.0f};
  std::vector<int64_t> c_ = {99};
};

TEST_F(ShardedSafetensorsTest, OpensIndexedShardsFromDirectoryOrIndexPath) {
  WriteShards();
  WriteIndex(kGoodMap);
  for (const std::string& where : {dir_, Path("model.safetensors.index.json")}) {
    absl::StatusOr<std::unique_ptr<ShardedSafetensors>> st = ShardedSafetensors::Open(where);
    ASSERT_TRUE(st.ok()) << st.status();
    EXPECT_THAT((*st)->names(), ElementsAre("a", "b", "c"));
    EXPECT_EQ((*st)->shards().size(), 2u);
    const TensorView* c = (*st)->Find("c");
    ASSERT_NE(c, nullptr);
    EXPECT_EQ(c->dtype, DType::kI64);
    int64_t value;
    std::memcpy(&value, c->data, 8);
    EXPECT_EQ(value, 99);
    ASSERT_NE((*st)->Find("a"), nullptr);
    EXPECT_EQ(std::memcmp((*st)->Find("a")->data, a_.data(), 8), 0);
    EXPECT_EQ((*st)->Find("zzz"), nullptr);
  }
}

TEST_F(ShardedSafetensorsTest, OpensSingleFileOrDirectoryWithModelSafetensors) {
  ASSERT_TRUE(WriteSafetensors(Path("model.safetensors"), {View("a", DType::kF32, {2}, a_)}).ok());
  for (const std::string& where : {dir_, Path("model.safetensors")}) {
    absl::StatusOr<std::unique_ptr<ShardedSafetensors>> st = ShardedSafetensors::Open(where);
    ASSERT_TRUE(st.ok()) << st.status();
    EXPECT_THAT((*st)->names(), ElementsAre("a"));
    EXPECT_NE((*st)->Find("a"), nullptr);
  }
}

TEST_F(ShardedSafetensorsTest, MissingCheckpointIsNotFound) {
  ExpectStatus(ShardedSafetensors::Open(dir_).status(), absl::StatusCode::kNotFound,
               {"model.safetensors"});
  ExpectStatus(ShardedSafetensors::Open(Path("absent")).status(), absl::StatusCode::kNotFound,
               {"absent"});
}

TEST_F(ShardedSafetensorsTest, IndexNamingMissingShardIsNotFound) {
  WriteShards();
  nlohmann::json map = kGoodMap;
  map["d"] = "model-00003-of-00003.safetensors";
  WriteIndex(map);
  ExpectStatus(ShardedSafetensors::Open(dir_).status(), absl::StatusCode::kNotFound,
               {"model-00003-of-00003.safetensors", "'d'"});
}

TEST_F(ShardedSafetensorsTest, IndexNamingTensorAbsentFromItsShardIsRejected) {
  WriteShards();
  nlohmann::json map = kGoodMap;
  map["ghost"] = "model-00002-of-00002.safetensors";
  WriteIndex(map);
  ExpectStatus(ShardedSafetensors::Open(dir_).status(), absl::StatusCode::kInvalidArgument,
               {"'ghost'", "model-00002-of-00002.safetensors"});
}

TEST_F(ShardedSafetensorsTest, TensorInTwoShardsIsRejected) {
  WriteShards();
  ASSERT_TRUE(WriteSafetensors(Path("extra.safetensors"), {View("a", DType::kF32, {2}, a_)}).ok());
  nlohmann::json map = kGoodMap;
  map["a"] = "extra.safetensors";
  WriteIndex(map);
  ExpectStatus(ShardedSafetensors::Open(dir_).status(), absl::StatusCode::kInvalidArgument,
               {"'a'", "two shards"});
}

TEST_F(ShardedSafetensorsTest, MalformedIndexIsRejected) {
  WriteShards();
  WriteIndex({{"a", "../model-00001-of-00002.safetensors"}});
  ExpectStatus(ShardedSafetensors::Open(dir_).status(), absl::StatusCode::kInvalidArgument,
               {"plain file name"});
  WriteIndex({{"a", 3}});
  ExpectStatus(ShardedSafetensors::Open(dir_).status(), absl::StatusCode::kInvalidArgument,
               {"weight_map['a']"});
  std::ofstream(Path("model.safetensors.index.json")) << R"({"metadata": {}})";
  ExpectStatus(ShardedSafetensors::Open(dir_).status(), absl::StatusCode::kInvalidArgument,
               {"weight_map"});
  std::ofstream(Path("model.safetensors.index.json")) << "{oops";
  ExpectStatus(ShardedSafetensors::Open(dir_).status(), absl::StatusCode::kInvalidArgument,
               {"model.safetensors.index.json"});
}

TEST_F(ShardedSafetensorsTest, CorruptShardErrorIsPropagated) {
  WriteShards();
  WriteIndex(kGoodMap);
  fs::resize_file(Path("model-00002-of-00002.safetensors"), 4);
  ExpectStatus(ShardedSafetensors::Open(dir_).status(), absl::StatusCode::kDataLoss,
               {"model-00002-of-00002.safetensors"});
}

}  // namespace
}  // namespace specprune
