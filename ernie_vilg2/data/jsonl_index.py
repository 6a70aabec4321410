"""The records of a JSON-lines file without holding them: the byte offsets of its valid lines.

:class:`JsonlIndex` reads the file once, keeps the offset and line number of every valid record
(two int64 values a record) and parses a record again when it is read, so a file of millions
of lines costs megabytes, not gigabytes. Lines are validated as :mod:`.jsonl` does (malformed
JSON and invalid records are skipped with a ``FILE:LINE: reason`` warning and counted in one
summary line); images are not opened here: a missing or undecodable image is found when its
record is read (:class:`~.sources.MapDataset` reports it once and reads another record).
"""
from __future__ import annotations

import codecs
import logging
import os
from array import array
from typing import Optional, Sequence

import numpy as np

from .jsonl import DatasetError, check_tabular, count_skipped, parse_line, report_skipped

logger = logging.getLogger(__name__)


class JsonlIndex:
    """Offsets of the valid records of ``path``, in file order, after the ``languages`` filter
    and the first ``max_samples``. ``record(i)`` parses record ``i`` again: the record form
    (:mod:`.samples`) with ``index`` (0-based line number, stable across runs and filters),
    ``key`` (the line number, 9 digits) and ``image`` an absolute path."""

    def __init__(self, path: str, languages: Optional[Sequence[str]] = None, max_samples: Optional[int] = None):
        check_tabular(path)
        self.path = path
        self._base_dir = os.path.dirname(os.path.abspath(path))
        offsets, lines, skipped = array("q"), array("q"), []
        filtered = past = 0
        with open(path, "rb") as f:
            position = 0
            for line_idx, raw in enumerate(f):
                start, position = position, position + len(raw)
                if line_idx == 0 and raw.startswith(codecs.BOM_UTF8):
                    raw, start = raw[len(codecs.BOM_UTF8):], start + len(codecs.BOM_UTF8)
                if not raw.strip():
                    continue
                if max_samples is not None and len(offsets) >= max_samples:
                    past += 1  # not parsed: counted as lines past data.max_samples
                    continue
                record, reason = parse_line(raw, self._base_dir)
                if record is None:
                    skipped.append((line_idx + 1, reason))
                elif languages is not None and record["lang"] not in languages:
                    filtered += 1
                else:
                    offsets.append(start)
                    lines.append(line_idx)
        report_skipped(path, len(offsets) + filtered + past, skipped)
        if not offsets:
            raise DatasetError(f"{path}: no records in languages {list(languages or [])}")
        self.skipped = skipped
        self._offsets = np.frombuffer(offsets, np.int64)
        self._lines = np.frombuffer(lines, np.int64)
        notes = [f"skipped {len(skipped):,}: {count_skipped(skipped)}" if skipped else "none skipped"]
        if filtered:
            notes.append(f"{filtered:,} not in data.languages")
        if past:
            notes.append(f"{past:,} lines past data.max_samples")
        self.summary = f"{path}: {len(offsets):,} records ({'; '.join(notes)})"
        logger.log(logging.WARNING if len(skipped) > len(offsets) else logging.INFO, "%s", self.summary)
        self._file = None
        self._pid = None

    def __len__(self) -> int:
        return len(self._offsets)

    def __getstate__(self):  # a worker process opens the file for itself
        return {**self.__dict__, "_file": None, "_pid": None}

    def _handle(self):
        if self._file is None or self._pid != os.getpid():
            self._file, self._pid = open(self.path, "rb"), os.getpid()
        return self._file

    def record(self, i: int) -> dict:
        line = int(self._lines[i])
        f = self._handle()
        f.seek(int(self._offsets[i]))
        record, reason = parse_line(f.readline(), self._base_dir)
        if record is None:
            raise DatasetError(f"{self.path}:{line + 1}: {reason} (the file changed since training started)")
        image = record.pop("image_path")
        record.update(image=image, index=line, key=record.get("key") if isinstance(record.get("key"), str)
                      else f"{line:09d}")
        return record

    def describe(self, record: dict) -> str:
        return f"{self.path}:{record['index'] + 1}"
