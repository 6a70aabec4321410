"""Language of a caption, and its split into Chinese / English runs.

Rules (character classes, no statistics, so results are predictable):

* A character is **Chinese** when it is a CJK unified ideograph (the basic block,
  extensions A-F and the compatibility ideographs). Kana, Hangul, CJK punctuation and
  full-width symbols are not ideographs.
* A character is **English** when it is a letter (``str.isalpha``) and not Chinese, so
  accented Latin letters count as English.
* Everything else (spaces, digits, punctuation of either width, emoji) is **neutral**.

``detect_lang(text)`` is ``"zh"`` when the text holds at least one Chinese character,
otherwise ``"en"`` (also for empty or all-neutral text).

``split_runs(text)`` cuts the text into maximal runs of one language. A neutral character
joins the run before it (so "红苹果，" and "apple, " keep their trailing punctuation and
space); neutral characters at the very start join the first run. The runs are contiguous
and cover the whole text: ``"".join(text[s:e] for s, e, _ in runs) == text``.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

# (first, last) codepoints of CJK ideograph blocks.
_CJK_RANGES = (
    (0x4E00, 0x9FFF),  # CJK Unified Ideographs
    (0x3400, 0x4DBF),  # Extension A
    (0xF900, 0xFAFF),  # Compatibility Ideographs
    (0x20000, 0x2A6DF),  # Extension B
    (0x2A700, 0x2EBEF),  # Extensions C-F
    (0x2F800, 0x2FA1F),  # Compatibility Supplement
    (0x30000, 0x3134F),  # Extension G
)


def is_cjk(char: str) -> bool:
    code = ord(char)
    return any(lo <= code <= hi for lo, hi in _CJK_RANGES)


def char_lang(char: str) -> Optional[str]:
    """'zh', 'en', or None for a neutral character (rules in the module docstring)."""
    if is_cjk(char):
        return "zh"
    if char.isalpha():
        return "en"
    return None


def detect_lang(text: str) -> str:
    """'zh' if ``text`` holds any CJK ideograph, else 'en'."""
    return "zh" if any(is_cjk(c) for c in text) else "en"


def split_runs(text: str) -> List[Tuple[int, int, str]]:
    """``[(start, end, lang), ...]`` character offsets of same-language runs of ``text``.

    ``split_runs("一只red apple在桌子上")`` ->
    ``[(0, 2, "zh"), (2, 11, "en"), (11, 15, "zh")]``.
    """
    runs: List[List] = []
    for i, char in enumerate(text):
        lang = char_lang(char)
        if lang is None:
            if runs:
                runs[-1][1] = i + 1
            continue  # leading neutrals are picked up by the first run's start=0
        if runs and runs[-1][2] == lang:
            runs[-1][1] = i + 1
        else:
            start = 0 if not runs else i
            runs.append([start, i + 1, lang])
    if not runs:
        # Only neutral characters: one run, English by the detect_lang rule.
        return [(0, len(text), "en")] if text else []
    return [(s, e, lang) for s, e, lang in runs]
