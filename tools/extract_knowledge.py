"""Precompute the knowledge of a dataset into an annotation file (JSON Lines).

    python tools/extract_knowledge.py --data data/emoji-32 --out output/knowledge/annotations.jsonl
    python tools/extract_knowledge.py --data my.jsonl --out ann.jsonl --user-dict configs/knowledge/user_dict_example.txt
    python tools/extract_knowledge.py --data data/emoji-32 --out ann.jsonl \\
        --detector-config configs/detector/picodet_lcnet_tiny.yml \\
        --detector-weights output/detector/detector.safetensors --labels data/emoji-32/labels.json

Textual knowledge (every caption): words, tags and LAC importance. Visual knowledge (with
--detector-config): salient objects. Interrupt and rerun freely: records already in
--out are skipped. Bad source lines are reported with their line numbers and skipped; a
source with no valid record (e.g. a .csv file) is an error, and a run where most lines
were bad ends with a warning. Format: ernie_vilg2/knowledge/annotations.py.
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("GLOG_minloglevel", "2")

from ernie_vilg2.cli_utils import fail, quiet_third_party_logs  # noqa: E402
from ernie_vilg2.errors import ErnieViLG2Error  # noqa: E402
from ernie_vilg2.utils.cpu_tuning import tune_cpu_process  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="dataset .jsonl, or a folder holding train.jsonl")
    p.add_argument("--out", required=True, help="annotation file to write or complete (.jsonl)")
    p.add_argument("--user-dict", help="user dictionary of forced words/tags (e.g. 红色/a)")
    p.add_argument("--detector-config", help="PaddleDetection YAML: also detect salient objects")
    p.add_argument("--detector-weights", help="detector weights (.safetensors or .pdparams)")
    p.add_argument("--labels", help="labels.json of the detector's class ids (needed with --detector-config)")
    p.add_argument("--batch-size", type=int, default=32, help="records analysed per step (default 32)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv=None) -> int:
    tune_cpu_process()
    args = parse_args(argv)
    quiet_third_party_logs()
    from ernie_vilg2.data.jsonl import read_jsonl_records, resolve_jsonl_path
    from ernie_vilg2.knowledge.annotations import annotate_records
    from ernie_vilg2.knowledge.textual import TextAnalyzer

    if args.batch_size < 1:
        fail("--batch-size must be >= 1")
    if args.detector_weights and not args.detector_config:
        fail("--detector-weights needs --detector-config")
    try:  # the source first: a wrong file fails fast, before LAC or a detector loads
        data_path = resolve_jsonl_path(args.data)
        # Missing images matter only when images are read (the visual step).
        records, skipped = read_jsonl_records(data_path, check_images=args.detector_config is not None)
    except (FileNotFoundError, ValueError) as exc:
        fail(f"--data: {exc}")
    try:
        visual_cfg = None
        if args.detector_config:
            from ernie_vilg2.knowledge.visual.config import VisualKnowledgeConfig

            visual_cfg = VisualKnowledgeConfig(enabled=True, detector_config=args.detector_config,
                                               detector_weights=args.detector_weights, labels=args.labels)
        analyzer = TextAnalyzer(user_dict=args.user_dict)
        stats = annotate_records(records, args.out, analyzer, visual_cfg=visual_cfg,
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
