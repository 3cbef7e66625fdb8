// Encoding speed on 1 MB of realistic mixed text (prose, code, CJK, math, chat markup: the Qwen3
// reference strings, shuffled) and on 1 MB of mostly unseen words, which defeats the word cache.
// Prints MB/s; asserts only correctness (the decode round trip), never a time, so it cannot flake.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "common/tokenizer/tokenizer.h"
#include "gtest/gtest.h"
#include "tests/unit/common/tokenizer/test_data.h"

namespace asyncspade {
namespace {

constexpr size_t kTextBytes = 1 << 20;

std::string MixedText(const std::vector<nlohmann::json>& vectors, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<std::string> texts;
  for (const auto& v : vectors) texts.push_back(v["text"]);
  std::string out;
  while (out.size() < kTextBytes) {
    std::shuffle(texts.begin(), texts.end(), rng);
    for (const auto& t : texts) {
      out += t;
      out += "\n\n";
    }
  }
  return out;
}

std::string UnseenWordsText(uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> letter('a', 'z'), length(2, 12), punct(0, 9);
  std::string out;
  while (out.size() < kTextBytes) {
    int n = length(rng);
    for (int i = 0; i < n; ++i) out.push_back(static_cast<char>(letter(rng)));
    int p = punct(rng);
    out += p == 0 ? ".\n" : p == 1 ? ", " : " ";
  }
  return out;
}

double EncodeSeconds(const Tokenizer& tokenizer, const std::string& text, std::vector<int32_t>* ids) {
  auto start = std::chrono::steady_clock::now();
  *ids = tokenizer.Encode(text, false);
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

TEST(EncodeThroughputTest, Qwen3OneMegabyte) {
  std::string dir = testing::Qwen3TokenizerDir();
  if (!testing::Exists(dir + "/vectors.jsonl")) GTEST_SKIP() << "Qwen3 tokenizer not found under " << dir;
  auto tokenizer = Tokenizer::FromModelDir(dir);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  std::string mixed = MixedText(testing::ReadJsonLines(dir + "/vectors.jsonl"), 1234);
  std::string unseen = UnseenWordsText(99);

  std::vector<int32_t> ids;
  double cold = EncodeSeconds(**tokenizer, mixed, &ids);  // fresh tokenizer: empty word cache
  size_t mixed_ids = ids.size();
  double warm = EncodeSeconds(**tokenizer, mixed, &ids);
  EXPECT_EQ(ids.size(), mixed_ids);
  double unseen_seconds = EncodeSeconds(**tokenizer, unseen, &ids);
  EXPECT_EQ((*tokenizer)->Decode(ids, false), unseen);

  auto mb_per_s = [](size_t bytes, double s) { return bytes / 1e6 / s; };
  std::printf("Qwen3 encode, %zu bytes mixed text (%zu ids): cold cache %.1f ms (%.1f MB/s), warm %.1f ms (%.1f MB/s)\n",
              mixed.size(), mixed_ids, cold * 1e3, mb_per_s(mixed.size(), cold), warm * 1e3,
              mb_per_s(mixed.size(), warm));
  std::printf("Qwen3 encode, %zu bytes of random unseen words (%zu ids): %.1f ms (%.1f MB/s)\n", unseen.size(),
              ids.size(), unseen_seconds * 1e3, mb_per_s(unseen.size(), unseen_seconds));
}

TEST(EncodeThroughputTest, Stories260KOneMegabyte) {
  std::string dir = testing::Stories260KDir();
  std::string vectors_path = testing::Qwen3TokenizerDir() + "/vectors.jsonl";
  if (!testing::Exists(dir + "/tokenizer.json") || !testing::Exists(vectors_path)) {
    GTEST_SKIP() << "stories260K or the Qwen3 vectors not found under " << testing::SharedDir();
  }
  auto tokenizer = Tokenizer::FromModelDir(dir);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  std::string mixed = MixedText(testing::ReadJsonLines(vectors_path), 1234);
  std::vector<int32_t> ids;
  double seconds = EncodeSeconds(**tokenizer, mixed, &ids);
  // The whole text is one pre-token here (null pre-tokenizer), so this is the long-word path.
  std::printf("stories260K encode, %zu bytes mixed text (%zu ids): %.1f ms (%.1f MB/s)\n", mixed.size(), ids.size(),
              seconds * 1e3, mixed.size() / 1e6 / seconds);
  EXPECT_FALSE(ids.empty());
}

}  // namespace
}  // namespace asyncspade
