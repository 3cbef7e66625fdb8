// The pipeline components on small hand-made tokenizer.json documents. Expected values come from
// HF tokenizers 0.23.3 (Python) run on the same documents, e.g.
//   Tokenizer.from_str(json.dumps(doc)).encode(text).ids
//   pre_tokenizers.Split("-", "merged_with_next").pre_tokenize_str("the-final--countdown")
#include <memory>
#include <string>
#include <vector>

#include "common/tokenizer/pre_tokenizer.h"
#include "common/tokenizer/tokenizer.h"
#include "common/tokenizer/unicode.h"
#include "gtest/gtest.h"

namespace asyncspade {
namespace {

using Ids = std::vector<int32_t>;
using Words = std::vector<std::string>;
using nlohmann::json;

Words PreTokenize(const json& config, const std::string& text) {
  auto pre = tokenizer::ParsePreTokenizer(config, "pre_tokenizer");
  EXPECT_TRUE(pre.ok()) << pre.status();
  tokenizer::PreTokenizedText pieces(text);
  (*pre)->PreTokenize(pieces);
  Words words;
  for (const auto& piece : pieces.pieces()) words.emplace_back(pieces.View(piece));
  return words;
}

json SplitConfig(const std::string& behavior, bool invert) {
  return {{"type", "Split"}, {"pattern", {{"String", "-"}}}, {"behavior", behavior}, {"invert", invert}};
}

TEST(PreTokenizerTest, SplitBehaviors) {
  const std::string text = "the-final--countdown";
  EXPECT_EQ(PreTokenize(SplitConfig("Removed", false), text), (Words{"the", "final", "countdown"}));
  EXPECT_EQ(PreTokenize(SplitConfig("Isolated", false), text), (Words{"the", "-", "final", "-", "-", "countdown"}));
  EXPECT_EQ(PreTokenize(SplitConfig("MergedWithPrevious", false), text), (Words{"the-", "final-", "-", "countdown"}));
  EXPECT_EQ(PreTokenize(SplitConfig("MergedWithNext", false), text), (Words{"the", "-final", "-", "-countdown"}));
  EXPECT_EQ(PreTokenize(SplitConfig("Contiguous", false), text), (Words{"the", "-", "final", "--", "countdown"}));
  EXPECT_EQ(PreTokenize(SplitConfig("Removed", true), text), (Words{"-", "-", "-"}));
  EXPECT_EQ(PreTokenize(SplitConfig("MergedWithPrevious", true), text), (Words{"the", "-final", "-", "-countdown"}));
  EXPECT_EQ(PreTokenize(SplitConfig("MergedWithNext", true), text), (Words{"the-", "final-", "-", "countdown"}));
  json regex = {{"type", "Split"}, {"pattern", {{"Regex", "\\d+"}}}, {"behavior", "Isolated"}, {"invert", false}};
  EXPECT_EQ(PreTokenize(regex, "ab12cd345"), (Words{"ab", "12", "cd", "345"}));
}

TEST(PreTokenizerTest, DigitsMetaspaceByteLevel) {
  const std::string digits = "Call 123 please \u0663\u0664";  // Arabic-Indic digits are numeric too
  EXPECT_EQ(PreTokenize({{"type", "Digits"}, {"individual_digits", true}}, digits),
            (Words{"Call ", "1", "2", "3", " please ", "\u0663", "\u0664"}));
  EXPECT_EQ(PreTokenize({{"type", "Digits"}, {"individual_digits", false}}, digits),
            (Words{"Call ", "123", " please ", "\u0663\u0664"}));
  EXPECT_EQ(PreTokenize({{"type", "Metaspace"}, {"replacement", "\u2581"}, {"prepend_scheme", "always"}}, "Hey  friend!"),
            (Words{"\u2581Hey", "\u2581", "\u2581friend!"}));
  EXPECT_EQ(PreTokenize({{"type", "Metaspace"}, {"replacement", "\u2581"}, {"prepend_scheme", "never"}, {"split", false}},
                        "Hey  friend!"),
            (Words{"Hey\u2581\u2581friend!"}));
  EXPECT_EQ(PreTokenize({{"type", "ByteLevel"}, {"add_prefix_space", true}}, "Hello my friend, 42 times\n\n ok"),
            (Words{"\u0120Hello", "\u0120my", "\u0120friend", ",", "\u012042", "\u0120times", "\u010A\u010A", "\u0120ok"}));
  EXPECT_EQ(PreTokenize({{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}, "Hi \u00e9"),
            (Words{"Hi\u0120\u00c3\u00a9"}));
  // SmolLM2's pre-tokenizer.
  json smollm2 = {{"type", "Sequence"},
                  {"pretokenizers",
                   {{{"type", "Digits"}, {"individual_digits", true}},
                    {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}}}};
  EXPECT_EQ(PreTokenize(smollm2, "In 2024, it's 3x"),
            (Words{"In", "\u0120", "2", "0", "2", "4", ",", "\u0120it", "'s", "\u0120", "3", "x"}));
}

// A tiny BPE: single characters, "ab", "abc", "bc", a few byte tokens and <unk>.
json TinyTokenizer(json model_overrides = json::object(), json added = json::array(), json normalizer = nullptr) {
  json model = {{"type", "BPE"},
                {"dropout", nullptr},
                {"unk_token", "<unk>"},
                {"continuing_subword_prefix", nullptr},
                {"end_of_word_suffix", nullptr},
                {"fuse_unk", false},
                {"byte_fallback", false},
                {"ignore_merges", false},
                {"vocab",
                 {{"<unk>", 0}, {"a", 1}, {"b", 2}, {"c", 3}, {" ", 4}, {"ab", 5}, {"abc", 6}, {"bc", 7},
                  {"<0x78>", 8}, {"<0xC3>", 9}, {"<0xA9>", 10}}},
                {"merges", json::array({"a b", "ab c"})}};
  for (auto it = model_overrides.begin(); it != model_overrides.end(); ++it) model[it.key()] = it.value();
  return {{"version", "1.0"}, {"added_tokens", added},     {"normalizer", normalizer}, {"pre_tokenizer", nullptr},
          {"post_processor", nullptr}, {"decoder", nullptr}, {"model", model}};
}

std::unique_ptr<Tokenizer> Build(const json& doc) {
  auto tokenizer = Tokenizer::FromJson(doc, nullptr);
  EXPECT_TRUE(tokenizer.ok()) << tokenizer.status();
  return tokenizer.ok() ? std::move(tokenizer).value() : nullptr;
}

json Added(const std::string& content, int id, json flags) {
  json token = {{"id", id},          {"content", content}, {"single_word", false}, {"lstrip", false},
                {"rstrip", false},   {"normalized", false}, {"special", true}};
  for (auto it = flags.begin(); it != flags.end(); ++it) token[it.key()] = it.value();
  return token;
}

TEST(BpeModelTest, MergesUnknownsAndByteFallback) {
  auto plain = Build(TinyTokenizer());
  EXPECT_EQ(plain->Encode("abc", false), (Ids{6}));
  EXPECT_EQ(plain->Encode("abcab", false), (Ids{6, 5}));
  EXPECT_EQ(plain->Encode("xyz a", false), (Ids{0, 0, 0, 4, 1}));
  EXPECT_EQ(plain->Encode("bca", false), (Ids{2, 3, 1}));  // "b c" is in the vocabulary but not a merge

  auto fused = Build(TinyTokenizer({{"fuse_unk", true}}));
  EXPECT_EQ(fused->Encode("xyz a", false), (Ids{0, 4, 1}));
  EXPECT_EQ(fused->Encode("axxb", false), (Ids{1, 0, 2}));

  auto bytes = Build(TinyTokenizer({{"byte_fallback", true}}));
  EXPECT_EQ(bytes->Encode("x \u00e9 z a", false), (Ids{8, 4, 9, 10, 4, 0, 4, 1}));  // no <0x7A>: z is unk

  // nlohmann reads {{"a", "b"}, ...} as an object, hence the explicit arrays.
  auto pairs = Build(TinyTokenizer({{"merges", json::array({json::array({"a", "b"}), json::array({"ab", "c"})})}}));
  EXPECT_EQ(pairs->Encode("abcab", false), (Ids{6, 5}));

  json vocab = TinyTokenizer()["model"]["vocab"];
  vocab["bca"] = 11;
  auto ignore = Build(TinyTokenizer({{"vocab", vocab}, {"merges", json::array({"b c"})}, {"ignore_merges", true}}));
  EXPECT_EQ(ignore->Encode("bca", false), (Ids{11}));  // whole word in the vocabulary: taken as is
  EXPECT_EQ(ignore->Encode("abca", false), (Ids{1, 7, 1}));
}

TEST(BpeModelTest, LongWordsUseTheSameMergeOrder) {
  // Words above the linear-scan limit take the heap path; both must agree.
  auto plain = Build(TinyTokenizer());
  std::string word;
  Ids expected;
  for (int i = 0; i < 100; ++i) {
    word += i % 3 == 0 ? "abc" : "ab";
    expected.push_back(i % 3 == 0 ? 6 : 5);
  }
  EXPECT_EQ(plain->Encode(word, false), expected);
}

TEST(AddedTokensTest, StripAndSingleWord) {
  json added = {Added("<m>", 11, {{"lstrip", true}}), Added("<r>", 12, {{"rstrip", true}}),
                Added("ab", 5, {{"single_word", true}, {"special", false}})};
  auto tok = Build(TinyTokenizer(json::object(), added));
  EXPECT_EQ(tok->Encode("a <m> b", false), (Ids{1, 11, 4, 2}));
  EXPECT_EQ(tok->Encode("a  <r>  b", false), (Ids{1, 4, 4, 12, 2}));
  EXPECT_EQ(tok->Encode("ab abc ab", false), (Ids{5, 4, 6, 4, 5}));
  EXPECT_EQ(tok->Encode("c ab", false), (Ids{3, 4, 5}));
  EXPECT_EQ(tok->Encode("xab", false), (Ids{0, 5}));  // not a single word: BPE merges a+b instead
  EXPECT_EQ(tok->Encode("<m><m>", false), (Ids{11, 11}));
  EXPECT_EQ(tok->Encode("  <m>", false), (Ids{11}));
  EXPECT_TRUE(tok->IsSpecial(11));
  EXPECT_FALSE(tok->IsSpecial(5));
}

TEST(AddedTokensTest, IdsAreAssignedLikeHf) {
  // Declared ids that disagree with HF's assignment (next id after the model vocabulary) lose.
  json added = {Added("<x>", 40, {}), Added("<y>", 41, {}), Added("ab", 99, {})};
  auto tok = Build(TinyTokenizer(json::object(), added));
  EXPECT_EQ(tok->TokenToId("<x>"), 11);
  EXPECT_EQ(tok->TokenToId("<y>"), 12);
  EXPECT_EQ(tok->TokenToId("ab"), 5);  // already in the model vocabulary
  EXPECT_EQ(tok->vocab_size(), 13);
}

TEST(AddedTokensTest, NormalizedTokensMatchNormalizedText) {
  json added = {Added("AB", 11, {{"normalized", true}, {"special", false}})};
  auto tok = Build(TinyTokenizer(json::object(), added, {{"type", "Lowercase"}}));
  EXPECT_EQ(tok->Encode("cAB", false), (Ids{3, 11}));
  EXPECT_EQ(tok->Encode("c ab", false), (Ids{3, 4, 11}));
}

TEST(NormalizerTest, UnicodeForms) {
  // NFC composes, NFKC also folds compatibility characters; ASCII around them is untouched.
  json doc = TinyTokenizer();
  doc["model"]["vocab"]["\u00e9"] = 20;
  doc["model"]["vocab"]["e"] = 21;
  doc["model"]["vocab"]["\u0301"] = 22;
  doc["normalizer"] = {{"type", "NFC"}};
  EXPECT_EQ(Build(doc)->Encode("ae\u0301b", false), (Ids{1, 20, 2}));
  doc["normalizer"] = {{"type", "NFD"}};
  EXPECT_EQ(Build(doc)->Encode("a\u00e9b", false), (Ids{1, 21, 22, 2}));
  doc["normalizer"] = {{"type", "NFKC"}};
  EXPECT_EQ(Build(doc)->Encode("\uff41\uff42", false), (Ids{5}));  // fullwidth "ab"
  doc["normalizer"] = {{"type", "Sequence"},
                       {"normalizers", {{{"type", "Replace"}, {"pattern", {{"String", "x"}}}, {"content", "ab"}},
                                        {{"type", "Strip"}, {"strip_left", true}, {"strip_right", true}}}}};
  EXPECT_EQ(Build(doc)->Encode("  xc  ", false), (Ids{6}));
}

TEST(DecoderTest, SentencePieceChain) {
  json doc = TinyTokenizer();
  doc["model"]["vocab"]["\u2581a"] = 11;
  doc["decoder"] = {{"type", "Sequence"},
                    {"decoders",
                     {{{"type", "Replace"}, {"pattern", {{"String", "\u2581"}}}, {"content", " "}},
                      {{"type", "ByteFallback"}},
                      {{"type", "Fuse"}},
                      {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}}}};
  auto tok = Build(doc);
  EXPECT_EQ(tok->Decode(Ids{11, 11, 9, 10, 2}, false), "a a\u00e9b");
  EXPECT_EQ(tok->Decode(Ids{11, 9, 2}, false), "a\uFFFDb");       // lone C3: one U+FFFD per byte
  EXPECT_EQ(tok->Decode(Ids{11, 9, 9, 2}, false), "a\uFFFD\uFFFDb");
  doc["decoder"] = {{"type", "Metaspace"}, {"replacement", "\u2581"}, {"prepend_scheme", "always"}};
  EXPECT_EQ(Build(doc)->Decode(Ids{11, 11}, false), "a a");
  doc["decoder"] = nullptr;  // HF joins the tokens with spaces
  EXPECT_EQ(Build(doc)->Decode(Ids{1, 2, 3}, false), "a b c");
}

// Expected values: Unicode's "substitution of maximal subparts", as Rust's from_utf8_lossy and
// Python's bytes.decode("utf-8", "replace") implement it.
TEST(Utf8Test, LossyConversionReplacesMaximalSubparts) {
  using tokenizer::Utf8Lossy;
  EXPECT_EQ(Utf8Lossy("a\xED\xA0\x80z"), "a\uFFFD\uFFFD\uFFFDz");  // surrogate: 3 subparts
  EXPECT_EQ(Utf8Lossy("\xC0\x80"), "\uFFFD\uFFFD");                // overlong: 2
  EXPECT_EQ(Utf8Lossy("\xF0\x9F\x98"), "\uFFFD");                  // truncated: 1
  EXPECT_EQ(Utf8Lossy("\xE4\xB8" "a\xE4\xB8\xAD"), "\uFFFDa\u4e2d");
  EXPECT_EQ(Utf8Lossy("\xFF\xF5\x80"), "\uFFFD\uFFFD\uFFFD");
  EXPECT_TRUE(tokenizer::IsValidUtf8("h\u00e9llo \U0001F600"));
  EXPECT_FALSE(tokenizer::IsValidUtf8("\xF4\x90\x80\x80"));  // above U+10FFFF
}

// HF cannot be given invalid UTF-8 (Rust strings are valid by construction); our rule is to
// repair it the way from_utf8_lossy does before tokenizing.
TEST(EncodeTest, InvalidUtf8InputIsRepaired) {
  json doc = TinyTokenizer();
  doc["model"]["vocab"]["\uFFFD"] = 11;
  auto tok = Build(doc);
  EXPECT_EQ(tok->Encode("a\xFF" "b", false), (Ids{1, 11, 2}));
}

}  // namespace
}  // namespace asyncspade
