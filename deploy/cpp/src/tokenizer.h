// The ERNIE text tokenizer: PaddleNLP's ErnieTokenizer (BERT basic tokenizer + WordPiece)
// as ernie_vilg2.text.tokenizer.tokenize calls it, re-implemented step by step so that it
// gives the same ids for every input. The order of the steps matters and is PaddleNLP's:
//   1. typographic normalisation (the manifest's map; ernie_vilg2/text/normalize.py)
//   2. lower-casing character by character, except never-split tokens (do_lower_case)
//   3. cutting out never-split tokens ([n] [v] ... matched in the text)
//   4. per remaining piece, BasicTokenizer: drop control chars / U+0000 / U+FFFD,
//      whitespace -> space, spaces around CJK ideographs, split on whitespace,
//      NFD + remove Mn (accents), split off punctuation and symbols
//   5. WordPiece: greedy longest match with "##" continuations; > 100 chars -> [UNK]
//   6. truncate to max_length - 2, add [CLS] ... [SEP], pad with [PAD] to max_length
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <unordered_map>
#include <vector>

namespace ernie_vilg2 {

struct TokenizerConfig {
  std::string vocab_file;
  int max_length = 0;
  bool do_lower_case = true;
  std::string unk_token = "[UNK]", cls_token = "[CLS]", sep_token = "[SEP]", pad_token = "[PAD]";
  std::vector<std::string> never_split;       // UTF-8
  std::map<char32_t, char32_t> normalization;  // one character to one
};

struct Encoding {
  std::vector<std::int64_t> ids;  // exactly max_length ids
  bool truncated = false;         // the prompt had more than max_length - 2 tokens
};

class Tokenizer {
 public:
  // Reads the vocab (line number = id); throws UserError naming the file.
  explicit Tokenizer(TokenizerConfig config);

  // The word pieces of a UTF-8 text (no special tokens, no truncation).
  std::vector<std::string> tokenize(const std::u32string& text) const;
  Encoding encode(const std::u32string& text) const;

  const TokenizerConfig& config() const { return config_; }

 private:
  std::int64_t id_of(const std::string& token) const;
  std::u32string lower_except_never_split(const std::u32string& text) const;
  void basic_tokenize(const std::u32string& text, std::vector<std::u32string>* words) const;
  void word_pieces(const std::u32string& word, std::vector<std::string>* out) const;

  TokenizerConfig config_;
  std::unordered_map<std::string, std::int64_t> vocab_;
  std::vector<std::u32string> never_split_;
  std::int64_t unk_id_, cls_id_, sep_id_, pad_id_;
};

// The one warning line for all the prompts that `tokenizer` cuts to its max_length, as the
// Python runners give it ("warning: 4 of 5 prompts were truncated ...\n"); "" when none is cut.
std::string truncation_warning(const Tokenizer& tokenizer, const std::vector<std::u32string>& prompts);

}  // namespace ernie_vilg2
