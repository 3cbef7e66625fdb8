// Qwen3's tokenizer against the reference vectors of /work/shared/tokenizers/qwen3 (produced by
// HF's Rust `tokenizers`): encoding without special tokens, decoding with and without
// skip_special_tokens, and streaming decode token by token.
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "common/tokenizer/tokenizer.h"
#include "gtest/gtest.h"
#include "tests/unit/common/tokenizer/test_data.h"

namespace asyncspade {
namespace {

class Qwen3VectorsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!testing::Exists(testing::Qwen3TokenizerDir() + "/tokenizer.json")) return;
    auto loaded = Tokenizer::FromModelDir(testing::Qwen3TokenizerDir());
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    tokenizer_ = std::move(loaded).value().release();
  }
  static void TearDownTestSuite() {
    delete tokenizer_;
    tokenizer_ = nullptr;
  }
  void SetUp() override {
    if (tokenizer_ == nullptr) {
      GTEST_SKIP() << "Qwen3 tokenizer not found under " << testing::Qwen3TokenizerDir()
                   << " (set ASYNCSPADE_SHARED_DIR to the shared data directory)";
    }
  }
  static Tokenizer* tokenizer_;
};
Tokenizer* Qwen3VectorsTest::tokenizer_ = nullptr;

TEST_F(Qwen3VectorsTest, VocabularyAndConfig) {
  EXPECT_EQ(tokenizer_->vocab_size(), 151669);
  EXPECT_EQ(tokenizer_->TokenToId("<|im_end|>"), 151645);
  EXPECT_EQ(tokenizer_->TokenToId("<think>"), 151667);
  EXPECT_EQ(tokenizer_->IdToToken(151644), "<|im_start|>");
  EXPECT_TRUE(tokenizer_->IsSpecial(151643));
  EXPECT_FALSE(tokenizer_->IsSpecial(151667));  // <think> is an added token but not special
  EXPECT_FALSE(tokenizer_->IsSpecial(9707));
  EXPECT_EQ(tokenizer_->eos_token_id(), 151645);
  EXPECT_EQ(tokenizer_->bos_token_id(), std::nullopt);
  EXPECT_EQ(tokenizer_->IdToToken(151700), std::nullopt);
}

TEST_F(Qwen3VectorsTest, EncodeMatchesReference) {
  auto vectors = testing::ReadJsonLines(testing::Qwen3TokenizerDir() + "/vectors.jsonl");
  ASSERT_EQ(vectors.size(), 325u);
  int mismatches = 0;
  for (size_t i = 0; i < vectors.size(); ++i) {
    std::string text = vectors[i]["text"];
    std::vector<int32_t> expected = vectors[i]["ids"];
    std::vector<int32_t> got = tokenizer_->Encode(text, /*add_special_tokens=*/false);
    if (got != expected) {
      ++mismatches;
      ADD_FAILURE() << "vectors.jsonl line " << i + 1 << ": encoding differs for text "
                    << nlohmann::json(text).dump() << "\n  expected " << nlohmann::json(expected).dump()
                    << "\n  got      " << nlohmann::json(got).dump();
      if (mismatches > 5) break;
    }
  }
}

TEST_F(Qwen3VectorsTest, DecodeMatchesReference) {
  auto vectors = testing::ReadJsonLines(testing::Qwen3TokenizerDir() + "/vectors-decode.jsonl");
  ASSERT_EQ(vectors.size(), 56u);
  for (size_t i = 0; i < vectors.size(); ++i) {
    std::vector<int32_t> ids = vectors[i]["ids"];
    EXPECT_EQ(tokenizer_->Decode(ids, false), vectors[i]["text"].get<std::string>())
        << "vectors-decode.jsonl line " << i + 1;
    EXPECT_EQ(tokenizer_->Decode(ids, true), vectors[i]["text_skip_special"].get<std::string>())
        << "vectors-decode.jsonl line " << i + 1 << " (skip_special_tokens)";
  }
}

