// UTF-8 <-> code points and the Unicode character properties the tokenizer needs, from
// tables generated at build time from Python's unicodedata (tools/gen_unicode_tables.py).
#pragma once

#include <cstdint>
#include <string>

namespace ernie_vilg2 {

// Character classes of PaddleNLP's BasicTokenizer (bit flags).
enum CharFlag : std::uint8_t {
  kControl = 1,         // category C* except \t \n \r: removed
  kWhitespace = 2,      // " " \t \n \r or category Zs: becomes a space
  kPunctuation = 4,     // ASCII non-alphanumerics or category P*: split off
  kSymbol = 8,          // category S* or a few listed code points: split off
  kNonspacingMark = 16, // category Mn: removed by accent stripping
  kPySpace = 32,        // Python's str.isspace(): what str.split() splits on
};

std::uint8_t char_flags(char32_t c);
inline bool has_flag(char32_t c, CharFlag flag) { return (char_flags(c) & flag) != 0; }

// A CJK ideograph as BasicTokenizer._is_chinese_char defines it.
bool is_chinese_char(char32_t c);

// Appends Python's chr(c).lower() (one or two code points).
void append_lower(char32_t c, std::u32string* out);

// unicodedata.normalize("NFD", text) with every category-Mn code point removed
// (BasicTokenizer._run_strip_accents).
std::u32string strip_accents(const std::u32string& text);

// Strict UTF-8 decoding; on failure returns false and sets *error_offset to the byte
// offset of the first bad sequence (overlong forms and surrogates are errors).
bool decode_utf8(const std::string& bytes, std::u32string* out, std::size_t* error_offset);
std::string encode_utf8(const std::u32string& text);
std::string encode_utf8(char32_t c);

// The Unicode version of the generated tables (that of the Python that built them).
const char* unicode_version();

}  // namespace ernie_vilg2
