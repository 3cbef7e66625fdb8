// IncrementalDetokenizer on random id sequences (byte soups, byte-fallback runs broken by special
// and unknown ids, out-of-vocabulary ids): the streamed pieces always concatenate to Decode.
#include <random>
#include <string>
#include <vector>

#include "common/tokenizer/tokenizer.h"
#include "gtest/gtest.h"
#include "tests/unit/common/tokenizer/test_data.h"

namespace asyncspade {
namespace {

void ExpectStreamsMatchDecode(const Tokenizer& tokenizer, uint32_t seed, int sequences) {
  std::mt19937 rng(seed);
  // Mostly low ids (byte tokens and specials live there for SentencePiece vocabularies), some
  // anywhere, a few beyond the vocabulary.
  std::uniform_int_distribution<int32_t> low(0, 300), any(0, tokenizer.vocab_size() + 10), length(1, 24), pick(0, 9);
  for (int s = 0; s < sequences; ++s) {
    std::vector<int32_t> ids(length(rng));
    for (int32_t& id : ids) id = pick(rng) < 6 ? low(rng) : any(rng);
    for (bool skip : {false, true}) {
      IncrementalDetokenizer stream(tokenizer, skip);
      std::string streamed;
      for (int32_t id : ids) streamed += stream.Push(id);
      streamed += stream.Flush();
      ASSERT_EQ(streamed, tokenizer.Decode(ids, skip))
          << "sequence " << s << " skip_special_tokens=" << skip << " ids " << nlohmann::json(ids).dump();
    }
  }
}

TEST(IncrementalDetokenizerTest, RandomIdsStories260K) {
  if (!testing::Exists(testing::Stories260KDir() + "/tokenizer.json")) {
    GTEST_SKIP() << "stories260K not found under " << testing::Stories260KDir();
  }
  auto tokenizer = Tokenizer::FromModelDir(testing::Stories260KDir());
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  ExpectStreamsMatchDecode(**tokenizer, 7, 3000);
}

TEST(IncrementalDetokenizerTest, RandomIdsQwen3) {
  if (!testing::Exists(testing::Qwen3TokenizerDir() + "/tokenizer.json")) {
    GTEST_SKIP() << "Qwen3 tokenizer not found under " << testing::Qwen3TokenizerDir();
  }
  auto tokenizer = Tokenizer::FromModelDir(testing::Qwen3TokenizerDir());
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  ExpectStreamsMatchDecode(**tokenizer, 11, 3000);
}

TEST(IncrementalDetokenizerTest, FlushStartsANewText) {
  if (!testing::Exists(testing::Stories260KDir() + "/tokenizer.json")) {
    GTEST_SKIP() << "stories260K not found under " << testing::Stories260KDir();
  }
  auto tokenizer = Tokenizer::FromModelDir(testing::Stories260KDir());
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  IncrementalDetokenizer stream(**tokenizer, true);
  std::string first;
  for (int32_t id : {403, 407}) first += stream.Push(id);
  first += stream.Flush();
  EXPECT_EQ(first, (*tokenizer)->Decode(std::vector<int32_t>{403, 407}, true));
  std::string second = stream.Push(403);
  second += stream.Flush();
  EXPECT_EQ(second, (*tokenizer)->Decode(std::vector<int32_t>{403}, true));  // leading space stripped again
}

}  // namespace
}  // namespace asyncspade
