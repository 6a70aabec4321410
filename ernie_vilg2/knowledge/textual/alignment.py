"""Key words -> token positions, and POS-token insertion.

Token character spans are computed here rather than taken from PaddleNLP's
``return_offsets_mapping``: that one guesses the span of an [UNK] by string search and
is off by one character after runs of unknown symbols ("Ⅻ ㈱ ½"). We replay the BERT
basic tokenizer (added tokens, cleaning, CJK split, lower-casing and accent stripping,
punctuation split) keeping each character's origin, and call the tokenizer's own
WordPiece per word, so an [UNK] covers exactly the word it replaced and "##" pieces
cover their characters. The result is checked against the ids the tokenizer produced;
on any disagreement PaddleNLP's offsets are used instead (with a warning).

Positions: token k of the text sits at k + 1 in ``input_ids`` ([CLS] first); tokens at
or beyond ``max_length - 1`` are cut by truncation and key words there are dropped (a
word cut in the middle keeps its visible tokens).
"""
from __future__ import annotations

import logging
import re
import unicodedata
from typing import List, Sequence, Tuple

import numpy as np

from .keywords import KeyWord

logger = logging.getLogger(__name__)

Span = Tuple[int, int]


class _Unsupported(Exception):
    """The tokenizer is not one whose steps we can replay."""


