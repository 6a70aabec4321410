"""How fast one process extracts textual knowledge: the bound on preparing a corpus's sidecars.

    python benchmarks/knowledge_throughput.py            # ViLG-300 prompts, 3 s per row

Rows (captions per second of one process, batches of 32 as tools/extract_knowledge.py runs them):
  LAC, tags only              TextAnalyzer.analyze on the 300 Chinese prompts
  LAC + importance            the same with LAC's word-importance model (what extraction runs)
  English tagger              TextAnalyzer.analyze on the 300 English prompts (TextBlob + our fixes)
  one shard, end to end       ShardAnnotator over a shard of all 600 prompts (tiny images): reading
                              the tar, the image headers, both analysers, writing the sidecar
Each row also gives the minutes one process needs for a million such captions. Model loading is
not timed (the tool loads once per process).
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time

from textual_knowledge import VILG300, load_prompts

from ernie_vilg2.utils.cpu_report import cpu_line
from ernie_vilg2.utils.cpu_tuning import tune_cpu_process

os.environ.setdefault("GLOG_minloglevel", "2")
BATCH = 32  # tools/extract_knowledge.py --batch-size default


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", default=VILG300, help="ViLG-300 CSV (columns Prompt, 文本)")
    p.add_argument("--seconds", type=float, default=3.0, help="least time each row is measured for")
    args = p.parse_args(argv)
    if not args.seconds > 0:
        p.error("--seconds must be > 0")
    return args


def captions_per_second(run, captions, seconds):
    """Captions per second of ``run(batch)`` over ``captions`` in batches, repeated for ``seconds``."""
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for k in range(0, len(captions), BATCH):
            run(captions[k:k + BATCH])
        done += len(captions)
    return done / (time.perf_counter() - start)


def shard_rate(zh, en, seconds):
    """Samples per second of ShardAnnotator over one shard of every prompt."""
    from PIL import Image

    from ernie_vilg2.data.shard_writer import ShardWriter
    from ernie_vilg2.data.shards import sidecar_path
    from ernie_vilg2.knowledge.shard_extraction import ExtractionOptions, ShardAnnotator

    image = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(image, format="PNG")
    with tempfile.TemporaryDirectory() as folder:
        writer = ShardWriter(folder, shard_size=len(zh) + len(en))
        for i, (caption, lang) in enumerate([(c, "zh") for c in zh] + [(c, "en") for c in en]):
            writer.write(f"{i:09d}", image.getvalue(), caption, {"lang": lang})
        shard = writer.close()[0]
        annotator = ShardAnnotator(ExtractionOptions(batch_size=BATCH))
        samples, busy = 0, 0.0
        while busy < seconds:
            result = annotator.annotate(shard, lambda problem: None)
            samples, busy = samples + result.written, busy + result.seconds
            os.remove(sidecar_path(shard))
    return samples / busy


def main(argv=None) -> int:
    tune_cpu_process()
    args = parse_args(argv)
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("ernie_vilg2").setLevel(logging.ERROR)
    from ernie_vilg2.knowledge.textual import TextAnalyzer

    zh, en = load_prompts(args.prompts)
    analyzer = TextAnalyzer()
    analyzer.analyze(["一", "a"], with_importance=True)  # load LAC's vocabulary and both predictors
    rows = [
        ("LAC (Chinese), tags only", captions_per_second(lambda b: analyzer.analyze(b), zh, args.seconds)),
        ("LAC (Chinese) + importance", captions_per_second(lambda b: analyzer.analyze(b, with_importance=True),
                                                          zh, args.seconds)),
        ("English tagger (TextBlob + fixes)", captions_per_second(lambda b: analyzer.analyze(b), en, args.seconds)),
        (f"one shard of all {len(zh) + len(en)} prompts, end to end", shard_rate(zh, en, args.seconds)),
    ]
    print(cpu_line())
    print(f"\nKnowledge extraction, one process (OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}, batches of {BATCH})\n")
    print("| step | captions/s | minutes per 1M captions |\n|---|---|---|")
    for name, rate in rows:
        print(f"| {name} | {rate:,.0f} | {1e6 / rate / 60:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
