"""Knowledge annotation file: precomputed textual (and visual) knowledge of a dataset.

Format: JSON Lines, UTF-8, one line per source record, written by
``tools/extract_knowledge.py``::

    {"index": 12,                      # 0-based line number of the record in the source .jsonl
     "image": "images/000012.png",     # as in the source record
     "caption": "一辆红色的汽车",       # the caption that was analysed
     "keywords": [{"text": "红色", "tag": "n", "start": 2, "end": 4, "importance": 3}, ...],
     "objects": [...]}                 # only when the visual step ran (its own format)

"keywords" holds every word of the caption except punctuation, with its shared tag,
character span and LAC importance (0-3), so the training-time config (tag set,
importance threshold) still decides which of them are key words.

The writer appends one line per record and flushes and fsyncs in batches (every
``sync_every`` records or ``sync_seconds``, and at close): a kill or crash loses at most
the records written since the last sync, and a torn last line is dropped on restart,
which then reports which indices are done (an fsync per record took a third to two
thirds of the extraction time: benchmarks/annotation_writer.py).
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Dict, Iterable, List, Optional, Set, Tuple

from .visual import annotate_images

logger = logging.getLogger(__name__)

REQUIRED_KEYS = ("index", "caption", "keywords")
SYNC_EVERY = 256  # records between fsyncs (also at most SYNC_SECONDS apart)
SYNC_SECONDS = 5.0


def make_annotation(index: int, image: Optional[str], caption: str, words: Iterable) -> dict:
    """An annotation record; ``words`` are Words or word dicts (punctuation is dropped)."""
    keywords = []
    for w in words:
        d = w.to_dict() if hasattr(w, "to_dict") else dict(w)
        if d["tag"] != "w":
            keywords.append({k: d.get(k) for k in ("text", "tag", "start", "end", "importance")})
    return {"index": int(index), "image": image, "caption": caption, "keywords": keywords}


def _check_record(record, where: str) -> dict:
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in record]
    if missing:
        raise ValueError(f"{where}: missing key(s) {', '.join(missing)}")
    index = record["index"]
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ValueError(f"{where}: 'index' must be an integer >= 0, got {index!r}")
    if not isinstance(record["keywords"], list):
        raise ValueError(f"{where}: 'keywords' must be a list")
    return record


def _scan(path: str, check=_check_record) -> Tuple[List[Tuple[int, dict]], int, bool]:
    """Parse ``path``: ([(line number, record)], byte length of the complete lines, torn tail?).

    A last line without its newline that is not valid JSON is a write cut short by a crash:
    it is reported as torn, not as an error. Any other bad line raises ValueError.
    """
    records: List[Tuple[int, dict]] = []
    good_bytes = 0
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    complete, tail = lines[:-1], lines[-1]  # tail is b"" when the file ends with "\n"
    for lineno, raw in enumerate(complete, 1):
        good_bytes += len(raw) + 1
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}:{lineno}: invalid JSON ({exc})") from None
        records.append((lineno, check(record, f"{path}:{lineno}")))
    torn = False
    if tail.strip():
        lineno = len(complete) + 1
        try:
            record = json.loads(tail.decode("utf-8"))
            records.append((lineno, check(record, f"{path}:{lineno}")))
            good_bytes += len(tail)
        except (UnicodeDecodeError, json.JSONDecodeError):
            torn = True
    return records, good_bytes, torn


def read_annotations(path: str) -> Dict[int, dict]:
    """{index: record} of an annotation file (a torn last line is skipped with a warning)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"annotation file not found: {path} (write it with tools/extract_knowledge.py)")
    records, _, torn = _scan(path)
    if torn:
        logger.warning("%s: last line is incomplete (interrupted write); ignored", path)
    out: Dict[int, dict] = {}
    for lineno, record in records:
        if record["index"] in out:
            logger.warning("%s:%d: index %d appears again; the later line wins", path, lineno, record["index"])
        out[record["index"]] = record
    return out