def _strip_accents(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")


def _lower_outside_specials(tokenizer, text: str) -> str:
    # What PaddleNLP's tokenize() does before splitting off added tokens.
    specials = list(tokenizer.unique_no_split_tokens) + list(tokenizer.all_special_tokens)
    pattern = "(" + "|".join(re.escape(s) for s in specials) + ")|(.+?)"
    return re.sub(pattern, lambda m: m.group(1) or m.group(2).lower(), text, flags=re.S)


def _basic_words(tokenizer, text: str, start: int, end: int) -> List[Tuple[str, List[int]]]:
    """BERT basic tokenization of text[start:end]: [(normalized word, origin index per char)]."""
    from paddlenlp.transformers.tokenizer_utils import _is_control, _is_punctuation, _is_symbol, _is_whitespace

    basic = tokenizer.basic_tokenizer
    words: List[Tuple[List[str], List[int]]] = []
    current = None
    for i in range(start, end):
        ch = text[i]
        cp = ord(ch)
        if cp == 0 or cp == 0xFFFD or _is_control(ch):
            continue
        if _is_whitespace(ch) or ch.isspace():
            current = None
            continue
        if basic.tokenize_chinese_chars and basic._is_chinese_char(cp):
            words.append(([ch], [i]))
            current = None
            continue
        norm = ch
        if basic.do_lower_case:
            norm = norm.lower()
            if basic.strip_accents is not False:
                norm = _strip_accents(norm)
        elif basic.strip_accents:
            norm = _strip_accents(norm)
        for c in norm:
            if _is_punctuation(c) or _is_symbol(c):
                words.append(([c], [i]))
                current = None
            else:
                if current is None:
                    current = ([], [])
                    words.append(current)
                current[0].append(c)
                current[1].append(i)
    return [("".join(chars), origin) for chars, origin in words]


def token_char_spans(tokenizer, text: str) -> Tuple[List[str], List[Span]]:
    """Tokens of ``text`` (as ``tokenizer.tokenize`` gives them) and their character spans."""
    if not (hasattr(tokenizer, "basic_tokenizer") and hasattr(tokenizer, "wordpiece_tokenizer")):
        raise _Unsupported(type(tokenizer).__name__)
    lowered = _lower_outside_specials(tokenizer, text) if getattr(tokenizer, "do_lower_case", False) else text
    if len(lowered) != len(text):
        raise _Unsupported("lower-casing changed the text length")
    no_split = sorted(tokenizer.unique_no_split_tokens, key=len, reverse=True)
    pieces: List[Tuple[bool, int, int]] = []  # (is added token, start, end)
    cursor = 0
    if no_split:
        for m in re.finditer("|".join(re.escape(t) for t in no_split), lowered):
            pieces.append((False, cursor, m.start()))
            pieces.append((True, m.start(), m.end()))
            cursor = m.end()
    pieces.append((False, cursor, len(text)))

    unk = tokenizer.wordpiece_tokenizer.unk_token
    tokens: List[str] = []
    spans: List[Span] = []
    for is_added, s, e in pieces:
        if is_added:
            tokens.append(lowered[s:e])
            spans.append((s, e))
            continue
        for word, origin in _basic_words(tokenizer, text, s, e):
            word_pieces = tokenizer.wordpiece_tokenizer.tokenize(word)
            if word_pieces == [unk]:
                tokens.append(unk)
                spans.append((origin[0], origin[-1] + 1))
                continue
            pos = 0
            for k, piece in enumerate(word_pieces):
                length = len(piece) - 2 if k > 0 and piece.startswith("##") else len(piece)
                if length <= 0 or pos + length > len(origin):
                    raise _Unsupported(f"word piece {piece!r} does not fit {word!r}")
                tokens.append(piece)
                spans.append((origin[pos], origin[pos + length - 1] + 1))
                pos += length
    return tokens, spans


_warned_fallback = False


def _paddlenlp_spans(tokenizer, text: str, max_length: int) -> List[Span]:
    out = tokenizer(text, max_length=max_length, truncation=True, return_offsets_mapping=True,
                    return_token_type_ids=False)
    offsets = out["offset_mapping"]
    return [tuple(o) for o in offsets[1:-1]]  # drop [CLS] and [SEP]


def aligned_spans(tokenizer, text: str, ids_row: np.ndarray, max_length: int) -> List[Span]:
    """Character spans of the tokens behind ``ids_row`` (one row of ``tokenize``), [CLS] excluded."""
    global _warned_fallback
    try:
        tokens, spans = token_char_spans(tokenizer, text)
        visible = min(len(tokens), max_length - 2)
        expected = [int(i) for i in ids_row[1:1 + visible]]
        if tokenizer.convert_tokens_to_ids(tokens[:visible]) == expected:
            return spans[:visible]
        reason = "replayed tokens differ from the tokenizer's"
    except _Unsupported as exc:
        reason = str(exc)
    if not _warned_fallback:
        logger.warning("key-word alignment falls back to PaddleNLP offsets (%s) for: %.60s", reason, text)
        _warned_fallback = True
    return _paddlenlp_spans(tokenizer, text, max_length)


def keyword_token_mask(spans: Sequence[Span], keywords: Sequence[KeyWord], max_length: int) -> np.ndarray:
    """float32 [max_length]: each key word's weight on the tokens overlapping it, else 0.

    ``spans[k]`` is the character span of the k-th text token (at position k + 1).
    """
    mask = np.zeros([max_length], dtype="float32")
    if not keywords:
        return mask
    for k, (s, e) in enumerate(spans[:max_length - 2]):
        if e <= s:
            continue
        for kw in keywords:
            if s < kw.end and kw.start < e:
                mask[k + 1] = max(mask[k + 1], kw.weight)
    return mask


def _starts_latin(text: str, index: int) -> bool:
    ch = text[index]
    return ch.isalnum() and not ("\u3400" <= ch <= "\u9fff" or "\uf900" <= ch <= "\ufaff")


def insert_pos_tokens(text: str, keywords: Sequence[KeyWord]) -> Tuple[str, List[KeyWord]]:
    """Put "[n]", "[a]", ... before each key word that has a POS tag; shift the key words.

    English words get "[a] red" (a space keeps the word a word); Chinese "[a]红色".
    """
    out: List[str] = []
    moved: List[KeyWord] = []
    cursor, shift = 0, 0
    for kw in sorted(keywords, key=lambda k: k.start):
        if kw.pos is not None and kw.start >= cursor:
            marker = f"[{kw.pos}]" + (" " if _starts_latin(text, kw.start) else "")
            out.append(text[cursor:kw.start])
            out.append(marker)
            cursor = kw.start
            shift += len(marker)
        moved.append(kw.shifted(shift))
    out.append(text[cursor:])
    return "".join(out), moved

