#include "model/tokenizer.h"

#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

#ifdef SPECPRUNE_TOKENIZER_TEST_WITH_PROTOBUF
#include <google/protobuf/descriptor.pb.h>
#include <google/protobuf/stubs/common.h>
#endif

namespace specprune {
namespace {

namespace fs = std::filesystem;
using ::testing::Contains;
using ::testing::HasSubstr;
using ::testing::Not;

// Produced by tools/train_tokenizer.sh tests/data/tokenizer_test.model (vocab
// 512).
const char kModel[] = SPECPRUNE_TEST_DATA_DIR "/tokenizer_test.model";

class TokenizerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    absl::StatusOr<std::unique_ptr<Tokenizer>> tok = Tokenizer::Load(kModel);
    ASSERT_TRUE(tok.ok()) << tok.status();
    tokenizer_ = tok->release();
  }
  static void TearDownTestSuite() {
    delete tokenizer_;
    tokenizer_ = nullptr;
  }
  static const Tokenizer& tok() { return *tokenizer_; }

  static Tokenizer* tokenizer_;
};
Tokenizer* TokenizerTest::tokenizer_ = nullptr;

TEST_F(TokenizerTest, HasLlamaSpecialIds) {
  EXPECT_EQ(tok().vocab_size(), 512);
  EXPECT_EQ(tok().unk_id(), 0);
  EXPECT_EQ(tok().bos_id(), 1);
  EXPECT_EQ(tok().eos_id(), 2);
  EXPECT_EQ(tok().pad_id(),
            0);  // no pad piece: falls back to unk like HF Llama
  EXPECT_EQ(tok().IdToPiece(1), "<s>");
  EXPECT_EQ(tok().IdToPiece(2), "</s>");
  EXPECT_EQ(tok().IdToPiece(512), "");
  EXPECT_EQ(tok().PieceToId("<unk>"), 0);
  EXPECT_EQ(tok().PieceToId("</s>"), 2);
  EXPECT_EQ(tok().PieceToId("not-a-piece"), -1);
  EXPECT_EQ(tok().PieceToId("<0x0A>"),
            3 + 0x0A);  // byte pieces follow the control tokens
}

TEST_F(TokenizerTest, EncodeDecodeRoundTripsPromptsWithoutBos) {
  const std::string texts[] = {
      "In: What action should the robot take to pick up the red cube and place "
      "it on the blue "
      "plate?\nOut:",
      "put the bowl on the left plate",
      "open the top drawer",
      "move the gripper left by 12 centimeters",
      "  two  spaces and a\ttab ",
  };
  for (const std::string& text : texts) {
    const std::vector<int64_t> ids = tok().Encode(text);
    ASSERT_FALSE(ids.empty()) << text;
    EXPECT_NE(ids.front(), tok().bos_id()) << text;
    EXPECT_THAT(ids, Not(Contains(tok().eos_id()))) << text;
    EXPECT_THAT(ids, Not(Contains(tok().unk_id()))) << text;
    for (int64_t id : ids) {
      EXPECT_GE(id, 0);
      EXPECT_LT(id, tok().vocab_size());
    }
    EXPECT_EQ(tok().Decode(ids), text);
  }
}

TEST_F(TokenizerTest, TrainedOnInstructionsSoCommonWordsAreCompact) {
  const std::string instruction = "pick up the red bowl and place it on the plate";
  const std::vector<int64_t> ids = tok().Encode(instruction);
  // Far fewer tokens than bytes: the vocabulary learned the instruction words.
  EXPECT_LT(ids.size(), instruction.size() / 2);
  EXPECT_GE(tok().PieceToId("\xe2\x96\x81the"), 0);  // "▁the"
}

TEST_F(TokenizerTest, ByteFallbackEncodesUnusualCharacters) {
  const std::string text =
      "h\xc3\xa9llo \xe2\x88\x91 \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\xa4\x96 ~^`";
  const std::vector<int64_t> ids = tok().Encode(text);
  EXPECT_THAT(ids, Not(Contains(tok().unk_id())));
  EXPECT_THAT(ids,
              Contains(tok().PieceToId("<0xF0>")));  // first byte of the emoji
  EXPECT_EQ(tok().Decode(ids), text);
  // Invalid UTF-8 is encoded as U+FFFD bytes, not <unk>.
  EXPECT_THAT(tok().Encode("a\xff"
                           "b"),
              Not(Contains(tok().unk_id())));
}

