"""Knowledge of webdataset shards: one sidecar per shard (``NAME.knowledge.jsonl`` beside
``NAME.tar``, the loader joins it by sample key), written one shard at a time by
:class:`ShardAnnotator` (many shards in worker processes: :mod:`.shard_workers`).

A sidecar line is an annotation record (:mod:`.annotations`) keyed by the sample's ``key``
instead of a line index: ``{"key", "caption", "keywords", "objects"?}``; ``caption`` is the
caption the loader reads for that sample (the ``.txt`` member, or ``caption_field`` of its
``.json``). Every sample that :func:`~ernie_vilg2.data.iter_shard` reads gets one, except, with
the detector, one whose image it cannot decode.

Resume: a shard is done when its sidecar exists and is not older than the shard (a shard
rewritten since is done again). A shard's lines are appended to ``NAME.knowledge.jsonl.partial``
and fsynced in batches (:class:`~.annotations.AnnotationWriter`); when the shard has been read
to its end the partial file is renamed to the sidecar. An interrupted shard is continued from
its partial file, skipping the keys already there (a torn last line is dropped), so no key is
written twice and at most the lines since the last sync are redone. Why both rather than only
a temporary file renamed at the end: the rename still makes "done" a fact of the file system
(a rerun needs no pass over finished shards), and the partial file keeps the work done on an
interrupted shard, which with a detector is most of the cost.
"""
from __future__ import annotations

import io
import logging
import os
import time
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional

from ..data.problems import UNDECODABLE_IMAGE, Problem
from ..data.shards import check_sidecar_record, iter_shard, sidecar_path
from ..utils.io import disk_full_as_error
from .annotations import AnnotationWriter, make_annotation

logger = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"


@dataclass(frozen=True)
class ExtractionOptions:
    """What to extract: textual knowledge always, visual knowledge with a ``visual`` config."""

    user_dict: Optional[str] = None
    visual: Optional[object] = None  # a VisualKnowledgeConfig with the detector's files
    caption_field: Optional[str] = None  # data.caption_field of the training config
    batch_size: int = 32


@dataclass
class ShardResult:
    shard: str
    samples: int = 0  # valid samples read
    written: int = 0  # sidecar lines written now
    already: int = 0  # lines found in the partial file of an interrupted run
    seconds: float = 0.0
    finished: bool = False  # the sidecar is in place (False: the shard had no valid sample)


class SidecarWriter(AnnotationWriter):
    """The resumable appender of annotation files, for sidecar lines (keyed by ``key``)."""

    key_field = "key"
    check = staticmethod(check_sidecar_record)  # exactly what the loader's read_sidecar accepts


def make_sidecar_record(key: str, caption: str, words) -> dict:
    """A sidecar line: the annotation record of ``caption`` keyed by the sample's ``key``."""
    record = make_annotation(0, None, caption, words)
    return {"key": key, "caption": record["caption"], "keywords": record["keywords"]}


def partial_path(shard: str) -> str:
    return sidecar_path(shard) + PARTIAL_SUFFIX


def _not_older(path: str, shard: str) -> bool:
    return os.path.isfile(path) and os.path.getmtime(path) >= os.path.getmtime(shard)


def is_done(shard: str) -> bool:
    """Whether ``shard``'s sidecar is complete: present and not older than the shard."""
    return _not_older(sidecar_path(shard), shard)


class _NamedImage(io.BytesIO):
    """A shard member's image bytes that the detector's warnings name as "SHARD: MEMBER"."""

    def __init__(self, data: bytes, name: str):
        super().__init__(data)
        self.label = name

    def __str__(self) -> str:
        return self.label


def _open_partial(partial: str, shard: str) -> SidecarWriter:
    """The open writer of ``shard``'s partial file; one older than the shard, or damaged before
    its last line, is started over."""
    reason = None if not os.path.exists(partial) or _not_older(partial, shard) else "the shard is newer"
    writer = SidecarWriter(partial)
    if reason is None:
        try:
            writer.open()
            return writer
        except ValueError as exc:
            reason = str(exc)
    logger.warning("%s: %s; the shard's knowledge is extracted again", partial, reason)
    os.remove(partial)
    writer.open()
    return writer


def _batches(samples: Iterator[dict], size: int) -> Iterator[List[dict]]:
    batch: List[dict] = []
    for sample in samples:
        batch.append(sample)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class ShardAnnotator:
    """Writes the sidecars of shards, one at a time, in the process that runs it. LAC (and the
    detector) load here, so that a shard's time is the time of its annotation."""

    def __init__(self, options: ExtractionOptions):
        from .textual import TextAnalyzer

        self.options = options
        self.analyzer = TextAnalyzer(user_dict=options.user_dict)
        self.analyzer.analyze(["一", "a"], with_importance=True)  # LAC's vocabulary and both predictors
        if options.visual is not None:
            from .visual import load_detector

            load_detector(options.visual)

    def annotate(self, shard: str, on_problem: Callable[[Problem], None],
                 on_progress: Callable[[int], None] = lambda n: None) -> ShardResult:
        """Write ``shard``'s sidecar (continuing its partial file); what the reader skips goes to
        ``on_problem``, the number of samples of each batch read to ``on_progress``."""
        start = time.perf_counter()
        result = ShardResult(shard)
        partial = partial_path(shard)
        visual = self.options.visual is not None
        samples = iter_shard(shard, self.options.caption_field, load_images=visual, on_problem=on_problem)
        with disk_full_as_error(partial):
            writer = _open_partial(partial, shard)
            try:
                resumed = set(writer.done)
                seen = set(resumed)  # not to write: in the partial file, or a key met before in the shard
                for batch in _batches(samples, self.options.batch_size):
                    result.samples += len(batch)
                    todo = []
                    for sample in batch:
                        key = sample["key"]
                        if key in seen:
                            result.already += key in resumed
                            resumed.discard(key)
                            continue
                        seen.add(key)
                        todo.append(sample)
                    result.written += self._write(todo, writer, on_problem)
                    on_progress(len(batch))
            finally:
                writer.close()
        if result.samples:
            os.replace(partial, sidecar_path(shard))
            result.finished = True
        else:  # nothing to join: no sidecar (a damaged shard is tried again by a rerun)
            os.remove(partial)
        result.seconds = time.perf_counter() - start
        return result

    def _write(self, samples: List[dict], writer: SidecarWriter, on_problem) -> int:
        if not samples:
            return 0
        words = self.analyzer.analyze([s["caption"] for s in samples], with_importance=True)
        objects = [{}] * len(samples)
        if self.options.visual is not None:
            from .visual import annotate_images

            images = [_NamedImage(s["image"], s["image_name"]) for s in samples]
            objects = annotate_images(images, self.options.visual)
        written = 0
        for sample, sample_words, found in zip(samples, words, objects):
            if found is None:  # the header read, the pixels do not: the loader cannot train it either
                on_problem(Problem(UNDECODABLE_IMAGE, f"{sample['shard']}:{sample['member']}",
                                   f"{UNDECODABLE_IMAGE} {sample['image_name']}; no knowledge written for it"))
                continue
            writer.write({**make_sidecar_record(sample["key"], sample["caption"], sample_words), **found})
            written += 1
        return written
