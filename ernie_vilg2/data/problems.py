"""What reading the training data skipped: problems found by the readers (in the loader's worker
processes or the training process), each warned once and counted in the run's summary."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, Iterable, Optional, Set

from .samples import OVERSIZED_IMAGE, UNDECODABLE_IMAGE

logger = logging.getLogger(__name__)

CORRUPT_SHARD = "corrupt shard"  # truncated, not a tar, a damaged header: the rest of the shard is skipped
INVALID_SAMPLE = "invalid sample"  # no image or caption, a caption that is not UTF-8, a bad .json
MISSING_IMAGE = "missing image"
UNREADABLE_SIDECAR = "unreadable knowledge sidecar"
UNDECODABLE_LATENT = "undecodable latent"  # latent shards: a damaged .latent.npy member
KINDS = (CORRUPT_SHARD, INVALID_SAMPLE, MISSING_IMAGE, UNDECODABLE_IMAGE, OVERSIZED_IMAGE, UNDECODABLE_LATENT,
         UNREADABLE_SIDECAR)
MAX_WARNINGS = 20  # then only counted


@dataclass(frozen=True)
class Problem:
    kind: str  # one of KINDS
    where: str  # what is skipped (a shard, a shard's member, an image file): the same problem found twice counts once
    message: str  # the warning: names the file (and the member)


class DataReport:
    """The problems of one training stage's data, from every worker, counted in :attr:`summary`.
    Each is logged as a warning when it first arrives, the first ``MAX_WARNINGS`` of them:
    ``warned``, shared by the reports of a run, keeps a problem that a later stage meets again
    from being warned of twice."""

    def __init__(self, name: str, warned: Optional[Set[str]] = None):
        self.name = name
        self.samples = 0
        self._kinds: Dict[str, str] = {}  # where -> kind
        self._warned = set() if warned is None else warned

    def add(self, problems: Iterable[Problem]) -> None:
        for problem in problems:
            if problem.where in self._kinds:
                continue
            self._kinds[problem.where] = problem.kind
            if problem.where in self._warned:
                continue
            self._warned.add(problem.where)
            if len(self._warned) <= MAX_WARNINGS:
                logger.warning("%s", problem.message)
            elif len(self._warned) == MAX_WARNINGS + 1:
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
