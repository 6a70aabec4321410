"""Caption side of visual knowledge: label enrichment and synthetic-caption replacement.

Enrichment format (documented contract): trailing whitespace and one trailing sentence
punctuation mark (``. , ; : ! ?`` and their full-width forms ``。，；：！？``) are removed
from the caption, then the missing object names are appended

* English: ``", "`` before and between names: ``"a cat face." + [red apple, dog face]``
  -> ``"a cat face, red apple, dog face"``;
* Chinese: ``"，"`` (full-width comma): ``"猫脸。" + [红苹果]`` -> ``"猫脸，红苹果"``.

An empty caption becomes just the joined names.
"""
from __future__ import annotations

import re
from typing import Optional, Sequence

from .labels import LANGS, LabelMap

_SEPARATOR = {"en": ", ", "zh": "，"}
_TRAILING_PUNCT = ".,;:!?。，；：！？、"


def _mentions(caption: str, name: str, lang: str) -> bool:
    """Whether ``name`` already occurs in ``caption``.

    English names match case-insensitively at word boundaries ("apple" is not in
    "pineapple"); Chinese has no word boundaries, so a plain substring test is used.
    """
    if not name:
        return False
    if lang == "zh" or re.search(r"[\u3400-\u9fff]", name):
        return name in caption
    pattern = r"(?<!\w)" + re.escape(name) + r"(?!\w)"
    return re.search(pattern, caption, flags=re.IGNORECASE) is not None


def enrich_caption(caption: str, labels: Sequence[str], lang: str, label_map) -> str:
    """Append the names of detected objects that ``caption`` does not mention yet.

    Args:
        caption: the caption text.
        labels: detected object names, in English or Chinese (both are looked up).
        lang: the caption's language, "en" or "zh"; names are appended in this language.
        label_map: a :class:`LabelMap`, a path to labels.json or its parsed list.

    Labels not in the map are skipped. A label is not appended when the caption already
    contains its name in either language, or when it was appended already.
    """
    if lang not in LANGS:
        raise ValueError(f"lang: expected one of {LANGS}, got {lang!r}")
    if not isinstance(caption, str):
        raise ValueError(f"caption: expected a string, got {type(caption).__name__}")
    label_map = LabelMap.coerce(label_map)
    added, names = set(), []
    for label in labels or []:
        cid = label_map.id_of(label)
        if cid is None or cid in added:
            continue
        if _mentions(caption, label_map.en[cid], "en") or _mentions(caption, label_map.zh[cid], "zh"):
            continue
        added.add(cid)
        names.append(label_map.name(cid, lang))
    if not names:
        return caption
    base = caption.rstrip()
    if base and base[-1] in _TRAILING_PUNCT:
        base = base[:-1].rstrip()
    joined = _SEPARATOR[lang].join(names)
    return f"{base}{_SEPARATOR[lang]}{joined}" if base else joined


def maybe_replace_caption(caption: str, synthetic_caption: Optional[str], prob: float, rng) -> str:
    """Return ``synthetic_caption`` with probability ``prob``, else ``caption``.

    ``rng`` is a ``numpy.random.Generator`` or ``random.Random`` (anything with
    ``.random()``). It is drawn from only when there is a non-empty synthetic caption and
    ``0 < prob < 1``, so samples without one do not shift the random stream.
    """
    prob = float(prob)
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"prob: must be in [0, 1], got {prob}")
    if not synthetic_caption or not str(synthetic_caption).strip() or prob == 0.0:
        return caption
    if prob == 1.0 or rng.random() < prob:
        return synthetic_caption
    return caption
