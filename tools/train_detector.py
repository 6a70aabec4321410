"""Train the shipped detector on the built-in composed scenes; report mAP@0.5 on val.

    python tools/train_detector.py \
        --data output/detector-data/emoji-32 output/detector-data/emoji-64 \
        --out output/detector --max-steps 1000 --max-minutes 30

Each --data folder holds train.jsonl, val.jsonl, labels.json (the format of
``ernie_vilg2.data.prepare``); records with boxes are the training scenes. ``--build-data``
materialises the built-in scenes at the given resolutions first (under the --data paths'
parent if needed). Rerunning with the same --out resumes from OUT/checkpoint.safetensors.
Outputs: OUT/detector.safetensors (weights), OUT/metrics.json.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings

os.environ.setdefault("GLOG_minloglevel", "2")
warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", category=UserWarning)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(REPO_ROOT, "configs", "detector", "picodet_lcnet_tiny.yml")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=DEFAULT_CONFIG, help="PaddleDetection YAML (default: the shipped tiny PicoDet)")
    p.add_argument("--data", nargs="+", required=True, help="dataset folder(s) with train.jsonl/val.jsonl/labels.json")
    p.add_argument("--build-data", type=int, nargs="*", metavar="RES", default=None,
                   help="first build the built-in scenes (no single-emoji images) at these resolutions into "
                        "the --data folders, in order")
    p.add_argument("--out", required=True, help="output folder (checkpoint, weights, metrics.json)")
    p.add_argument("--max-steps", type=int, default=1000)
    p.add_argument("--max-minutes", type=float, default=None, help="stop (resumable) after this much training time")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=4e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint in --out")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.build_data:
        if len(args.build_data) != len(args.data):
            sys.exit("--build-data: give one resolution per --data folder")
        from ernie_vilg2.data.config import BuiltinDataConfig
        from ernie_vilg2.data.prepare import prepare_builtin_dataset

        for res, folder in zip(args.build_data, args.data):
            prepare_builtin_dataset(BuiltinDataConfig(include_singles=False), res, out_dir=folder, progress=True)

    from ernie_vilg2.knowledge.visual.detector_training import train_detector

    metrics = train_detector(
        args.config,
        args.data,
        args.out,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps,
        eval_every=args.eval_every,
        checkpoint_every=args.checkpoint_every,
        max_minutes=args.max_minutes,
        seed=args.seed,
        resume=not args.no_resume,
        log=lambda msg: print(msg, flush=True),
    )
    print(f"mAP@0.5 = {metrics['map50']:.4f} ({metrics['steps']} steps, {metrics['train_seconds'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
