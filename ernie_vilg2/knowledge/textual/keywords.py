"""Key-word selection: which analysed words get emphasis and a POS token."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

from .tags import coarse_tag, is_function_verb
from .words import Word


@dataclass(frozen=True)
class KeyWord:
    """A selected word: character span, shared tag, POS-token tag and mask weight."""

    start: int
    end: int
    tag: str
    pos: Optional[str]  # one of POS_TAGS, or None when no POS token fits the tag
    weight: float  # value of the key-token mask on the word's tokens

    def shifted(self, offset: int) -> "KeyWord":
        return KeyWord(self.start + offset, self.end + offset, self.tag, self.pos, self.weight)


def is_keyword(word: Word, cfg) -> bool:
    """Selection rule of ``cfg`` (a TextualKnowledgeConfig).

    selector "pos": the tag is in ``cfg.keyword_tags``.
    selector "importance": LAC importance >= ``cfg.min_importance``; a word without
    importance (hand-made analyses) falls back to the tag rule.
    Either way never punctuation nor a function verb (``is``, ``can``, 是, 在 as a verb:
    :data:`.tags.FUNCTION_VERBS`).
    """
    if word.tag == "w" or is_function_verb(word.text, word.tag):
        return False
    if cfg.selector == "importance" and word.importance is not None:
        return word.importance >= cfg.min_importance
    return word.tag in cfg.keyword_tags


def keyword_weight(word: Word, cfg) -> float:
    """1, or importance/3 with ``cfg.importance_weighting`` (core words 1, redundant 0)."""
    if cfg.importance_weighting and word.importance is not None:
        return word.importance / 3.0
    return 1.0


def select_keywords(words: Sequence[Word], cfg) -> List[KeyWord]:
    return [KeyWord(w.start, w.end, w.tag, coarse_tag(w.tag), keyword_weight(w, cfg))
            for w in words if is_keyword(w, cfg)]
