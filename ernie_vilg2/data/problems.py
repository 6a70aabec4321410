"""What reading the training data skipped: problems found by the readers (in the loader's worker
processes or the training process), each warned once and counted in the run's summary."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, Iterable

from .samples import OVERSIZED_IMAGE, UNDECODABLE_IMAGE

logger = logging.getLogger(__name__)

CORRUPT_SHARD = "corrupt shard"  # truncated, not a tar, a damaged header: the rest of the shard is skipped
INVALID_SAMPLE = "invalid sample"  # no image or caption, a caption that is not UTF-8, a bad .json
MISSING_IMAGE = "missing image"
UNREADABLE_SIDECAR = "unreadable knowledge sidecar"
KINDS = (CORRUPT_SHARD, INVALID_SAMPLE, MISSING_IMAGE, UNDECODABLE_IMAGE, OVERSIZED_IMAGE, UNREADABLE_SIDECAR)
MAX_WARNINGS = 20  # then only counted


@dataclass(frozen=True)
class Problem:
    kind: str  # one of KINDS
    where: str  # what is skipped (a shard, a shard's member, an image file): the same problem found twice counts once
    message: str  # the warning: names the file (and the member)


class DataReport:
    """The problems of one training stage's data, from every worker. The first ``MAX_WARNINGS``
    distinct problems are logged as warnings when they arrive; all are counted in :attr:`summary`."""

    def __init__(self, name: str):
        self.name = name
        self.samples = 0
        self._kinds: Dict[str, str] = {}  # where -> kind

    def add(self, problems: Iterable[Problem]) -> None:
        for problem in problems:
            if problem.where in self._kinds:
                continue
            self._kinds[problem.where] = problem.kind
            if len(self._kinds) <= MAX_WARNINGS:
                logger.warning("%s", problem.message)
            elif len(self._kinds) == MAX_WARNINGS + 1:
                logger.warning("%s: more problems in the data; they are counted in the summary at the end", self.name)

    @property
    def num_problems(self) -> int:
        return len(self._kinds)

    def counts(self) -> Dict[str, int]:
        kinds = list(self._kinds.values())
        return {kind: kinds.count(kind) for kind in KINDS if kind in kinds}

    @property
    def summary(self) -> str:
        """``data of stage base: 1,024 samples read (skipped 1 corrupt shard, 2 undecodable images)``."""
        counts = self.counts()
        skipped = ", ".join(f"{n:,} {kind}{'s' if n > 1 else ''}" for kind, n in counts.items())
        return f"{self.name}: {self.samples:,} samples read ({'skipped ' + skipped if skipped else 'nothing skipped'})"
