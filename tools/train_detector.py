"""Train the shipped detector on the built-in composed scenes plus single-emoji images.

    python tools/train_detector.py \
        --data output/detector-data/emoji-32 output/detector-data/emoji-64 --build-data 32 64 \
        --out output/detector --max-steps 1500 --max-minutes 25

Each --data folder holds train.jsonl, val.jsonl, labels.json (the format of
``ernie_vilg2.data.prepare``); records with boxes are the training scenes. ``--build-data``
materialises the built-in scenes at the given resolutions first (under the --data paths'
parent if needed). Single scene-class emoji at random scales and negatives (emoji of no
scene class, no box) are rendered in memory at each folder's resolution and mixed into
the batches (``--no-singles``: scenes only). Reported on held-out data: scene mAP@0.5,
single-emoji AP@0.5, and the false-positive rate on held-out non-class emoji.
Rerunning with the same --out resumes from the newest intact checkpoint in OUT/checkpoints/
(a run started by an earlier version, OUT/checkpoint.safetensors, is not resumed).
Outputs: OUT/detector.safetensors (weights), OUT/metrics.json.
``--evaluate WEIGHTS`` only scores saved weights on the same held-out data and prints JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

os.environ.setdefault("GLOG_minloglevel", "2")
warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", category=UserWarning)

from ernie_vilg2.cli_utils import fail  # noqa: E402
from ernie_vilg2.errors import ErnieViLG2Error  # noqa: E402
from ernie_vilg2.utils.cpu_tuning import tune_cpu_process  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(REPO_ROOT, "configs", "detector", "picodet_lcnet_tiny.yml")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=DEFAULT_CONFIG, help="PaddleDetection YAML (default: the shipped tiny PicoDet)")
    p.add_argument("--data", nargs="+", required=True, help="dataset folder(s) with train.jsonl/val.jsonl/labels.json")
    p.add_argument("--build-data", type=int, nargs="*", metavar="RES", default=None,
                   help="first build the built-in scenes (no single-emoji images) at these resolutions into "
                        "the --data folders, in order")
    p.add_argument("--out", default=None, help="output folder (checkpoint, weights, metrics.json)")
    p.add_argument("--max-steps", type=int, default=1000)
    p.add_argument("--max-minutes", type=float, default=None, help="stop (resumable) after this much training time")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=4e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--no-singles", action="store_true", help="train and score on the scenes only")
    p.add_argument("--singles-per-class", type=int, default=60, help="training singles per class and folder")
    p.add_argument("--negatives", type=int, default=1200, help="training negatives per folder")
    p.add_argument("--val-singles-per-class", type=int, default=10)
    p.add_argument("--val-negatives", type=int, default=300)
    p.add_argument("--single-scale", type=float, nargs=2, default=[0.3, 0.95], metavar=("MIN", "MAX"),
                   help="emoji side / image side of singles and negatives")
    p.add_argument("--single-fraction", type=float, default=0.25, help="share of singles in a batch")
    p.add_argument("--negative-fraction", type=float, default=0.2, help="share of negatives in a batch")
    p.add_argument("--evaluate", metavar="WEIGHTS", default=None,
                   help="do not train: score these weights on the held-out data and print JSON")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint in --out")
    return p.parse_args(argv)


def main(argv=None) -> int:
    tune_cpu_process()
    args = parse_args(argv)
    if not args.evaluate and not args.out:
        fail("--out is required unless --evaluate is given")
    if args.build_data:
        if len(args.build_data) != len(args.data):
            fail("--build-data: give one resolution per --data folder")
        from ernie_vilg2.data.config import BuiltinDataConfig
        from ernie_vilg2.data.prepare import prepare_builtin_dataset

        for res, folder in zip(args.build_data, args.data):
            try:
                prepare_builtin_dataset(BuiltinDataConfig(include_singles=False), res, out_dir=folder, progress=True)
            except ErnieViLG2Error as exc:  # a full disk, named
                print(f"error: {exc}", file=sys.stderr)
                return 2

    from ernie_vilg2.training.detector import (
        DetectorTrainConfig,
        SingleEmojiData,
        evaluate_weights,
        summary_line,
        train_detector,
    )

    try:  # damaged weights or checkpoint, bad data or values: one line naming the file or field, exit 2
        singles = None
        if not args.no_singles:
            singles = SingleEmojiData(
                per_class=args.singles_per_class, negatives=args.negatives, val_per_class=args.val_singles_per_class,
                val_negatives=args.val_negatives, scale=tuple(args.single_scale),
                single_fraction=args.single_fraction, negative_fraction=args.negative_fraction, seed=args.seed)
        if args.evaluate:
            result = evaluate_weights(args.config, args.data, args.evaluate, singles)
            print(json.dumps(result, indent=2, ensure_ascii=False))
            print(summary_line(result))
            return 0
        cfg = DetectorTrainConfig(
            args.config, args.data, args.out, max_steps=args.max_steps, batch_size=args.batch_size, lr=args.lr,
            weight_decay=args.weight_decay, warmup_steps=args.warmup_steps, eval_every=args.eval_every,
            checkpoint_every=args.checkpoint_every, max_minutes=args.max_minutes, singles=singles, seed=args.seed,
            resume=not args.no_resume)
        metrics = train_detector(cfg, log=lambda msg: print(msg, flush=True))
    except (ErnieViLG2Error, FileNotFoundError, ValueError) as exc:  # ValueError: the config's value checks
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{summary_line(metrics)} ({metrics['steps']} steps, {metrics['train_seconds'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
