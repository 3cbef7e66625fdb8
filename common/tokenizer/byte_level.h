// GPT-2's reversible byte <-> character alphabet: byte-level BPE vocabularies spell every byte as
// one printable character (space is 'Ġ' U+0120, newline 'Ċ' U+010A, ...).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace asyncspade::tokenizer {

// Appends the byte-level spelling of every byte of `bytes`.
void AppendByteLevel(std::string_view bytes, std::string& out);
// The byte a character stands for, or -1 when the character is not in the alphabet.
int ByteLevelByte(char32_t c);

}  // namespace asyncspade::tokenizer
