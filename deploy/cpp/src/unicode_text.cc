#include "unicode_text.h"

#include <algorithm>
#include <iterator>

#include "unicode_tables.h"  // generated in the build folder

namespace ernie_vilg2 {
namespace {

namespace ut = unicode_tables;

template <typename Table>
const auto* find_code_point(const Table& table, char32_t c) {
  auto it = std::lower_bound(std::begin(table), std::end(table), c,
                             [](const auto& row, char32_t value) { return row.code_point < value; });
  return (it != std::end(table) && it->code_point == c) ? &*it : nullptr;
}

// Hangul syllables decompose algorithmically (Unicode 3.12).
constexpr char32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr char32_t kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount, kSCount = 11172;

void append_decomposition(char32_t c, std::u32string* out) {
  if (c >= kSBase && c < kSBase + kSCount) {
    const char32_t s = c - kSBase;
    out->push_back(kLBase + s / kNCount);
    out->push_back(kVBase + (s % kNCount) / kTCount);
    if (s % kTCount) out->push_back(kTBase + s % kTCount);
    return;
  }
  if (const auto* row = find_code_point(ut::kDecompositionIndex, c)) {
    out->append(ut::kDecompositionPool + row->offset, row->length);
  } else {
    out->push_back(c);
  }
}

int combining_class(char32_t c) {
  const auto* row = find_code_point(ut::kCombiningClasses, c);
  return row ? row->ccc : 0;
}

}  // namespace

std::uint8_t char_flags(char32_t c) {
  auto it = std::upper_bound(std::begin(ut::kFlagRuns), std::end(ut::kFlagRuns), c,
                             [](char32_t value, const ut::FlagRun& run) { return value < run.first; });
  return it == std::begin(ut::kFlagRuns) ? 0 : std::prev(it)->flags;
}

bool is_chinese_char(char32_t c) {
  return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x20000 && c <= 0x2A6DF) ||
         (c >= 0x2A700 && c <= 0x2B73F) || (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B820 && c <= 0x2CEAF) ||
         (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

void append_lower(char32_t c, std::u32string* out) {
  if (const auto* row = find_code_point(ut::kLowerIndex, c)) {
    out->append(ut::kLowerPool + row->offset, row->length);
  } else {
    out->push_back(c);
  }
}

std::u32string strip_accents(const std::u32string& text) {
  std::u32string nfd;
  nfd.reserve(text.size());
  for (char32_t c : text) append_decomposition(c, &nfd);
  // Canonical ordering: a stable sort by combining class of each run of non-starters.
  for (std::size_t i = 0; i < nfd.size();) {
    if (combining_class(nfd[i]) == 0) {
      ++i;
      continue;
    }
    std::size_t end = i;
    while (end < nfd.size() && combining_class(nfd[end]) != 0) ++end;
    std::stable_sort(nfd.begin() + i, nfd.begin() + end,
                     [](char32_t a, char32_t b) { return combining_class(a) < combining_class(b); });
    i = end;
  }
  std::u32string out;
  out.reserve(nfd.size());
  for (char32_t c : nfd) {
    if (!has_flag(c, kNonspacingMark)) out.push_back(c);
  }
  return out;
}

bool decode_utf8(const std::string& bytes, std::u32string* out, std::size_t* error_offset) {
  out->clear();
  const auto* s = reinterpret_cast<const unsigned char*>(bytes.data());
  const std::size_t n = bytes.size();
  for (std::size_t i = 0; i < n;) {
    const unsigned char b = s[i];
    std::size_t length;
    char32_t c;
    if (b < 0x80) {
      length = 1, c = b;
    } else if ((b & 0xE0) == 0xC0) {
      length = 2, c = b & 0x1F;
    } else if ((b & 0xF0) == 0xE0) {
      length = 3, c = b & 0x0F;
    } else if ((b & 0xF8) == 0xF0) {
      length = 4, c = b & 0x07;
    } else {
      *error_offset = i;
      return false;
    }
    if (i + length > n) {
      *error_offset = i;
      return false;
    }
    for (std::size_t k = 1; k < length; ++k) {
      if ((s[i + k] & 0xC0) != 0x80) {
        *error_offset = i;
        return false;
      }
      c = (c << 6) | (s[i + k] & 0x3F);
    }
    static constexpr char32_t kMinimum[] = {0, 0, 0x80, 0x800, 0x10000};
    if (c < kMinimum[length] || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) {
      *error_offset = i;
      return false;
    }
    out->push_back(c);
    i += length;
  }
  return true;
}

std::string encode_utf8(char32_t c) {
  std::string out;
  if (c < 0x80) {
    out += static_cast<char>(c);
  } else if (c < 0x800) {
    out += static_cast<char>(0xC0 | (c >> 6));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    out += static_cast<char>(0xE0 | (c >> 12));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (c >> 18));
    out += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  }
  return out;
}

std::string encode_utf8(const std::u32string& text) {
  std::string out;
  out.reserve(text.size());
  for (char32_t c : text) out += encode_utf8(c);
  return out;
}

const char* unicode_version() { return ut::kUnicodeVersion; }

}  // namespace ernie_vilg2