class AnnotationWriter:
    """Resumable appender: ``with AnnotationWriter(path) as w: if i not in w.done: w.write(rec)``.

    Opening an existing file reads the indices already written (``done``) and cuts off a
    torn last line left by a crash (the only bytes ever removed: an incomplete record).
    Every ``write`` appends one line; :meth:`sync` (flush + fsync) runs every
    ``sync_every`` records or after ``sync_seconds``, whichever comes first, and at close.
    A subclass names another identifying field (``key_field``) and record check (``check``).
    """

    key_field = "index"
    check = staticmethod(_check_record)

    def __init__(self, path: str, sync_every: int = SYNC_EVERY, sync_seconds: float = SYNC_SECONDS):
        if sync_every < 1:
            raise ValueError(f"sync_every must be >= 1, got {sync_every}")
        self.path = path
        self.sync_every = sync_every
        self.sync_seconds = sync_seconds
        self.done: Set = set()  # the key_field values written
        self._file = None
        self._unsynced = 0
        self._last_sync = time.monotonic()

    def __enter__(self) -> "AnnotationWriter":
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> None:
        folder = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(folder, exist_ok=True)
        if os.path.exists(self.path):
            records, good_bytes, torn = _scan(self.path, self.check)
            self.done = {r[self.key_field] for _, r in records}
            if torn:
                logger.warning("%s: dropping an incomplete last line (interrupted run)", self.path)
                os.truncate(self.path, good_bytes)
            elif good_bytes and not self._ends_with_newline():
                with open(self.path, "ab") as f:  # complete JSON without its newline: finish the line
                    f.write(b"\n")
        self._file = open(self.path, "a", encoding="utf-8")

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"

    def write(self, record: dict) -> None:
        if self._file is None:
            raise RuntimeError("AnnotationWriter is not open")
        self.check(record, "annotation")
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.done.add(record[self.key_field])
        self._unsynced += 1
        if self._unsynced >= self.sync_every or time.monotonic() - self._last_sync >= self.sync_seconds:
            self.sync()

    def sync(self) -> None:
        """Flush and fsync what was written: it survives a kill or a crash from now on."""
        if self._file is not None and self._unsynced:
            self._file.flush()
            os.fsync(self._file.fileno())
        self._unsynced = 0
        self._last_sync = time.monotonic()

    def close(self) -> None:
        if self._file is not None:
            self.sync()
            self._file.close()
            self._file = None


def annotate_records(records: List[dict], out_path: str, analyzer, visual_cfg=None, batch_size: int = 32,
                     progress: bool = True, sync_every: int = SYNC_EVERY) -> Dict[str, object]:
    """Append the annotations of ``records`` that ``out_path`` lacks (resumable).

    Args:
        records: dataset records with "index", "caption", "image" (and "image_path" when
            the visual step runs), e.g. from ``ernie_vilg2.data.jsonl.read_jsonl_records``.
        analyzer: a TextAnalyzer (LAC + English tagger + user dictionary).
        visual_cfg: a VisualKnowledgeConfig to also detect objects (its keys, e.g.
            "objects", are merged into the record); None for textual knowledge only.
        sync_every: records between flush + fsync (see :class:`AnnotationWriter`).

    Returns {"written": n, "already_done": n, "image_failures": [indices]}; a record whose
    image fails to decode is reported and not written, so a rerun retries it. No records:
    ValueError, and ``out_path`` is not created.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not records:
        raise ValueError(f"no records to annotate into {out_path}")
    from tqdm import tqdm

    written, failures = 0, []
    with AnnotationWriter(out_path, sync_every=sync_every) as writer:
        todo = [r for r in records if r["index"] not in writer.done]
        already = len(records) - len(todo)
        bar = tqdm(total=len(records), initial=already, disable=not progress, unit="rec", desc="annotating")
        for k in range(0, len(todo), batch_size):
            batch = todo[k:k + batch_size]
            words = analyzer.analyze([r["caption"] for r in batch], with_importance=True)
            visual = [{}] * len(batch)
            if visual_cfg is not None:
                visual = annotate_images([r.get("image_path", r["image"]) for r in batch], visual_cfg)
            for record, record_words, objects in zip(batch, words, visual):
                if objects is None:
                    logger.warning("record %d: image %s could not be decoded; not annotated",
                                   record["index"], record.get("image_path", record["image"]))
                    failures.append(record["index"])
                    continue
                annotation = make_annotation(record["index"], record.get("image"), record["caption"], record_words)
                annotation.update(objects)
                writer.write(annotation)
                written += 1
            bar.update(len(batch))
        bar.close()
    return {"written": written, "already_done": already, "image_failures": failures}
