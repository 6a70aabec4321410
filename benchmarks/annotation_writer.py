"""Annotation extraction throughput: an fsync per record vs batched syncs.

    python benchmarks/annotation_writer.py                 # ViLG-300 captions, 3 rounds
    python benchmarks/annotation_writer.py --records 4000 --rounds 5

Rows (records/s, median of interleaved rounds; each round writes a fresh file in --dir):
  writer only        AnnotationWriter.write of precomputed annotations
  extract (textual)  annotate_records: LAC + importance + English tagger + writing, as
                     tools/extract_knowledge.py runs it (batch 32)
"sync every record" is the old writer (flush + fsync after each line); "batched" is the
default (every 256 records or 5 s, and at close). The fsync cost depends on the disk.
"""
from __future__ import annotations

import argparse
import csv
import os
import statistics
import tempfile
import time

from ernie_vilg2.utils.cpu_report import cpu_line
from ernie_vilg2.utils.cpu_tuning import tune_cpu_process

os.environ.setdefault("GLOG_minloglevel", "2")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VILG300 = os.path.normpath(os.path.join(ROOT, "..", "shared", "data", "ViLG-300.csv"))
FALLBACK = ["一辆红色的汽车停在路边", "a corgi wearing sunglasses", "油画风格的星空下的城市", "a red apple"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", default=VILG300, help="ViLG-300 CSV (columns Prompt, 文本)")
    p.add_argument("--records", type=int, default=2000, help="records per measurement")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--dir", default=None, help="folder for the files (default: a temporary folder)")
    args = p.parse_args(argv)
    if min(args.records, args.rounds) < 1:
        p.error("--records and --rounds must be >= 1")
    return args


def load_captions(path, n):
    if os.path.isfile(path):
        with open(path, encoding="utf-8-sig", newline="") as f:
            rows = list(csv.DictReader(f))
        captions = [c for row in rows for c in (row["文本"], row["Prompt"]) if c]
    else:
        print(f"note: {path} not found, using {len(FALLBACK)} built-in captions")
        captions = FALLBACK
    return [captions[i % len(captions)] for i in range(n)]


def main(argv=None):
    tune_cpu_process()
    args = parse_args(argv)
    import logging

    logging.disable(logging.WARNING)
    from ernie_vilg2.knowledge.annotations import SYNC_EVERY, AnnotationWriter, annotate_records, make_annotation
    from ernie_vilg2.knowledge.textual import TextAnalyzer

    captions = load_captions(args.prompts, args.records)
    records = [{"index": i, "image": f"{i}.png", "caption": c} for i, c in enumerate(captions)]
    analyzer = TextAnalyzer()
    words = analyzer.analyze(captions[:64], with_importance=True)  # warm-up (loads LAC)
    annotations = [make_annotation(i, f"{i}.png", c, words[i % 64]) for i, c in enumerate(captions)]

    variants = {"sync every record": 1, "batched": SYNC_EVERY}
    rates = {(row, v): [] for row in ("writer only", "extract (textual)") for v in variants}
    folder = args.dir or tempfile.mkdtemp(prefix="annotation-bench-")
    os.makedirs(folder, exist_ok=True)

    def writer_only(path, sync_every):
        with AnnotationWriter(path, sync_every=sync_every) as w:
            for a in annotations:
                w.write(a)

    def extract(path, sync_every):
        annotate_records(records, path, analyzer, progress=False, sync_every=sync_every)

    for r in range(args.rounds):
        order = list(variants.items()) if r % 2 == 0 else list(variants.items())[::-1]
        for row, fn in (("writer only", writer_only), ("extract (textual)", extract)):
            for name, sync_every in order:
                path = os.path.join(folder, f"bench-{r}-{sync_every}-{row[0]}.jsonl")
                start = time.perf_counter()
                fn(path, sync_every)
                rates[(row, name)].append(args.records / (time.perf_counter() - start))
                os.remove(path)
    print(cpu_line())
    print(f"{args.records} records per measurement, {args.rounds} rounds, files in {folder}\n")
    print("| measurement | sync every record (rec/s) | batched (rec/s) | speed-up |")
    print("|---|---:|---:|---:|")
    for row in ("writer only", "extract (textual)"):
        old = statistics.median(rates[(row, "sync every record")])
        new = statistics.median(rates[(row, "batched")])
        print(f"| {row} | {old:,.0f} | {new:,.0f} | {new / old:.2f}x |")


if __name__ == "__main__":
    main()