TEST_F(TokenizerTest, DecodeSkipsControlTokensAndMarksInvalidIds) {
  std::vector<int64_t> ids = tok().Encode("open the drawer");
  ids.insert(ids.begin(), tok().bos_id());
  ids.push_back(tok().eos_id());
  EXPECT_EQ(tok().Decode(ids), "open the drawer");
  EXPECT_THAT(tok().Decode({99999, -5}),
              HasSubstr("\xe2\x81\x87"));  // " ⁇ " (unk surface)
  EXPECT_EQ(tok().Decode({}), "");
}

TEST_F(TokenizerTest, ConcurrentEncodeMatchesSequential) {
  std::vector<std::string> texts;
  std::mt19937 rng(99);
  const char* words[] = {"pick",
                         "up",
                         "the",
                         "red",
                         "cube",
                         "place",
                         "on",
                         "plate",
                         "drawer",
                         "open",
                         "\xc3\xa9t\xc3\xa9",
                         "42"};
  for (int i = 0; i < 64; ++i) {
    std::string t;
    for (int w = 0; w < 8; ++w) t += std::string(w ? " " : "") + words[rng() % std::size(words)];
    texts.push_back(t);
  }
  std::vector<std::vector<int64_t>> expected;
  for (const std::string& t : texts) expected.push_back(tok().Encode(t));
  std::vector<int> mismatches(4, 0);
  std::vector<std::thread> threads;
  for (int th = 0; th < 4; ++th) {
    threads.emplace_back([&, th] {
      for (int rep = 0; rep < 20; ++rep) {
        for (size_t i = 0; i < texts.size(); ++i)
          mismatches[th] += tok().Encode(texts[i]) != expected[i];
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(mismatches, std::vector<int>(4, 0));
}

#ifdef SPECPRUNE_TOKENIZER_TEST_WITH_PROTOBUF
// libsentencepiece embeds protobuf-lite 3.14; in a process with libprotobuf 3.21 its references
// must stay inside it (the shim's DF_SYMBOLIC copy), or its static initializers abort on the
// version check. Both protobufs must keep working afterwards.
TEST_F(TokenizerTest, LoadsAndEncodesNextToLibprotobuf) {
  EXPECT_EQ(GOOGLE_PROTOBUF_VERSION / 1000000, 3);
  google::protobuf::FileDescriptorProto before;
  before.set_name("before.proto");
  std::string wire;
  ASSERT_TRUE(before.SerializeToString(&wire));

  absl::StatusOr<std::unique_ptr<Tokenizer>> second = Tokenizer::Load(kModel);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ((*second)->Encode("open the drawer"), tok().Encode("open the drawer"));
  EXPECT_EQ((*second)->Decode((*second)->Encode("open the drawer")), "open the drawer");

  google::protobuf::FileDescriptorProto after;
  ASSERT_TRUE(after.ParseFromString(wire));
  EXPECT_EQ(after.name(), "before.proto");
}
#endif

TEST(TokenizerLoadTest, MissingFileIsNotFound) {
  absl::StatusOr<std::unique_ptr<Tokenizer>> tok = Tokenizer::Load("/nonexistent/tokenizer.model");
  EXPECT_EQ(tok.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(tok.status().message(), HasSubstr("/nonexistent/tokenizer.model"));
}

TEST(TokenizerLoadTest, GarbageOrDirectoryIsInvalidArgument) {
  std::string tmpl = (fs::temp_directory_path() / "tokenizer_test_XXXXXX").string();
  ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
  const std::string garbage = tmpl + "/garbage.model";
  {
    std::ofstream out(garbage, std::ios::binary);
    std::mt19937 rng(5);
    for (int i = 0; i < 4096; ++i) out.put(static_cast<char>(rng()));
  }
  absl::StatusOr<std::unique_ptr<Tokenizer>> tok = Tokenizer::Load(garbage);
  EXPECT_EQ(tok.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(tok.status().message(), HasSubstr(garbage));

  const std::string empty = tmpl + "/empty.model";
  std::ofstream(empty).close();
  EXPECT_EQ(Tokenizer::Load(empty).status().code(), absl::StatusCode::kInvalidArgument);

  EXPECT_EQ(Tokenizer::Load(tmpl).status().code(), absl::StatusCode::kInvalidArgument);
  fs::remove_all(tmpl);
}

}  // namespace
}  // namespace specprune
