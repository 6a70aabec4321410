"""Precompute the knowledge of a dataset: an annotation file (JSON Lines) for a JSON-lines
dataset, a sidecar beside each shard for webdataset shards.

    python tools/extract_knowledge.py --data data/emoji-32 --out output/knowledge/annotations.jsonl
    python tools/extract_knowledge.py --data my.jsonl --out ann.jsonl --user-dict configs/knowledge/user_dict_example.txt
    python tools/extract_knowledge.py --data data/emoji-32 --out ann.jsonl \\
        --detector-config configs/detector/picodet_lcnet_tiny.yml \\
        --detector-weights output/detector/detector.safetensors --labels data/emoji-32/labels.json
    python tools/extract_knowledge.py --data "shards/{00000..00099}.tar" --workers 2

Textual knowledge (every caption): words, tags and LAC importance. Visual knowledge (with
--detector-config): salient objects.

JSON lines: interrupt and rerun freely: records already in --out are skipped. Bad source
lines are reported with their line numbers and skipped; a source with no valid record (e.g.
a .csv file) is an error, and a run where most lines were bad ends with a warning. Format:
ernie_vilg2/knowledge/annotations.py.

Shards (a folder of .tar files, a brace pattern or a .txt list, as data.root): each shard gets
NAME.knowledge.jsonl beside NAME.tar, which the loader joins by sample key (no --out). --workers
processes each take whole shards. A shard whose sidecar is complete (and not older than the
shard) is skipped; an interrupted shard continues from NAME.knowledge.jsonl.partial. Damaged
shards and invalid samples are warned of and counted; a missing shard is an error before any
work. Format and resume rule: ernie_vilg2/knowledge/shard_extraction.py.
"""
from __future__ import annotations

import argparse
import glob
import logging
import os
import sys
import warnings

os.environ.setdefault("GLOG_minloglevel", "2")
# Paddle's import-time notices; set on import, so the spawned knowledge workers (which import
# this script before their work) are quiet too.
for _category in (DeprecationWarning, UserWarning, FutureWarning):
    warnings.filterwarnings("ignore", category=_category)

