"""How accurate is the composition judge? Run it on real held-out scenes (captions true by
construction) and on their mirror images, and print JSON.

    python tools/judge_accuracy.py --data data/emoji-demo-32 \
        --detector-weights output/detector/detector.safetensors

--data: a dataset folder (its val.jsonl, or --split) or a .jsonl file; --labels defaults to
the labels.json beside it. See ernie_vilg2.evaluation.composition.judge_accuracy.
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

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(REPO_ROOT, "configs", "detector", "picodet_lcnet_tiny.yml")

from ernie_vilg2.cli_utils import fail  # noqa: E402
from ernie_vilg2.evaluation.composition import DEFAULT_SCORE_THRESHOLD  # noqa: E402
from ernie_vilg2.utils.cpu_tuning import tune_cpu_process  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="dataset folder or .jsonl with real scenes (boxes, captions)")
    p.add_argument("--split", default="val", help="which FOLDER/SPLIT.jsonl when --data is a folder (default: val)")
    p.add_argument("--detector-weights", required=True, help=".safetensors (or trusted .pdparams)")
    p.add_argument("--detector-config", default=DEFAULT_CONFIG, help="PaddleDetection YAML (default: the shipped PicoDet)")
    p.add_argument("--labels", default=None, help="labels.json (default: beside --data)")
    p.add_argument("--score-threshold", type=float, default=DEFAULT_SCORE_THRESHOLD)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    return p.parse_args(argv)


def main(argv=None) -> int:
    tune_cpu_process()
    args = parse_args(argv)
    if not 0.0 <= args.score_threshold <= 1.0:
        fail(f"--score-threshold must be in [0, 1], got {args.score_threshold}")
    for flag, value in (("--batch-size", args.batch_size), ("--n-boot", args.n_boot)):
        if value < 1:
            fail(f"{flag} must be >= 1, got {value}")
    labels = args.labels or os.path.join(args.data if os.path.isdir(args.data) else os.path.dirname(args.data),
                                         "labels.json")
    from ernie_vilg2.evaluation.composition import judge_accuracy, load_scene_records
    from ernie_vilg2.knowledge.visual.detector import Detector

    try:  # missing or damaged files, bad data: one line naming the file, exit 2
        records = load_scene_records(args.data, args.split)
        detector = Detector(args.detector_config, labels, args.detector_weights)
        result = judge_accuracy(detector, records, score_threshold=args.score_threshold,
                                batch_size=args.batch_size, n_boot=args.n_boot, seed=args.seed)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    if not result["records"]:
        fail(f"{args.data}: no record has a two-object scene caption")
    result = {"data": args.data, "split": args.split, "detector_weights": args.detector_weights, **result}
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
