"""Per-batch text inputs with textual knowledge: token ids, key-token mask, POS tokens."""
from __future__ import annotations

import logging
from typing import Any, List, Mapping, Optional, Sequence

import numpy as np

from ernie_vilg2.text.normalize import normalize_text
from ernie_vilg2.text.tokenizer import tokenize

from .alignment import aligned_spans, insert_pos_tokens, keyword_token_mask
from .analysis import get_analyzer
from .keywords import select_keywords
from .user_dict import load_user_dict
from .words import Word

logger = logging.getLogger(__name__)
_MAX_MISMATCH_WARNINGS = 5
_mismatch_warnings = 0


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

    ids = tokenize(tokenizer, texts, max_length)
    mask = np.zeros([batch, max_length], dtype="float32")
    for i, text in enumerate(texts):
        if keywords[i]:
            spans = aligned_spans(tokenizer, text, ids[i], max_length)
            mask[i] = keyword_token_mask(spans, keywords[i], max_length)
    return {"input_ids": ids, "key_token_mask": mask, "texts": texts}
