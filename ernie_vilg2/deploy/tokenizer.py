"""A small pure-Python BERT/WordPiece tokenizer that reads an export's ``tokenizer/vocab.txt``.

It gives exactly the ids of :func:`ernie_vilg2.text.tokenizer.tokenize` (PaddleNLP 2.8.1's
``ErnieTokenizer`` with our added POS tokens, after
:func:`ernie_vilg2.text.normalize.normalize_text`) without importing PaddleNLP. The steps,
in PaddleNLP's order (the C++ runner implements the same ones):

1. normalise: the manifest's one-to-one character map (typographic quotes and dashes);
2. lower case (``do_lower_case``), character by character, except inside the
   ``never_split`` tokens (``[CLS]``, the POS tokens ``[n]`` ...), matched at each position
   in list order;
3. cut the text at every ``never_split`` token (leftmost, longest first); those are tokens;
4. the rest goes through BERT's basic tokenizer (drop NUL, U+FFFD and control characters,
   whitespace to spaces; spaces around CJK ideographs; split on whitespace; lower case and
   strip accents (NFD, drop ``Mn``); split off every punctuation and symbol character) and
   then WordPiece (greedy longest match, ``##`` continuations, ``[UNK]`` for a word that
   cannot be covered or is longer than 100 characters);
5. ids from the vocab (a later line wins over an earlier duplicate; ``[UNK]`` if absent),
   cut to ``max_length - 2``, ``[CLS] ... [SEP]``, padded with ``[PAD]`` to ``max_length``.
"""
from __future__ import annotations

import os
import re
import unicodedata
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from ..text.tokenizer import report_truncation

MAX_CHARS_PER_WORD = 100

# CJK ranges of BERT's basic tokenizer (PaddleNLP 2.8.1), which puts spaces around them.
_CJK_RANGES = (
    (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F),
)
# Characters PaddleNLP treats as symbols besides Unicode category S*.
_EXTRA_SYMBOLS = {0x00AD, 0x00B2, 0x00BA, 0x3007, 0x00B5, 0x00D8, 0x014B, 0x01B1}


def _is_whitespace(char: str) -> bool:
    return char in " \t\n\r" or unicodedata.category(char) == "Zs"


def _is_control(char: str) -> bool:
    return char not in "\t\n\r" and unicodedata.category(char).startswith("C")


def _is_punctuation_or_symbol(char: str) -> bool:
    cp = ord(char)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True  # all non-alphanumeric ASCII
    category = unicodedata.category(char)
    return category.startswith("P") or category.startswith("S") or cp in _EXTRA_SYMBOLS


def _is_cjk(char: str) -> bool:
    cp = ord(char)
    return any(lo <= cp <= hi for lo, hi in _CJK_RANGES)


def load_vocab(path: str) -> Dict[str, int]:
    """``{token: id}`` from a vocab file: one token per line, id = line number."""
    vocab: Dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for index, line in enumerate(f):
            vocab[line.rstrip("\n")] = index
    return vocab