TEST_F(Qwen3VectorsTest, DecodeOfEncodeIsNfcText) {
  // SOURCE.md: decode(encode(text)) == NFC(text) for every vector; the ones without combining
  // sequences are their own NFC, so at least those must round-trip exactly.
  auto vectors = testing::ReadJsonLines(testing::Qwen3TokenizerDir() + "/vectors.jsonl");
  for (size_t i = 0; i < vectors.size(); ++i) {
    std::vector<int32_t> ids = vectors[i]["ids"];
    std::string decoded = tokenizer_->Decode(ids, false);
    EXPECT_EQ(tokenizer_->Encode(decoded, false), ids) << "line " << i + 1 << ": NFC text re-encodes differently";
  }
}

// Encode is const and shared across request threads (the word cache is the only mutable state).
TEST_F(Qwen3VectorsTest, ConcurrentEncodeMatchesReference) {
  auto vectors = testing::ReadJsonLines(testing::Qwen3TokenizerDir() + "/vectors.jsonl");
  std::vector<int> mismatches(4, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 3; ++round) {
        for (size_t i = t; i < vectors.size(); i += 2) {  // overlapping halves: shared cache entries
          std::vector<int32_t> expected = vectors[i]["ids"];
          mismatches[t] += tokenizer_->Encode(vectors[i]["text"].get<std::string>(), false) != expected;
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  for (int t = 0; t < 4; ++t) EXPECT_EQ(mismatches[t], 0) << "thread " << t;
}

TEST_F(Qwen3VectorsTest, OutOfVocabularyIdsAreDropped) {
  EXPECT_EQ(tokenizer_->Decode(std::vector<int32_t>{9707, 151700, 1879}, false), "Hello world");
  EXPECT_EQ(tokenizer_->Decode(std::vector<int32_t>{9707, -5, 1879, 1 << 30}, true), "Hello world");
}

// Streams every decode vector one id at a time: the pieces must concatenate to Decode(all ids),
// and text whose full decoding is valid (no U+FFFD at all) must never show U+FFFD mid-stream.
TEST_F(Qwen3VectorsTest, IncrementalDetokenizerMatchesDecode) {
  auto vectors = testing::ReadJsonLines(testing::Qwen3TokenizerDir() + "/vectors-decode.jsonl");
  auto encode_vectors = testing::ReadJsonLines(testing::Qwen3TokenizerDir() + "/vectors.jsonl");
  for (const auto& v : encode_vectors) vectors.push_back({{"ids", v["ids"]}});
  const std::string kReplacement = "\xEF\xBF\xBD";
  int streams_with_split_chars = 0;
  for (size_t i = 0; i < vectors.size(); ++i) {
    std::vector<int32_t> ids = vectors[i]["ids"];
    for (bool skip : {false, true}) {
      IncrementalDetokenizer stream(*tokenizer_, skip);
      std::string streamed;
      bool held_back = false;
      for (size_t n = 0; n < ids.size(); ++n) {
        std::string piece = stream.Push(ids[n]);
        std::string so_far = tokenizer_->Decode(absl::MakeConstSpan(ids.data(), n + 1), skip);
        held_back |= streamed.size() + piece.size() < so_far.size();
        streamed += piece;
      }
      streamed += stream.Flush();
      std::string expected = tokenizer_->Decode(ids, skip);
      EXPECT_EQ(streamed, expected) << "vector " << i << " skip_special_tokens=" << skip;
      if (expected.find(kReplacement) == std::string::npos) {
        EXPECT_EQ(streamed.find(kReplacement), std::string::npos) << "vector " << i;
      }
      streams_with_split_chars += held_back;
    }
  }
  // The vectors contain characters split across tokens; make sure the hold-back path ran.
  EXPECT_GT(streams_with_split_chars, 0);
}

}  // namespace
}  // namespace asyncspade
