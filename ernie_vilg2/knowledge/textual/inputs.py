"""Per-batch text inputs with textual knowledge: token ids, key-token mask, POS tokens."""
from __future__ import annotations

import logging
import weakref
from typing import Any, List, Mapping, Optional, Sequence

import numpy as np

from ernie_vilg2.text.normalize import normalize_text
from ernie_vilg2.text.tokenizer import tokenize
from ernie_vilg2.utils.lru import LruDict

from .alignment import aligned_spans, insert_pos_tokens, keyword_token_mask
from .analysis import get_analyzer
from .keywords import select_keywords
from .user_dict import load_user_dict
from .words import Word

logger = logging.getLogger(__name__)
_MAX_MISMATCH_WARNINGS = 5
_mismatch_warnings = 0
# Per tokenizer: (text, max_length, key words) -> (ids row, mask row). A small data set's
# captions repeat every epoch, and tokenizing and aligning them is Python work on every step.
ROW_MEMO_SIZE = 16384
_ROW_MEMOS: "weakref.WeakKeyDictionary[Any, LruDict]" = weakref.WeakKeyDictionary()


def _words_from_analysis(analysis: Any, caption: str, where: str) -> Optional[List[Word]]:
    """Words of a precomputed analysis, or None when it does not fit ``caption``.

    ``analysis`` is a list of word dicts ({"text","tag","start","end","importance"}) or
    Words, or a whole annotation record (its "keywords" are used).
    """
    global _mismatch_warnings
    if isinstance(analysis, Mapping):
        if "keywords" not in analysis:
            raise ValueError(f"{where}: an annotation record needs a 'keywords' list")
        analysis = analysis["keywords"]
    if not isinstance(analysis, (list, tuple)):
        raise ValueError(f"{where}: expected a list of words, got {type(analysis).__name__}")
    words = [Word.from_dict(w, f"{where}[{k}]") for k, w in enumerate(analysis)]
    for w in words:  # the caption may be normalised (build_text_inputs), the words not
        if normalize_text(caption[w.start:w.end]) != normalize_text(w.text):
            if _mismatch_warnings < _MAX_MISMATCH_WARNINGS:
                _mismatch_warnings += 1
                logger.warning("%s: word %r at [%d, %d) is not in the caption %.40r (stale annotation?); "
                               "analysing the caption instead", where, w.text, w.start, w.end, caption)
            return None
    return sorted(words, key=lambda w: w.start)


def analyse_captions(captions: Sequence[str], cfg, analyses: Optional[Sequence[Any]] = None) -> List[List[Word]]:
    """Words of every caption: from ``analyses`` where given and valid, else by LAC/TextBlob.

    Blank captions (classifier-free-guidance dropout) have no words.
    """
    if analyses is not None and len(analyses) != len(captions):
        raise ValueError(f"analyses: {len(analyses)} entries for {len(captions)} captions")
    words: List[Optional[List[Word]]] = [None] * len(captions)
    todo = []
    for i, caption in enumerate(captions):
        if not caption.strip():
            words[i] = []
            continue
        if analyses is not None and analyses[i] is not None:
            found = _words_from_analysis(analyses[i], caption, f"analyses[{i}]")
            if found is not None:
                if cfg.user_dict:  # a dictionary edited after extraction still applies
                    found = load_user_dict(cfg.user_dict).apply(caption, found)
                words[i] = found
                continue
        todo.append(i)
    if todo:
        analysed = get_analyzer(cfg.user_dict).analyze([captions[i] for i in todo],
                                                       with_importance=cfg.needs_importance)
        for i, found in zip(todo, analysed):
            words[i] = found
    return words  # type: ignore[return-value]


def _check_captions(captions) -> List[str]:
    if isinstance(captions, str) or not isinstance(captions, Sequence):
        raise TypeError(f"captions: expected a list of strings, got {type(captions).__name__}")
    for i, caption in enumerate(captions):
        if not isinstance(caption, str):
            raise TypeError(f"captions[{i}]: expected a string, got {type(caption).__name__}")
    return list(captions)


