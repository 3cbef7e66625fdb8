// stories260K's SentencePiece-style BPE (byte fallback, Prepend+Replace normalizer, BOS template)
// against /work/shared/models/stories260K/golden.json, produced by HF's Rust `tokenizers`.
#include <memory>
#include <string>
#include <vector>

#include "common/tokenizer/tokenizer.h"
#include "gtest/gtest.h"
#include "tests/unit/common/tokenizer/test_data.h"

namespace asyncspade {
namespace {

class Stories260KTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::Stories260KDir();
    if (!testing::Exists(dir_ + "/tokenizer.json") || !testing::Exists(dir_ + "/golden.json")) {
      GTEST_SKIP() << "stories260K not found under " << dir_
                   << " (set ASYNCSPADE_SHARED_DIR to the shared data directory)";
    }
    auto loaded = Tokenizer::FromModelDir(dir_);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    tokenizer_ = std::move(loaded).value();
    golden_ = testing::ReadJson(dir_ + "/golden.json");
  }
  std::string dir_;
  std::unique_ptr<Tokenizer> tokenizer_;
  nlohmann::json golden_;
};

TEST_F(Stories260KTest, SpecialTokensFromConfig) {
  EXPECT_EQ(tokenizer_->vocab_size(), 512);
  EXPECT_EQ(tokenizer_->bos_token_id(), 1);
  EXPECT_EQ(tokenizer_->eos_token_id(), 2);
  EXPECT_TRUE(tokenizer_->IsSpecial(0));
  EXPECT_FALSE(tokenizer_->IsSpecial(300));
}

TEST_F(Stories260KTest, PromptIdsWithBos) {
  ASSERT_EQ(golden_["prompts"].size(), 3u);
  for (const auto& prompt : golden_["prompts"]) {
    std::string text = prompt["text"];
    std::vector<int32_t> expected = prompt["ids"];
    EXPECT_EQ(tokenizer_->Encode(text, /*add_special_tokens=*/true), expected) << text;
    // Without special tokens only the BOS goes away.
    EXPECT_EQ(tokenizer_->Encode(text, false), std::vector<int32_t>(expected.begin() + 1, expected.end())) << text;
  }
}

TEST_F(Stories260KTest, GreedyTextDecodes) {
  std::vector<int32_t> ids = golden_["greedy_from_bos"];
  EXPECT_EQ(tokenizer_->Decode(ids, /*skip_special_tokens=*/true), golden_["greedy_text"].get<std::string>());
}

TEST_F(Stories260KTest, FullTextDecodesAndStreams) {
  for (const auto& prompt : golden_["prompts"]) {
    std::vector<int32_t> ids = prompt["ids"];
    std::vector<int32_t> continuation = prompt["continuation_ids"];
    ids.insert(ids.end(), continuation.begin(), continuation.end());
    std::string expected = prompt["full_text"];
    EXPECT_EQ(tokenizer_->Decode(ids, true), expected);
    IncrementalDetokenizer stream(*tokenizer_, true);
    std::string streamed;
    for (int32_t id : ids) streamed += stream.Push(id);
    streamed += stream.Flush();
    EXPECT_EQ(streamed, expected);
  }
}

TEST_F(Stories260KTest, SourceMdExamples) {
  // Added tokens split the text and each side gets its own "▁" prefix (SOURCE.md).
  EXPECT_EQ(tokenizer_->Encode("a</s>b", false), (std::vector<int32_t>{261, 2, 268}));
  // The reference keeps special tokens in the text unless told to skip them.
  std::vector<int32_t> with_bos = {1, 403};
  EXPECT_EQ(tokenizer_->Decode(with_bos, false), "<s> Once");
  EXPECT_EQ(tokenizer_->Decode(with_bos, true), "Once");
  EXPECT_TRUE(tokenizer_->Encode("", false).empty());
  EXPECT_EQ(tokenizer_->Encode("", true), std::vector<int32_t>{1});
}

TEST_F(Stories260KTest, ByteFallbackRoundTripsAnyText) {
  // Characters outside the 512-token vocabulary fall back to <0xXX> byte tokens (ids 3..258).
  const std::string text = "café 中文 😀 naïve\ttab";
  std::vector<int32_t> ids = tokenizer_->Encode(text, false);
  bool used_bytes = false;
  for (int32_t id : ids) used_bytes |= id >= 3 && id <= 258;
  EXPECT_TRUE(used_bytes);
  // HF tokenizers 0.23.3 (Tokenizer.from_file, add_special_tokens=False) gives these ids.
  EXPECT_EQ(ids, (std::vector<int32_t>{280, 412, 431, 485, 410, 231, 187, 176, 233, 153, 138, 410, 243, 162, 155,
                                       131, 297, 412, 198, 178, 360, 12, 413, 412, 430}));
  EXPECT_EQ(tokenizer_->Decode(ids, false), text);
  // A truncated byte run is invalid UTF-8: ByteFallback gives one U+FFFD per byte (not one per
  // maximal subpart). Reference: HF tokenizers 0.23 decodes [231, 190, 300] to "\uFFFD\uFFFD ha".
  std::vector<int32_t> cut = {0xE4 + 3, 0xB8 + 3, 300};
  EXPECT_EQ(tokenizer_->Decode(cut, false), "\xEF\xBF\xBD\xEF\xBF\xBD ha");
  // Streaming waits for the end of a byte run before deciding its text.
  IncrementalDetokenizer stream(*tokenizer_, false);
  std::string streamed;
  for (int32_t id : ids) streamed += stream.Push(id);
  streamed += stream.Flush();
  EXPECT_EQ(streamed, text);
}

}  // namespace
}  // namespace asyncspade
