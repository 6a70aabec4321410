#include "tokenizer.h"

#include <algorithm>
#include <fstream>
#include <set>
#include <sstream>

#include "errors.h"
#include "unicode_text.h"

namespace ernie_vilg2 {
namespace {

// WordPiece gives up on longer words (PaddleNLP's max_input_chars_per_word).
constexpr std::size_t kMaxCharsPerWord = 100;

// Lines as Python's text-mode iteration sees them (universal newlines: \n, \r\n, \r).
std::vector<std::string> read_lines(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw UserError(path + ": cannot open the vocab file");
  std::stringstream buffer;
  buffer << in.rdbuf();
  const std::string data = buffer.str();
  std::vector<std::string> lines;
  std::string line;
  for (std::size_t i = 0; i < data.size(); ++i) {
    const char c = data[i];
    if (c == '\n' || c == '\r') {
      lines.push_back(line);
      line.clear();
      if (c == '\r' && i + 1 < data.size() && data[i + 1] == '\n') ++i;
    } else {
      line += c;
    }
  }
  if (!line.empty()) lines.push_back(line);
  return lines;
}

// Python's str.split(): split on str.isspace() characters, drop empty pieces.
void split_on_py_space(const std::u32string& text, std::vector<std::u32string>* out) {
  std::u32string word;
  for (char32_t c : text) {
    if (has_flag(c, kPySpace)) {
      if (!word.empty()) out->push_back(std::move(word));
      word.clear();
    } else {
      word.push_back(c);
    }
  }
  if (!word.empty()) out->push_back(std::move(word));
}

}  // namespace

Tokenizer::Tokenizer(TokenizerConfig config) : config_(std::move(config)) {
  const std::vector<std::string> lines = read_lines(config_.vocab_file);
  for (std::size_t i = 0; i < lines.size(); ++i) {
    std::u32string decoded;
    std::size_t bad = 0;
    if (!decode_utf8(lines[i], &decoded, &bad)) {
      throw UserError(config_.vocab_file + ": line " + std::to_string(i + 1) + " is not valid UTF-8");
    }
    vocab_[lines[i]] = static_cast<std::int64_t>(i);  // a repeated token keeps its last line, as in PaddleNLP
  }
  auto required = [&](const std::string& token, const char* field) {
    auto it = vocab_.find(token);
    if (it == vocab_.end()) {
      throw UserError(std::string("field 'tokenizer.") + field + "': '" + token + "' is not in the vocabulary (" + config_.vocab_file + ")");
    }
    return it->second;
  };
  unk_id_ = required(config_.unk_token, "unk_token");
  cls_id_ = required(config_.cls_token, "cls_token");
  sep_id_ = required(config_.sep_token, "sep_token");
  pad_id_ = required(config_.pad_token, "pad_token");
  for (const std::string& token : config_.never_split) {
    required(token, "never_split token");
    std::u32string decoded;
    std::size_t bad = 0;
    decode_utf8(token, &decoded, &bad);
    if (!decoded.empty()) never_split_.push_back(decoded);
  }
}

std::int64_t Tokenizer::id_of(const std::string& token) const {
  auto it = vocab_.find(token);
  return it == vocab_.end() ? unk_id_ : it->second;
}

// PaddleNLP lower-cases with re.sub("(tok1|tok2|...)|(.+?)", ...): at each position a
// never-split token (first in list order) is kept as it is, otherwise one character is
// lower-cased on its own (so there is no final-sigma context).
std::u32string Tokenizer::lower_except_never_split(const std::u32string& text) const {
  std::u32string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size();) {
    bool kept = false;
    for (const std::u32string& token : never_split_) {
      if (text.compare(i, token.size(), token) == 0) {
        out += token;
        i += token.size();
        kept = true;
        break;
      }
    }
    if (!kept) append_lower(text[i++], &out);
  }
  return out;
}

