"""User dictionary: force the segmentation and tags of chosen words (LAC's customization idea).

File format (UTF-8, one entry per line; blank lines and lines starting with ``#`` are
skipped). Tags are names of the shared set (:data:`.tags.TAGS`, aliases nr/ns/nt/t
allowed); an unknown tag is an error naming the file and line.

* ``红色/a``  or  ``红色 a``   -- a word and its tag;
* ``花/n 开/v``                -- LAC's phrase form: the parts are joined ("花开") and,
  wherever the phrase occurs, cut into these words with these tags;
* ``秋天的风`` / ``落 阳``      -- parts without a tag: forced segmentation only, the tag
  is the one the tagger gave the part's last character;
* ``ice cream<TAB>n``          -- a tab separates a phrase that contains spaces from its
  tag (English multi-word terms).

Matching: leftmost-longest, non-overlapping. Chinese phrases match anywhere; a phrase
that starts or ends with a Latin letter or digit only matches at word boundaries, and
case-insensitively ("Ice Cream" matches ``ice cream``). Phrases and captions are compared
after :func:`ernie_vilg2.text.normalize.normalize_text` ("rock ’n’ roll" matches
``rock 'n' roll``). A matched phrase replaces the words it overlaps; the parts of those
words outside the phrase stay words with their old tags.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Dict, List, Optional, Sequence, Tuple

from ernie_vilg2.text.normalize import normalize_text

from .tags import TAGS, normalize_tag
from .words import Word


@dataclass(frozen=True)
class Entry:
    phrase: str
    parts: Tuple[Tuple[int, int, Optional[str]], ...]  # (start, end, tag or None) within phrase


def _is_latin_alnum(ch: str) -> bool:
    # Letters/digits of space-separated scripts; CJK ideographs have no word boundaries.
    return ch.isalnum() and not ("\u3400" <= ch <= "\u9fff" or "\uf900" <= ch <= "\ufaff")


def _tag_or_error(tag: str, where: str) -> str:
    shared = normalize_tag(tag)
    if shared is None:
        raise ValueError(f"{where}: unknown tag {tag!r} (known: {', '.join(TAGS)})")
    return shared


def parse_entry(line: str, where: str = "user dictionary") -> Optional[Entry]:
    """One dictionary line -> Entry (None for blank/comment lines)."""
    line = normalize_text(line.strip())
    if not line or line.startswith("#"):
        return None
    if "\t" in line:
        fields = [f.strip() for f in line.split("\t") if f.strip()]
        if len(fields) != 2:
            raise ValueError(f"{where}: expected 'phrase<TAB>tag', got {line!r}")
        phrase, tag = fields
        return Entry(phrase, ((0, len(phrase), _tag_or_error(tag, where)),))
    fields = line.split()
    if len(fields) == 2 and "/" not in line and normalize_tag(fields[1]) is not None:
        return Entry(fields[0], ((0, len(fields[0]), normalize_tag(fields[1])),))
    phrase, parts = "", []
    for field in fields:
        cut = field.rfind("/")
        if cut > 0:  # "花/n"; a leading "/" is part of the word
            text, tag = field[:cut], _tag_or_error(field[cut + 1:], where)
        else:
            text, tag = field, None
        parts.append((len(phrase), len(phrase) + len(text), tag))
        phrase += text
    if len(phrase) < 2 and all(tag is None for _, _, tag in parts):
        return None  # a lone character without a tag forces nothing (LAC skips it too)
    return Entry(phrase, tuple(parts))


class UserDict:
    """Parsed user dictionary; :meth:`apply` rewrites a word list."""

    def __init__(self, entries: Sequence[Entry] = ()):
        self.entries: Dict[str, Entry] = {}
        for entry in entries:
            self.add(entry)

    @classmethod
    def from_file(cls, path: str) -> "UserDict":
        if not os.path.isfile(path):
            raise FileNotFoundError(f"user dictionary not found: {path}")
        entries = []
        with open(path, encoding="utf-8-sig") as f:
            for lineno, line in enumerate(f, 1):
                entry = parse_entry(line, f"{path}:{lineno}")
                if entry is not None:
                    entries.append(entry)
        return cls(entries)

    @classmethod
    def from_lines(cls, lines: Sequence[str]) -> "UserDict":
        entries = [parse_entry(line, f"user dictionary line {i}") for i, line in enumerate(lines, 1)]
        return cls([e for e in entries if e is not None])

    def add(self, entry: Entry) -> None:
        key = entry.phrase.lower() if _is_latin_alnum(entry.phrase[0]) or _is_latin_alnum(entry.phrase[-1]) \
            else entry.phrase
        self.entries[key] = entry
        self._lengths = sorted({len(k) for k in self.entries}, reverse=True)

    def __len__(self) -> int:
        return len(self.entries)

    def find(self, text: str) -> List[Tuple[int, Entry]]:
        """Leftmost-longest non-overlapping matches: [(start, entry)]."""
        if not self.entries:
            return []
        text = normalize_text(text)  # one character to one: offsets unchanged
        lowered = text.lower()
        if len(lowered) != len(text):  # rare characters change length when lowered
            lowered = text
        matches, i = [], 0
        while i < len(text):
            for length in self._lengths:
                j = i + length
                if j > len(text):
                    continue
                entry = self.entries.get(text[i:j]) or self.entries.get(lowered[i:j])
                if entry is None or len(entry.phrase) != length:
                    continue
                if _is_latin_alnum(text[i]) and i > 0 and _is_latin_alnum(text[i - 1]):
                    continue
                if _is_latin_alnum(text[j - 1]) and j < len(text) and _is_latin_alnum(text[j]):
                    continue
                matches.append((i, entry))
                i = j
                break
            else:
                i += 1
        return matches

    def apply(self, text: str, words: Sequence[Word]) -> List[Word]:
        """``words`` of ``text`` with every dictionary phrase forced in."""
        words = list(words)
        for start, entry in self.find(text):
            end = start + len(entry.phrase)
            overlapped = [w for w in words if w.start < end and start < w.end]
            kept = [w for w in words if not (w.start < end and start < w.end)]
            for w in overlapped:  # pieces of cut words outside the phrase keep their tag
                if w.start < start:
                    kept.append(Word(text[w.start:start], w.tag, w.start, start, w.importance))
                if w.end > end:
                    kept.append(Word(text[end:w.end], w.tag, end, w.end, w.importance))
            for ps, pe, tag in entry.parts:
                s, e = start + ps, start + pe
                inside = [w for w in overlapped if w.start < e and s < w.end]
                if tag is None:
                    last = [w for w in inside if w.start <= e - 1 < w.end]
                    tag = last[0].tag if last else (inside[-1].tag if inside else "n")
                ranks = [w.importance for w in inside if w.importance is not None]
                kept.append(Word(text[s:e], tag, s, e, max(ranks) if ranks else None))
            words = sorted(kept, key=lambda w: w.start)
        return words


@lru_cache(maxsize=8)
def _load_cached(path: str, mtime: float) -> UserDict:
    return UserDict.from_file(path)


def load_user_dict(path: str) -> UserDict:
    """UserDict of ``path``, parsed once per file version (cached on path and mtime)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"user dictionary not found: {path}")
    path = os.path.abspath(path)
    return _load_cached(path, os.path.getmtime(path))
