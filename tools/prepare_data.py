"""Write the built-in offline dataset (Twemoji images + bilingual captions + scenes), or any
supported data set as webdataset shards in img2dataset's layout (so that training streams it).

    python tools/prepare_data.py --config configs/tiny.yaml         # uses its data: section
    python tools/prepare_data.py --out data/emoji-32 --resolution 32
    python tools/prepare_data.py --out data/demo-32 --demo --num-scenes 500
    python tools/prepare_data.py --config configs/tiny.yaml --shards data/emoji-shards --shard-size 500
    python tools/prepare_data.py --source data/coco --coco-split train2014 --shards data/coco-shards
    python tools/prepare_data.py --source data/mine/train.jsonl --shards data/mine-shards --shard-size 10000

Flags override the config file. A second call with the same settings does nothing (the
built-in data); shards are written into a new folder only. With --shards the records are
written in a seeded shuffled order (--keep-order: the source's), --shard-size to a shard, the
built-in data (or --source: a .jsonl file, a folder holding train.jsonl, or a COCO folder) as
the source; labels.json beside the source is copied beside the shards.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

os.environ.setdefault("GLOG_minloglevel", "2")

from ernie_vilg2.cli_utils import fail  # noqa: E402
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
    shards = p.add_argument_group("shards")
    shards.add_argument("--shards", metavar="DIR", help="write the data as webdataset shards into this new folder")
    shards.add_argument("--source", help="with --shards: a .jsonl file, a folder holding train.jsonl, or a COCO "
                                         "folder (default: the built-in data)")
    shards.add_argument("--coco-split", help="with a COCO --source: the split, e.g. train2014 (default: its only "
                                             "or only train* split)")
    shards.add_argument("--shard-size", type=int, default=10000, help="samples per shard (default 10000)")
    shards.add_argument("--keep-order", action="store_true",
                        help="write the records in the source's order (default: shuffled with seed 0)")
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


def shard_source(args, cfg: DataConfig):
    """(indexed records, files to copy beside the shards) of --source, or of the built-in data."""
    from ernie_vilg2.data.coco import CocoCaptions
    from ernie_vilg2.data.jsonl import resolve_jsonl_path
    from ernie_vilg2.data.jsonl_index import JsonlIndex
    from ernie_vilg2.data.sources import CocoRecords, coco_split, detect_format

    root = args.source or prepare_builtin_dataset(cfg.builtin, cfg.resolution, out_dir=args.out,
                                                  progress=not args.no_progress)
    kind = detect_format(root)
    if kind == "webdataset":
        raise ValueError(f"--source {root} already is webdataset shards")
    if kind == "coco":
        records = CocoRecords(CocoCaptions(root, coco_split(root, args.coco_split)), None)
    else:
        records = JsonlIndex(resolve_jsonl_path(root))
    folder = root if os.path.isdir(root) else os.path.dirname(root)
    labels = os.path.join(folder, "labels.json")
    return records, [labels] if os.path.isfile(labels) else []


def write_shards(args, cfg: DataConfig) -> int:
    from ernie_vilg2.data.shard_writer import export_shards

    start = time.perf_counter()
    records, extra = shard_source(args, cfg)
    skipped = []
    counts = export_shards(records, args.shards, args.shard_size, shuffle_seed=None if args.keep_order else 0,
                           extra_files=extra, on_skip=lambda record, reason: skipped.append((record, reason)),
                           progress=not args.no_progress)
    for record, reason in skipped[:20]:
        logging.warning("record %s: image %s cannot be read (%s); skipped", record["key"], record["image"], reason)
    print(f"{os.path.abspath(args.shards)}: {counts['shards']:,} shards, {counts['samples']:,} samples"
          f"{f', {len(skipped):,} records skipped (unreadable images)' if skipped else ''} "
          f"({time.perf_counter() - start:.1f} s)")
    return 0


def main(argv=None) -> int:
    tune_cpu_process()
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.shards is None and (args.source or args.coco_split):
        fail("--source and --coco-split need --shards")
    if args.shard_size < 1:
        fail("--shard-size must be >= 1")
    try:
        cfg = build_config(args)
    except (ErnieViLG2Error, FileNotFoundError) as exc:
        fail(str(exc))
    if args.shards is not None:
        try:
            return write_shards(args, cfg)
        except (ValueError, OSError) as exc:  # DatasetError, CocoError, FileExistsError, a missing --source
            fail(str(exc))
    start = time.perf_counter()
    try:
        out_dir = prepare_builtin_dataset(cfg.builtin, cfg.resolution, out_dir=args.out, progress=not args.no_progress)
    except (ValueError, FileExistsError) as exc:
        fail(str(exc))
    with open(os.path.join(out_dir, "manifest.json"), encoding="utf-8") as f:
        counts = json.load(f)["counts"]
    print(f"{out_dir}: {json.dumps(counts)} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
