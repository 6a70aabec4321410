"""Write the built-in offline dataset (Twemoji images + bilingual captions + scenes).

    python tools/prepare_data.py --config configs/tiny.yaml         # uses its data: section
    python tools/prepare_data.py --out data/emoji-32 --resolution 32
    python tools/prepare_data.py --out data/demo-32 --demo --num-scenes 500

Flags override the config file. A second call with the same settings does nothing.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

os.environ.setdefault("GLOG_minloglevel", "2")

from ernie_vilg2.config import from_dict, read_yaml  # noqa: E402
from ernie_vilg2.data.config import DataConfig  # noqa: E402
from ernie_vilg2.data.prepare import prepare_builtin_dataset  # noqa: E402
from ernie_vilg2.errors import ErnieViLG2Error  # noqa: E402
from ernie_vilg2.utils.cpu_tuning import tune_cpu_process  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML file; its data: section gives the defaults")
    p.add_argument("--out", help="output folder (default: data.builtin.out_dir); '{resolution}' is filled in")
    p.add_argument("--resolution", type=int, help="image side in pixels")
    p.add_argument("--emoji-filter", nargs="+", metavar="NAME",
                   help="keep single emoji whose English name matches (whole words; '=name' exact; '@demo')")
    p.add_argument("--demo", action="store_true", help="same as --emoji-filter @demo")
    p.add_argument("--max-emoji", type=int, help="seeded subset of this many single emoji")
    p.add_argument("--no-singles", action="store_true", help="scenes only")
    p.add_argument("--num-scenes", type=int, help="training scenes (two emoji and a relation)")
    p.add_argument("--num-val-scenes", type=int, help="held-out scenes for val.jsonl")
    p.add_argument("--seed", type=int)
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def build_config(args) -> DataConfig:
    data = {}
    if args.config:
        data = read_yaml(args.config).get("data") or {}
    builtin = dict(data.get("builtin") or {})
    overrides = {
        "emoji_filter": ["@demo"] if args.demo else args.emoji_filter,
        "max_emoji": args.max_emoji,
        "num_scenes": args.num_scenes,
        "num_val_scenes": args.num_val_scenes,
        "seed": args.seed,
        "include_singles": False if args.no_singles else None,
    }
    builtin.update({k: v for k, v in overrides.items() if v is not None})
    data = {**data, "builtin": builtin}
    if args.resolution is not None:
        data["resolution"] = args.resolution
    return from_dict(DataConfig, data, "data")


def main(argv=None) -> int:
    tune_cpu_process()
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        cfg = build_config(args)
    except (ErnieViLG2Error, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        out_dir = prepare_builtin_dataset(cfg.builtin, cfg.resolution, out_dir=args.out, progress=not args.no_progress)
    except (ValueError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with open(os.path.join(out_dir, "manifest.json"), encoding="utf-8") as f:
        counts = json.load(f)["counts"]
    print(f"{out_dir}: {json.dumps(counts)} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
