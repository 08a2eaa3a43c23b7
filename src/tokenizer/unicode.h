// UTF-8 and the three Unicode classes the GPT-2 pre-tokenizer needs, without ICU or std::regex.
// Private to src/tokenizer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace lumen::unicode {

constexpr uint32_t kReplacementChar = 0xFFFD;

// Decodes the code point that starts at s[i] (i < s.size()) and stores its byte length in *len.
// Malformed input (bad lead, truncated, overlong, surrogate, > U+10FFFF) decodes as one byte of
// kReplacementChar, so every byte of any input belongs to exactly one "character".
uint32_t decode_utf8(std::string_view s, size_t i, size_t* len);

// Byte length of the character at s[i]; same rules as decode_utf8.
size_t char_len(std::string_view s, size_t i);

void append_utf8(std::string& out, uint32_t cp);
bool is_valid_utf8(std::string_view s);

bool is_letter(uint32_t cp);      // \p{L}
bool is_number(uint32_t cp);      // \p{N}
bool is_whitespace(uint32_t cp);  // \s as in Python `regex`: the White_Space property

}  // namespace lumen::unicode
