"""English part-of-speech tagging with TextBlob's bundled lexicon tagger.

Why TextBlob and not spaCy: its tagger (``textblob.en.tag``: Pattern's lexicon of ~100k
words plus Brill-style suffix and context rules) ships inside the wheel and needs no
download, while spaCy needs a
model package (``en_core_web_sm``) that is published on GitHub releases, not on PyPI, so
it cannot be installed here; TextBlob is also already a dependency and tags a prompt in
well under a millisecond. It has no named-entity recogniser: proper nouns (NNP) become
``nz``, which is still a noun key word.

TextBlob's own tokenizer mangles contractions ("can't" -> "ca", "n", "'", "t") and
gives no offsets, so we tokenize ourselves (Penn style, with character offsets) and
pass the tokens space-joined with ``tokenize=False``.
"""
from __future__ import annotations

import re
from typing import List, Tuple

from .tags import english_importance, penn_to_shared
from .words import Word

# Penn-style tokens: "do"+"n't", "girl"+"'s", words with inner hyphens/dots ("3.5",
# "black-and-white", "U.S"), any other non-space character alone.
_TOKEN = re.compile(
    r"[^\W_]+(?=n't\b)"  # "do" of "don't"
    r"|n't\b"
    r"|'(?:s|re|ve|ll|d|m)\b"
    r"|[^\W_]+(?:[-.][^\W_]+)*"
    r"|\S",
    re.IGNORECASE,
)


def english_tokens(text: str) -> List[Tuple[int, int]]:
    """Character spans of the Penn-style tokens of ``text``."""
    return [m.span() for m in _TOKEN.finditer(text)]


def _pattern_tag(tokens: List[str]) -> List[str]:
    from textblob.en import tag  # lazy: only English prompts need it

    if not tokens:
        return []
    tagged = tag(" ".join(tokens), tokenize=False)
    if len(tagged) != len(tokens):  # defensive: never misalign tags and offsets
        tagged = [tag(t, tokenize=False)[0] for t in tokens]
    return [penn for _, penn in tagged]


class EnglishTagger:
    """Words of an English text with shared tags; importance from the tag (0-3)."""

    def analyze(self, text: str) -> List[Word]:
        spans = english_tokens(text)
        tokens = [text[s:e] for s, e in spans]
        words = []
        for (s, e), token, penn in zip(spans, tokens, _pattern_tag(tokens)):
            shared = penn_to_shared(token, penn)
            words.append(Word(token, shared, s, e, english_importance(shared)))
        return words
