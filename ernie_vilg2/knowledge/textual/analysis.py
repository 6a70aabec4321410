"""Caption -> words with shared tags, for Chinese, English and mixed captions.

Each caption is cut into same-language runs (:func:`ernie_vilg2.text.lang.split_runs`);
Chinese runs of a whole batch go through LAC in one call, English runs through the
TextBlob tagger. Before LAC, Chinese runs are cut at whitespace and at symbols (emoji,
"☃", variation selectors): LAC maps them to its out-of-vocabulary id and then glues
them to neighbouring words or tags whole stretches "O" (e.g. "😀猫" became one word);
they are no words of ours. Offsets are shifted back into the original caption, words
are trimmed of surrounding whitespace, and the user dictionary is applied last (so it
overrides both languages).

Captions are analysed after :func:`ernie_vilg2.text.normalize.normalize_text` (typographic
quotes and dashes to ASCII, one character to one), as the tokenizer sees them: "corgi’s"
is "corgi" + the possessive "'s", not a pronoun "s". The words keep the original
characters and their offsets.
"""
from __future__ import annotations

import os
import threading
import unicodedata
from dataclasses import replace
from typing import Dict, List, Optional, Sequence, Tuple

from ernie_vilg2.text.lang import split_runs
from ernie_vilg2.text.normalize import normalize_text
from ernie_vilg2.utils.lru import LruDict

from .english import EnglishTagger
from .lac import LacRunner
from .user_dict import UserDict, load_user_dict
from .words import Word


def _is_separator(ch: str) -> bool:
    # Whitespace, symbols (S*), controls/format (C*, incl. zero-width joiner), variation selectors.
    return ch.isspace() or unicodedata.category(ch)[0] in "SCZ" or "\ufe00" <= ch <= "\ufe0f"


def lac_pieces(text: str, start: int, end: int) -> List[Tuple[int, str]]:
    """(offset, piece) of text[start:end] cut at separator characters (see module doc)."""
    pieces, piece_start = [], None
    for i in range(start, end + 1):
        if i < end and not _is_separator(text[i]):
            if piece_start is None:
                piece_start = i
        elif piece_start is not None:
            pieces.append((piece_start, text[piece_start:i]))
            piece_start = None
    return pieces


def _trimmed(word: Word, offset: int) -> Optional[Word]:
    """``word`` shifted by ``offset`` with surrounding whitespace removed (None if blank)."""
    text = word.text
    lead = len(text) - len(text.lstrip())
    core = text.strip()
    if not core:
        return None
    start = word.start + offset + lead
    return Word(core, word.tag, start, start + len(core), word.importance)


class TextAnalyzer:
    """Batched lexical analysis of captions in Chinese, English or both.

    Args:
        user_dict: path of a user dictionary (format in :mod:`.user_dict`) or a UserDict.
        lac_model_dir / rank_model_dir: LAC model folders (default: the LAC package's).
    """

    def __init__(self, user_dict=None, lac_model_dir: Optional[str] = None,
                 rank_model_dir: Optional[str] = None):
        if isinstance(user_dict, (str, os.PathLike)):
            user_dict = load_user_dict(os.fspath(user_dict))
        self.user_dict: Optional[UserDict] = user_dict
        self.lac = LacRunner(lac_model_dir, rank_model_dir)
        self.english = EnglishTagger()
        # Training sees each caption once per epoch: a small data set's captions are analysed once.
        self._memo = LruDict(MEMO_SIZE)

    def analyze(self, texts: Sequence[str], with_importance: bool = False) -> List[List[Word]]:
        """Words of each text in order, offsets into that text.

        ``with_importance`` also runs LAC's importance model on Chinese runs (English
        words always carry the importance derived from their tag). The words of the last
        MEMO_SIZE texts analysed are remembered.
        """
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}]: expected a string, got {type(text).__name__}")
        found = {text: self._memo.get((text, with_importance)) for text in texts}
        todo = [text for text, words in found.items() if words is None]
        if todo:
            for text, words in zip(todo, self._analyze(todo, with_importance)):
                found[text] = tuple(words)
                self._memo.put((text, with_importance), found[text])
        return [list(found[text]) for text in texts]

    def _analyze(self, texts: Sequence[str], with_importance: bool) -> List[List[Word]]:
        originals, texts = texts, [normalize_text(t) for t in texts]
        results: List[List[Word]] = [[] for _ in texts]
        zh_runs: List[Tuple[int, int, str]] = []  # (text index, piece start, piece text)
        for i, text in enumerate(texts):
            for start, end, lang in split_runs(text):
                if lang == "zh":
                    zh_runs.extend((i, offset, piece) for offset, piece in lac_pieces(text, start, end))
                else:
                    results[i].extend(filter(None, (_trimmed(w, start)
                                                    for w in self.english.analyze(text[start:end]))))
        if zh_runs:
            analysed = self.lac.analyze([run for _, _, run in zh_runs], with_importance=with_importance)
            for (i, start, _), words in zip(zh_runs, analysed):
                results[i].extend(filter(None, (_trimmed(w, start) for w in words)))
        for i, text in enumerate(texts):
            words = sorted(results[i], key=lambda w: w.start)
            if self.user_dict is not None and len(self.user_dict):
                words = self.user_dict.apply(text, words)
            if text != originals[i]:  # the caption's own characters, same offsets
                words = [replace(w, text=originals[i][w.start:w.end]) for w in words]
            results[i] = words
        return results


MEMO_SIZE = 16384  # texts whose words a TextAnalyzer remembers (a few hundred bytes each)
_ANALYZERS: Dict[Tuple[int, Optional[str]], TextAnalyzer] = {}
_LOCK = threading.Lock()


def get_analyzer(user_dict: Optional[str] = None) -> TextAnalyzer:
    """A TextAnalyzer per (process, user dictionary path), created on first use."""
    key = (os.getpid(), os.path.abspath(user_dict) if user_dict else None)
    with _LOCK:
        analyzer = _ANALYZERS.get(key)
        if analyzer is None:
            analyzer = _ANALYZERS[key] = TextAnalyzer(user_dict)
        return analyzer