void Tokenizer::basic_tokenize(const std::u32string& text, std::vector<std::u32string>* words) const {
  // Clean the text and put spaces around CJK ideographs.
  std::u32string cleaned;
  cleaned.reserve(text.size());
  for (char32_t c : text) {
    const std::uint8_t flags = char_flags(c);
    if (c == 0 || c == 0xFFFD || (flags & kControl)) continue;
    if (flags & kWhitespace) {
      cleaned.push_back(U' ');
    } else if (is_chinese_char(c)) {
      cleaned.push_back(U' ');
      cleaned.push_back(c);
      cleaned.push_back(U' ');
    } else {
      cleaned.push_back(c);
    }
  }
  std::vector<std::u32string> tokens;
  split_on_py_space(cleaned, &tokens);
  for (std::u32string& token : tokens) {
    // The text is lower-cased already (step 2), so BasicTokenizer's token.lower() is a
    // no-op (the table generator checks that lower() is idempotent).
    if (config_.do_lower_case) token = strip_accents(token);
    // Punctuation and symbols become words of their own.
    std::u32string word;
    for (char32_t c : token) {
      if (char_flags(c) & (kPunctuation | kSymbol)) {
        if (!word.empty()) words->push_back(std::move(word));
        word.clear();
        words->push_back(std::u32string(1, c));
      } else {
        word.push_back(c);
      }
    }
    if (!word.empty()) words->push_back(std::move(word));
  }
}

void Tokenizer::word_pieces(const std::u32string& word, std::vector<std::string>* out) const {
  if (word.size() > kMaxCharsPerWord) {
    out->push_back(config_.unk_token);
    return;
  }
  std::vector<std::string> pieces;
  for (std::size_t start = 0; start < word.size();) {
    std::size_t end = word.size();
    std::string match;
    for (; end > start; --end) {
      std::string candidate = (start > 0 ? "##" : "") + encode_utf8(word.substr(start, end - start));
      if (vocab_.count(candidate)) {
        match = std::move(candidate);
        break;
      }
    }
    if (end == start) {  // no piece matches: the whole word is unknown
      out->push_back(config_.unk_token);
      return;
    }
    pieces.push_back(std::move(match));
    start = end;
  }
  out->insert(out->end(), pieces.begin(), pieces.end());
}

std::vector<std::string> Tokenizer::tokenize(const std::u32string& raw_text) const {
  std::u32string text = raw_text;
  for (char32_t& c : text) {
    auto it = config_.normalization.find(c);
    if (it != config_.normalization.end()) c = it->second;
  }
  if (config_.do_lower_case) text = lower_except_never_split(text);

  std::vector<std::string> tokens;
  auto flush = [&](const std::u32string& piece) {
    std::vector<std::u32string> words;
    basic_tokenize(piece, &words);
    for (const std::u32string& word : words) word_pieces(word, &tokens);
  };
  // Cut out never-split tokens (leftmost, then longest match) and tokenize the rest.
  std::u32string piece;
  for (std::size_t i = 0; i < text.size();) {
    const std::u32string* best = nullptr;
    for (const std::u32string& token : never_split_) {
      if (text.compare(i, token.size(), token) == 0 && (!best || token.size() > best->size())) best = &token;
    }
    if (best) {
      flush(piece);
      piece.clear();
      tokens.push_back(encode_utf8(*best));
      i += best->size();
    } else {
      piece.push_back(text[i++]);
    }
  }
  flush(piece);
  return tokens;
}

Encoding Tokenizer::encode(const std::u32string& text) const {
  const std::vector<std::string> tokens = tokenize(text);
  const std::size_t room = static_cast<std::size_t>(config_.max_length) - 2;
  Encoding encoding;
  encoding.truncated = tokens.size() > room;
  encoding.ids.reserve(config_.max_length);
  encoding.ids.push_back(cls_id_);
  for (std::size_t i = 0; i < tokens.size() && i < room; ++i) encoding.ids.push_back(id_of(tokens[i]));
  encoding.ids.push_back(sep_id_);
  encoding.ids.resize(config_.max_length, pad_id_);
  return encoding;
}

std::string truncation_warning(const Tokenizer& tokenizer, const std::vector<std::u32string>& prompts) {
  const std::set<std::u32string> distinct(prompts.begin(), prompts.end());
  std::size_t cut = 0, longest = 0;
  for (const std::u32string& prompt : distinct) {
    const std::size_t length = tokenizer.tokenize(prompt).size() + 2;  // with [CLS] and [SEP]
    if (length > static_cast<std::size_t>(tokenizer.config().max_length)) {
      ++cut;
      longest = std::max(longest, length);
    }
  }
  if (!cut) return "";
  return "warning: " + std::to_string(cut) + " of " + std::to_string(distinct.size()) + " prompts were truncated to " +
         std::to_string(tokenizer.config().max_length) + " tokens (tokenizer.max_length); longest: " +
         std::to_string(longest) + " tokens\n";
}

}  // namespace ernie_vilg2