from ernie_vilg2.cli_utils import fail, quiet_third_party_logs  # noqa: E402
from ernie_vilg2.errors import ErnieViLG2Error  # noqa: E402
from ernie_vilg2.utils.cpu_tuning import tune_cpu_process  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="dataset .jsonl, a folder holding train.jsonl, or webdataset "
                                                 "shards (a folder of .tar files, a brace pattern, a .txt list)")
    p.add_argument("--out", help="JSON lines: the annotation file to write or complete (.jsonl); "
                                 "shards take none (a sidecar beside each)")
    p.add_argument("--workers", type=int, default=1,
                   help="shards: processes, each taking whole shards (default 1: this process)")
    p.add_argument("--caption-field", help="shards: the .json field that holds the caption, as data.caption_field "
                                           "(default: the .txt member)")
    p.add_argument("--user-dict", help="user dictionary of forced words/tags (e.g. 红色/a)")
    p.add_argument("--detector-config", help="PaddleDetection YAML: also detect salient objects")
    p.add_argument("--detector-weights", help="detector weights (.safetensors or .pdparams)")
    p.add_argument("--labels", help="labels.json of the detector's class ids (needed with --detector-config)")
    p.add_argument("--batch-size", type=int, default=32, help="records analysed per step (default 32)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def shard_list(spec: str):
    """The shards ``spec`` names (as data.root would), or None when it names JSON lines."""
    from ernie_vilg2.data.latent_shards import has_manifest
    from ernie_vilg2.data.shards import ShardError, is_shard_spec, list_shards

    shard_folder = (os.path.isdir(spec) and not os.path.isfile(os.path.join(spec, "train.jsonl"))
                    and glob.glob(os.path.join(spec, "*.tar")))
    if not (is_shard_spec(spec) or shard_folder):
        return None
    try:
        shards = list_shards(spec)
    except ShardError as exc:
        fail(f"--data: {exc}")
    if has_manifest(shards):  # their samples have no image, and their knowledge comes from the image shards
        fail(f"--data: {spec} are latent shards (latents.json beside them): extract the knowledge of the image "
             "shards before encoding them (tools/encode_latents.py carries the sidecars over)")
    return shards


def visual_config(args):
    if not args.detector_config:
        return None
    from ernie_vilg2.knowledge.visual.config import VisualKnowledgeConfig

    return VisualKnowledgeConfig(enabled=True, detector_config=args.detector_config,
                                 detector_weights=args.detector_weights, labels=args.labels)


def main(argv=None) -> int:
    tune_cpu_process()
    args = parse_args(argv)
    if args.batch_size < 1:
        fail("--batch-size must be >= 1")
    if args.workers < 1:
        fail(f"--workers must be >= 1, got {args.workers}")
    if args.detector_weights and not args.detector_config:
        fail("--detector-weights needs --detector-config")
    shards = shard_list(args.data)  # before any model loads: a missing shard fails fast
    if shards is None:
        for flag, value, default in (("--workers", args.workers, 1), ("--caption-field", args.caption_field, None)):
            if value != default:
                fail(f"{flag} applies to shards; {args.data} is a JSON Lines dataset")
        if args.out is None:
            fail("--out is required for a JSON Lines dataset (the annotation file to write)")
        return annotate_jsonl(args)
    if args.out is not None:
        fail("--out: shards get their knowledge beside them (NAME.knowledge.jsonl next to NAME.tar); drop --out")
    return annotate_shards(args, shards)


def annotate_shards(args, shards) -> int:
    from ernie_vilg2.knowledge.shard_extraction import ExtractionOptions
    from ernie_vilg2.knowledge.shard_workers import LOG_FORMAT, extract_shards

    logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT)  # before LAC's import of Paddle
    from ernie_vilg2.knowledge.textual.user_dict import load_user_dict

    try:
        if args.user_dict:
            load_user_dict(args.user_dict)  # here, not in each worker
        options = ExtractionOptions(args.user_dict, visual_config(args), args.caption_field, args.batch_size)
        summary = extract_shards(shards, options, args.workers, progress=not args.no_progress)
    except (ErnieViLG2Error, OSError, ValueError) as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume (finished shards are kept)", file=sys.stderr)
        return 130
    print(summary.line)
    if summary.results and summary.samples == 0:
        fail(f"--data: no valid sample in the {len(summary.results):,} shards read (see the warnings above)")
    return 0


def annotate_jsonl(args) -> int:
    quiet_third_party_logs()
    from ernie_vilg2.data.jsonl import read_jsonl_records, resolve_jsonl_path
    from ernie_vilg2.knowledge.annotations import annotate_records
    from ernie_vilg2.knowledge.textual import TextAnalyzer

    try:  # the source first: a wrong file fails fast, before LAC or a detector loads
        data_path = resolve_jsonl_path(args.data)
        # Missing images matter only when images are read (the visual step).
        records, skipped = read_jsonl_records(data_path, check_images=args.detector_config is not None)
    except (FileNotFoundError, ValueError) as exc:
        fail(f"--data: {exc}")
    try:
        analyzer = TextAnalyzer(user_dict=args.user_dict)
        stats = annotate_records(records, args.out, analyzer, visual_cfg=visual_config(args),
                                 batch_size=args.batch_size, progress=not args.no_progress)
    except (ErnieViLG2Error, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    lines = ", ".join(str(n) for n, _ in skipped[:10]) + (" ..." if len(skipped) > 10 else "")
    print(f"{args.out}: {stats['written']} records written, {stats['already_done']} already there, "
          f"{len(skipped)} bad source lines skipped{f' (lines {lines})' if skipped else ''}, "
          f"{len(stats['image_failures'])} undecodable images")
    total = len(records) + len(skipped)
    if len(skipped) * 2 > total:  # more likely the wrong file than a few bad records
        print(f"warning: {len(skipped)} of {total} source lines of {data_path} were bad (skipped); "
              "is --data the dataset you meant?", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
