"""Text normalisation applied to every prompt before tokenizing (and tagging).

Typographic quotes and dashes are not in the Chinese BERT vocabulary (``corgi’s`` would
give an [UNK]) and confuse the English tagger, so they become their ASCII forms; so do
the other characters typed as apostrophes (ʼ ´ `, also [UNK]; ʼ is even a letter, so
``corgiʼs`` was one unknown word). The map is one character to one character: character
offsets of the normalised text are those of the original, so key-word spans stay valid.
The C++ runner applies the same map.
"""
from __future__ import annotations

TYPOGRAPHIC_MAP = {
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'",  # ‘ ’ ‚ ‛
    "\u02bc": "'", "\u00b4": "'", "`": "'",  # ʼ ´ ` typed as apostrophes ("corgi´s")
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"',  # “ ” „ ‟
    "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2014": "-", "\u2015": "-",  # ‐ ‑ ‒ – — ―
    "\u2212": "-",  # − minus sign
}
_TABLE = str.maketrans(TYPOGRAPHIC_MAP)


def normalize_text(text: str) -> str:
    """``text`` with typographic quotes and dashes replaced by ASCII ones (same length)."""
    return text.translate(_TABLE)
