"""``textual_knowledge:`` section of the config (paper: textual knowledge).

Example::

    textual_knowledge:
      enabled: true
      pos_tokens: true          # insert [n]/[v]/[a]/... before key words ...
      pos_token_prob: 0.5       # ... in this fraction of training samples (paper: 0.5)
      w_t: 0.01                 # cross-attention scores of key-word columns x (1 + w_t)
      keyword_tags: [n, f, s, nw, nz, PER, LOC, ORG, TIME, v, vd, vn, a, ad, an, m, q]   # the default
      selector: pos             # "pos": tag in keyword_tags; "importance": LAC importance >= min_importance
      min_importance: 2
      importance_weighting: false   # mask value importance/3 instead of 1 (scales w_t per word)
      apply_at_sampling: false      # the paper emphasises in training only
      user_dict: configs/knowledge/user_dict_example.txt   # forced words/tags, e.g. 红色/a
      annotations: output/knowledge/annotations.jsonl      # from tools/extract_knowledge.py
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import List, Optional

from ernie_vilg2.config import check

from .tags import DEFAULT_KEYWORD_TAGS, TAG_ALIASES, TAGS

_SECTION = "textual_knowledge"
SELECTORS = ("pos", "importance")


@dataclass
class TextualKnowledgeConfig:
    enabled: bool = False
    pos_tokens: bool = True
    pos_token_prob: float = 0.5
    w_t: float = 0.01
    keyword_tags: List[str] = field(default_factory=lambda: list(DEFAULT_KEYWORD_TAGS))
    selector: str = "pos"
    min_importance: int = 2
    importance_weighting: bool = False
    apply_at_sampling: bool = False
    user_dict: Optional[str] = None
    annotations: Optional[str] = None

    def __post_init__(self):
        check(math.isfinite(self.pos_token_prob) and 0.0 <= self.pos_token_prob <= 1.0,
              f"{_SECTION}.pos_token_prob", f"must be in [0, 1], got {self.pos_token_prob}")
        check(math.isfinite(self.w_t) and self.w_t >= 0.0, f"{_SECTION}.w_t",
              f"must be a finite number >= 0, got {self.w_t}")
        known = set(TAGS) | set(TAG_ALIASES)
        unknown = [t for t in self.keyword_tags if t not in known]
        check(not unknown, f"{_SECTION}.keyword_tags",
              f"unknown tag(s) {unknown}; known: {', '.join(TAGS)} (aliases {', '.join(TAG_ALIASES)})")
        # Aliases (nr/ns/nt/t) mean the same words as PER/LOC/ORG/TIME.
        self.keyword_tags = list(dict.fromkeys(TAG_ALIASES.get(t, t) for t in self.keyword_tags))
        check(self.selector in SELECTORS, f"{_SECTION}.selector",
              f"must be one of {', '.join(SELECTORS)}, got {self.selector!r}")
        check(self.selector != "pos" or bool(self.keyword_tags), f"{_SECTION}.keyword_tags",
              "is empty: selector 'pos' would pick no key words")
        check(0 <= self.min_importance <= 3, f"{_SECTION}.min_importance",
              f"LAC importance is 0-3, got {self.min_importance}")
        if self.user_dict is not None:
            check(os.path.isfile(self.user_dict), f"{_SECTION}.user_dict", f"file not found: {self.user_dict}")
        if self.annotations is not None:
            # Written by tools/extract_knowledge.py, possibly later than this config is
            # loaded (the visual_knowledge section shares the file): only a folder is wrong here;
            # reading a missing file fails with its path.
            check(self.annotations.strip() != "" and not os.path.isdir(self.annotations),
                  f"{_SECTION}.annotations", f"expected a file path, got {self.annotations!r}")

    @property
    def needs_importance(self) -> bool:
        """Whether LAC's importance model must run (importance selector or weighting)."""
        return self.selector == "importance" or self.importance_weighting
