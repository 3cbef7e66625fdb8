// UTF-8 and Unicode helpers for the tokenizer. Everything downstream of Tokenizer::Encode works on
// valid UTF-8 (the entry point repairs invalid input), so these helpers assume valid input unless
// they say otherwise.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace asyncspade::tokenizer {

inline constexpr char32_t kReplacementChar = 0xFFFD;

// Decodes the code point starting at `text[pos]` of valid UTF-8 and advances `pos` past it.
char32_t NextCodepoint(std::string_view text, size_t& pos);
// Byte length of the UTF-8 sequence whose first byte is `lead` (1 for stray continuation bytes).
inline size_t Utf8SequenceLength(unsigned char lead) {
  if (lead < 0x80) return 1;
  if (lead >= 0xF0) return 4;
  if (lead >= 0xE0) return 3;
  if (lead >= 0xC0) return 2;
  return 1;
}
void AppendUtf8(char32_t codepoint, std::string& out);
size_t CountCodepoints(std::string_view text);

bool IsValidUtf8(std::string_view bytes);
// Converts arbitrary bytes to valid UTF-8 the way Rust's String::from_utf8_lossy does: every
// maximal invalid subpart (Unicode §3.9, "substitution of maximal subparts") becomes one U+FFFD.
std::string Utf8Lossy(std::string_view bytes);
// Appending form of Utf8Lossy; returns whether `bytes` was already valid.
bool AppendUtf8Lossy(std::string_view bytes, std::string& out);

// Unicode properties, matching what Rust's `char` methods answer (White_Space, general category
// N*, and the regex crate's \w used by added-token `single_word`).
bool IsWhitespace(char32_t c);
bool IsNumeric(char32_t c);
bool IsWordChar(char32_t c);

// Full lowercase mapping of one code point (U+0130 is the one code point that lowercases to two).
void AppendLowercase(char32_t c, std::string& out);

}  // namespace asyncspade::tokenizer
