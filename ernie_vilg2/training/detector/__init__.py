"""Training the detector of visual knowledge (``tools/train_detector.py``): the data
(:mod:`.data`), augmented batches (:mod:`.augment`), held-out scoring (:mod:`.evaluate`) and
the loop (:mod:`.loop`) on the main trainer's schedule and checkpoints. The detector itself,
used to extract knowledge, is :mod:`ernie_vilg2.knowledge.visual.detector`."""
from .config import DetectorTrainConfig, SingleEmojiData
from .evaluate import evaluate_weights, summary_line
from .loop import train_detector

__all__ = ["DetectorTrainConfig", "SingleEmojiData", "evaluate_weights", "summary_line", "train_detector"]
