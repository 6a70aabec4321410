"""Bilingual detector label map, read from a dataset's ``labels.json``.

``labels.json`` is a list ``[{"id": 0, "en": "red apple", "zh": "红苹果"}, ...]`` where
``id`` is the detector class id. Ids must be 0..N-1 (each once) so that they index the
detector's N class outputs directly.
"""
from __future__ import annotations

import json
import os
from typing import Dict, Iterable, List, Optional, Sequence, Union

LANGS = ("en", "zh")


class LabelMap:
    """Class id <-> English/Chinese names; names look up in either language."""

    def __init__(self, entries: Sequence[dict], source: str = "labels"):
        self.source = source
        if not isinstance(entries, (list, tuple)) or not entries:
            raise ValueError(f"{source}: expected a non-empty list of {{id, en, zh}} objects")
        by_id: Dict[int, dict] = {}
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or not {"id", "en", "zh"} <= set(entry):
                raise ValueError(f"{source}[{i}]: expected an object with keys id, en, zh, got {entry!r}")
            cid = entry["id"]
            if isinstance(cid, bool) or not isinstance(cid, int) or cid < 0:
                raise ValueError(f"{source}[{i}].id: expected a non-negative integer, got {cid!r}")
            if cid in by_id:
                raise ValueError(f"{source}[{i}].id: duplicate id {cid}")
            for lang in LANGS:
                if not isinstance(entry[lang], str) or not entry[lang].strip():
                    raise ValueError(f"{source}[{i}].{lang}: expected a non-empty string")
            by_id[cid] = entry
        if sorted(by_id) != list(range(len(by_id))):
            raise ValueError(f"{source}: ids must be 0..{len(by_id) - 1} (detector class ids)")
        self.en: List[str] = [by_id[i]["en"].strip() for i in range(len(by_id))]
        self.zh: List[str] = [by_id[i]["zh"].strip() for i in range(len(by_id))]
        # Either language's name (English case-insensitively) -> id.
        self._index: Dict[str, int] = {}
        for cid in range(len(by_id)):
            self._index.setdefault(self.zh[cid], cid)
            self._index.setdefault(self.en[cid].lower(), cid)

    @classmethod
    def from_file(cls, path: Union[str, os.PathLike]) -> "LabelMap":
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"labels file not found: {path}")
        with open(path, encoding="utf-8") as f:
            try:
                entries = json.load(f)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: invalid JSON: {exc}") from None
        return cls(entries, source=path)

    @classmethod
    def coerce(cls, value: Union["LabelMap", str, os.PathLike, Sequence[dict]]) -> "LabelMap":
        """Accept a LabelMap, a path to labels.json or its parsed list."""
        if isinstance(value, LabelMap):
            return value
        if isinstance(value, (str, os.PathLike)):
            return cls.from_file(value)
        return cls(value)

    def __len__(self) -> int:
        return len(self.en)

    def id_of(self, name: str) -> Optional[int]:
        """Class id of an English or Chinese name, or None when unknown."""
        if not isinstance(name, str):
            return None
        name = name.strip()
        found = self._index.get(name)
        return found if found is not None else self._index.get(name.lower())

    def name(self, cid: int, lang: str = "en") -> str:
        if lang not in LANGS:
            raise ValueError(f"lang must be one of {LANGS}, got {lang!r}")
        return (self.en if lang == "en" else self.zh)[cid]

    def ids_of(self, names: Iterable[str]) -> List[Optional[int]]:
        return [self.id_of(n) for n in names]
