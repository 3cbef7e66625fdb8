#include "common/tokenizer/byte_level.h"

#include <array>

#include "common/tokenizer/unicode.h"

namespace asyncspade::tokenizer {
namespace {

struct ByteLevelTables {
  std::array<std::string, 256> byte_to_utf8;
  std::array<std::array<char, 2>, 256> byte_to_chars;  // the same, as 1 or 2 raw bytes
  std::array<uint8_t, 256> byte_to_length;
  std::array<int16_t, 324> char_to_byte;  // the alphabet's code points are all below 256 + 68

  ByteLevelTables() {
    char_to_byte.fill(-1);
    // bytes_to_unicode() of GPT-2: printable Latin-1 bytes map to themselves, the other 68 bytes
    // to 256, 257, ... in byte order.
    auto printable = [](int b) { return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE); };
    int next = 256;
    for (int b = 0; b < 256; ++b) {
      char32_t c = printable(b) ? static_cast<char32_t>(b) : static_cast<char32_t>(next++);
      AppendUtf8(c, byte_to_utf8[b]);
      byte_to_length[b] = static_cast<uint8_t>(byte_to_utf8[b].size());
      byte_to_chars[b] = {byte_to_utf8[b][0], byte_to_utf8[b].size() > 1 ? byte_to_utf8[b][1] : '\0'};
      char_to_byte[c] = static_cast<int16_t>(b);
    }
  }
};

const ByteLevelTables& Tables() {
  static const ByteLevelTables tables;
  return tables;
}

}  // namespace

void AppendByteLevel(std::string_view bytes, std::string& out) {
  const auto& tables = Tables();
  size_t at = out.size();
  out.resize(at + 2 * bytes.size());
  char* dst = out.data() + at;
  for (unsigned char b : bytes) {
    dst[0] = tables.byte_to_chars[b][0];
    dst[1] = tables.byte_to_chars[b][1];
    dst += tables.byte_to_length[b];
  }
  out.resize(static_cast<size_t>(dst - out.data()));
}

int ByteLevelByte(char32_t c) {
  if (c >= Tables().char_to_byte.size()) return -1;
  return Tables().char_to_byte[c];
}

}  // namespace asyncspade::tokenizer
