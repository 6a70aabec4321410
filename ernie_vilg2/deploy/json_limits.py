"""Nesting limit for the JSON files of an export folder, checked before they are parsed.

Python's parser recurses once per level (a deeply nested file ends in ``RecursionError``) and
the C++ runner's frees recursively, so both runners refuse nesting deeper than
:data:`MAX_JSON_DEPTH` first (the C++ runner has the same rule, deploy/cpp/src/json_limits.cc).
"""
from __future__ import annotations

import re

from ..errors import ErnieViLG2Error

# A manifest nests 4 levels, a PIR program about 10.
MAX_JSON_DEPTH = 64

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(r"[\[\]{}]")


class JsonLimitError(ErnieViLG2Error, ValueError):
    """The text nests deeper than :data:`MAX_JSON_DEPTH`."""


def check_json_text(text: str, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Raise :class:`JsonLimitError` if ``text`` nests arrays/objects deeper than ``max_depth``
    (brackets inside strings do not count)."""
    depth = 0
    for bracket in _BRACKETS.findall(_STRING.sub('""', text)):
        depth += 1 if bracket in "[{" else -1
        if depth > max_depth:
            raise JsonLimitError(f"nested deeper than {max_depth} levels")