class WordPieceTokenizer:
    """Prompts to ``input_ids`` (int64 [B, max_length]) as the exported text encoder expects."""

    def __init__(
        self,
        vocab: Mapping[str, int],
        max_length: int,
        do_lower_case: bool = True,
        unk_token: str = "[UNK]",
        cls_token: str = "[CLS]",
        sep_token: str = "[SEP]",
        pad_token: str = "[PAD]",
        never_split: Sequence[str] = (),
        normalization: Optional[Mapping[str, str]] = None,
    ):
        if max_length < 3:
            raise ValueError(f"tokenizer.max_length must be >= 3 ([CLS], a token, [SEP]), got {max_length}")
        for field, token in (("unk_token", unk_token), ("cls_token", cls_token),
                             ("sep_token", sep_token), ("pad_token", pad_token)):
            if token not in vocab:
                raise ValueError(f"tokenizer.{field}: {token!r} is not in the vocabulary")
        self.vocab = dict(vocab)
        self.max_length = max_length
        self.do_lower_case = do_lower_case
        self.unk_token = unk_token
        self.unk_id, self.cls_id = vocab[unk_token], vocab[cls_token]
        self.sep_id, self.pad_id = vocab[sep_token], vocab[pad_token]
        self.never_split = list(never_split)
        self._table = str.maketrans(dict(normalization or {}))
        # Step 2 (PaddleNLP's regex): at each position a never_split token, in list order,
        # else one character (``.`` does not match a newline, which stays as it is).
        alternatives = "|".join(re.escape(t) for t in self.never_split)
        self._lower_pattern = re.compile(rf"({alternatives})|(.+?)" if alternatives else r"(.+?)")
        self._by_length = sorted(set(self.never_split), key=len, reverse=True)

    @classmethod
    def from_manifest(cls, folder: str, spec: Mapping) -> "WordPieceTokenizer":
        """The tokenizer described by a manifest's ``tokenizer`` section (paths relative to ``folder``)."""
        return cls(
            load_vocab(os.path.join(folder, spec["vocab"])),
            max_length=spec["max_length"],
            do_lower_case=spec["do_lower_case"],
            unk_token=spec["unk_token"],
            cls_token=spec["cls_token"],
            sep_token=spec["sep_token"],
            pad_token=spec["pad_token"],
            never_split=spec["never_split"],
            normalization=spec["normalization"],
        )

    # -- text to tokens ---------------------------------------------------------------
    def tokenize(self, text: str) -> List[str]:
        text = text.translate(self._table)
        if self.do_lower_case:
            text = self._lower_pattern.sub(lambda m: m.group(1) or m.group(2).lower(), text)
        tokens: List[str] = []
        for piece, special in self._split_never_split(text):
            if special:
                tokens.append(piece)
            else:
                for word in self._basic_tokenize(piece):
                    tokens.extend(self._wordpiece(word))
        return tokens

    def _split_never_split(self, text: str):
        """``[(piece, is_never_split_token), ...]``: leftmost, longest match first."""
        pieces, start, i = [], 0, 0
        while i < len(text):
            match = next((t for t in self._by_length if text.startswith(t, i)), None)
            if match is None:
                i += 1
                continue
            if i > start:
                pieces.append((text[start:i], False))
            pieces.append((match, True))
            i = start = i + len(match)
        if start < len(text):
            pieces.append((text[start:], False))
        return pieces

    def _basic_tokenize(self, text: str) -> List[str]:
        chars = []
        for char in text:
            if char in ("\x00", "\ufffd") or _is_control(char):
                continue
            if _is_whitespace(char):
                chars.append(" ")
            elif _is_cjk(char):
                chars.append(f" {char} ")
            else:
                chars.append(char)
        words: List[str] = []
        for word in "".join(chars).split():
            if self.do_lower_case:
                word = unicodedata.normalize("NFD", word.lower())
                word = "".join(c for c in word if unicodedata.category(c) != "Mn")
            current = ""
            for char in word:
                if _is_punctuation_or_symbol(char):
                    if current:
                        words.append(current)
                    words.append(char)
                    current = ""
                else:
                    current += char
            if current:
                words.append(current)
        # Stripping accents can leave whitespace-like pieces: split again as BERT does.
        return " ".join(words).split()

    def _wordpiece(self, word: str) -> List[str]:
        if len(word) > MAX_CHARS_PER_WORD:
            return [self.unk_token]
        pieces, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    break
                end -= 1
            else:
                return [self.unk_token]
            pieces.append(piece)
            start = end
        return pieces

    # -- tokens to ids ----------------------------------------------------------------
    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """``input_ids`` int64 [len(texts), max_length]; prompts cut to fit get one summary
        warning per call, as in training and tools/generate.py (:func:`report_truncation`)."""
        ids = np.full((len(texts), self.max_length), self.pad_id, dtype="int64")
        room = self.max_length - 2
        cut = False
        for row, text in enumerate(texts):
            tokens = self.tokenize(text)
            cut = cut or len(tokens) > room
            body = [self.vocab.get(t, self.unk_id) for t in tokens[:room]]
            ids[row, : len(body) + 2] = [self.cls_id, *body, self.sep_id]
        if cut:
            report_truncation(self, texts, self.max_length)
        return ids