def build_text_inputs(captions: List[str], tokenizer, max_length: int, cfg, rng: np.random.Generator,
                      analyses: Optional[list] = None, training: bool = True) -> dict:
    """Token ids and key-token mask of a batch of captions (paper: textual knowledge).

    Args:
        captions: B captions; "" is fine (classifier-free-guidance dropout).
        tokenizer: from ``ernie_vilg2.text.tokenizer.build_tokenizer()`` (knows [n], [v] ...).
        max_length: token length L incl. [CLS]/[SEP]; longer texts are truncated.
        cfg: TextualKnowledgeConfig.
        rng: decides, per sample, whether POS tokens are inserted (training only); one
            ``rng.random(B)`` draw per call when ``training and cfg.pos_tokens``.
        analyses: optional per-caption precomputed words (the "keywords" list of an
            annotation record, or the record itself, or None for "analyse this one");
            entries that do not match their caption are re-analysed with a warning.
        training: False (sampling/evaluation) never inserts POS tokens. The mask is
            computed either way; pass it to the U-Net at sampling only when
            ``cfg.apply_at_sampling`` (or skip the call then).

    Returns:
        {"input_ids": int64 [B, L], "key_token_mask": float32 [B, L] (0 off key words; 1,
        or importance/3 with ``cfg.importance_weighting``, on every token of a key word;
        0 on [CLS]/[SEP]/[PAD] and on POS tokens), "texts": the B strings tokenized
        (normalised captions, with POS tokens where inserted)}. With ``cfg.enabled``
        False: the normalised captions and an all-zero mask.
    """
    # Normalised once here (one character to one, offsets unchanged): tagging, POS-token
    # insertion, tokenizing and the alignment replay all see the same text.
    captions = [normalize_text(c) for c in _check_captions(captions)]
    if max_length < 3:
        raise ValueError(f"max_length must be >= 3 ([CLS] text [SEP]), got {max_length}")
    batch = len(captions)
    if not cfg.enabled:
        ids = tokenize(tokenizer, captions, max_length)
        return {"input_ids": ids, "key_token_mask": np.zeros([batch, max_length], dtype="float32"),
                "texts": captions}

    keywords = [select_keywords(words, cfg) for words in analyse_captions(captions, cfg, analyses)]
    texts = list(captions)
    if training and cfg.pos_tokens:
        draws = rng.random(batch)
        for i in range(batch):
            if draws[i] < cfg.pos_token_prob and keywords[i]:
                texts[i], keywords[i] = insert_pos_tokens(texts[i], keywords[i])

    ids, mask = _token_rows(tokenizer, texts, keywords, max_length)
    return {"input_ids": ids, "key_token_mask": mask, "texts": texts}


def _token_rows(tokenizer, texts: List[str], keywords: list, max_length: int):
    """Token ids [B, L] and key-token mask [B, L] of ``texts``, remembered per tokenizer."""
    memo = _ROW_MEMOS.get(tokenizer)
    if memo is None:
        memo = _ROW_MEMOS[tokenizer] = LruDict(ROW_MEMO_SIZE)
    keys = [(text, max_length, tuple(words)) for text, words in zip(texts, keywords)]
    rows = {key: memo.get(key) for key in keys}
    todo = [key for key, row in rows.items() if row is None]
    if todo:
        todo_ids = tokenize(tokenizer, [text for text, _, _ in todo], max_length)
        for key, ids_row in zip(todo, todo_ids):
            text, _, words = key
            mask_row = np.zeros([max_length], dtype="float32")
            if words:
                mask_row = keyword_token_mask(aligned_spans(tokenizer, text, ids_row, max_length), words, max_length)
            rows[key] = (ids_row, mask_row)
            memo.put(key, rows[key])
    ids = np.array([rows[key][0] for key in keys], dtype="int64").reshape(len(keys), max_length)
    mask = np.array([rows[key][1] for key in keys], dtype="float32").reshape(len(keys), max_length)
    return ids, mask
