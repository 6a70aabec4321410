"""The analysed word: text, shared tag, character span and optional importance."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, Optional

from .tags import normalize_tag


@dataclass(frozen=True)
class Word:
    """One word of a caption.

    ``start``/``end`` are character offsets into the caption (``caption[start:end] ==
    text``); ``tag`` is a tag of the shared set (:mod:`.tags`); ``importance`` is LAC's
    word importance 0-3 (English: derived from the tag), or None when not computed.
    """

    text: str
    tag: str
    start: int
    end: int
    importance: Optional[int] = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "word") -> "Word":
        """Build a Word from an annotation dict; ValueError naming ``where`` if malformed."""
        if isinstance(data, Word):
            return data
        if not isinstance(data, Mapping):
            raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
        missing = [k for k in ("text", "tag", "start", "end") if k not in data]
        if missing:
            raise ValueError(f"{where}: missing key(s) {', '.join(missing)}")
        text, tag, start, end = data["text"], data["tag"], data["start"], data["end"]
        importance = data.get("importance")
        if not isinstance(text, str) or not text:
            raise ValueError(f"{where}.text: expected a non-empty string, got {text!r}")
        if not isinstance(tag, str) or normalize_tag(tag) is None:
            raise ValueError(f"{where}.tag: unknown tag {tag!r}")
        for name, value in (("start", start), ("end", end)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{where}.{name}: expected an integer >= 0, got {value!r}")
        if end - start != len(text):
            raise ValueError(f"{where}: span [{start}, {end}) does not have the length of {text!r}")
        if importance is not None and (isinstance(importance, bool) or importance not in (0, 1, 2, 3)):
            raise ValueError(f"{where}.importance: expected 0-3 or null, got {importance!r}")
        return cls(text, normalize_tag(tag), start, end, importance)
