"""What a detector training run takes: the run (:class:`DetectorTrainConfig`) and the
single-emoji images mixed into it (:class:`SingleEmojiData`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple, Union

from ...config import check


@dataclass
class SingleEmojiData:
    """Single-emoji images rendered in memory at each dataset's resolution (white
    background, like the scenes): scene-class singles with their box and negatives
    without. Counts are per dataset folder; ``scale`` is the emoji side as a fraction of
    the image side, drawn uniformly; positions are uniform over the canvas."""

    per_class: int = 60  # training singles of each scene class
    negatives: int = 1200  # training negatives (emoji outside the held-out share)
    val_per_class: int = 10  # held-out singles of each class (another seed)
    val_negatives: int = 300  # held-out negatives, from held-out emoji only
    scale: Tuple[float, float] = (0.3, 0.95)
    single_fraction: float = 0.25  # expected share of each training batch
    negative_fraction: float = 0.2
    seed: int = 0

    def __post_init__(self):
        for name in ("per_class", "negatives", "val_per_class", "val_negatives"):
            if getattr(self, name) < 0:
                raise ValueError(f"singles.{name}: must be >= 0")
        lo, hi = self.scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"singles.scale: need 0 < min <= max <= 1, got {self.scale}")
        if self.single_fraction < 0 or self.negative_fraction < 0 or self.single_fraction + self.negative_fraction >= 1:
            raise ValueError("singles.single_fraction, negative_fraction: must be >= 0 and sum to below 1")


@dataclass
class DetectorTrainConfig:
    """A detector training run on the scenes of ``DIR/train.jsonl`` for each DIR in
    ``data_dirs`` (sharing labels.json), scored on each ``DIR/val.jsonl``.

    ``max_steps`` sets the learning-rate schedule (warm-up, then cosine decay) and the end;
    ``max_minutes`` (wall time of the training loop including its periodic evaluations,
    summed over resumed runs) stops early with a checkpoint so a later run can go on.
    With ``singles`` single-emoji images and negatives are mixed into the batches.
    """

    detector_config: str  # PaddleDetection YAML (configs/detector/)
    data_dirs: Union[str, List[str]]
    out_dir: str
    max_steps: int = 1000
    batch_size: int = 16
    lr: float = 4e-3
    weight_decay: float = 1e-4
    max_grad_norm: float = 10.0
    warmup_steps: int = 100
    eval_every: int = 500
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    max_minutes: Optional[float] = None
    singles: Optional[SingleEmojiData] = None
    seed: int = 0
    resume: bool = True  # continue from the newest intact checkpoint in OUT/checkpoints/

    def __post_init__(self):
        self.data_dirs = [self.data_dirs] if isinstance(self.data_dirs, str) else list(self.data_dirs)
        if not self.data_dirs:
            raise ValueError("data_dirs: give at least one dataset folder")
        for name in ("batch_size", "eval_every", "checkpoint_every", "keep_checkpoints"):
            check(getattr(self, name) >= 1, name, "must be >= 1")
        check(self.max_steps >= 0, "max_steps", "must be >= 0")
