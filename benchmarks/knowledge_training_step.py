"""End-to-end training-step cost of textual and visual knowledge (what tools/train.py runs).

    python benchmarks/knowledge_training_step.py                # configs/tiny.yaml, 30 repeats
    python benchmarks/knowledge_training_step.py --repeats 50 --config configs/tiny.yaml

Each row is the full diffusion step of the base stage — draw the batch, build captions
and knowledge tensors (CaptionProcessor), text encoder + U-Net forward/backward, AdamW —
built from the same classes as the trainer (DiffusionStep). Variants run interleaved in
one process, median and min over repeats; ratios against "knowledge off" (target <= 1.05).
"textual, on the fly" runs LAC / the English tagger on every caption of every step;
"textual, precomputed" reads key words from an annotation file written by
tools/extract_knowledge.py (done here once, untimed).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("GLOG_minloglevel", "2")

from ernie_vilg2.utils.cpu_report import machine_report  # noqa: E402
from ernie_vilg2.utils.cpu_tuning import tune_cpu_process  # noqa: E402

tune_cpu_process()  # before paddle's import, as the tools' processes

import numpy as np  # noqa: E402
import paddle  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build_step(cfg, dataset, vae, overrides):
    from ernie_vilg2.models.factory import build_denoiser, build_noise_scheduler, build_text_encoder_from_config
    from ernie_vilg2.text.tokenizer import build_tokenizer
    from ernie_vilg2.training.batches import LatentSource
    from ernie_vilg2.training.config import load_config
    from ernie_vilg2.training.diffusion_step import DiffusionStep, TimestepSampler
    from ernie_vilg2.training.knowledge import CaptionProcessor
    from ernie_vilg2.training.loop import build_optimizer
    from ernie_vilg2.training.modules import DiffusionTrainingModule

    cfg = load_config(cfg, overrides)
    paddle.seed(0)
    tokenizer = build_tokenizer(cfg.model.text_encoder.vocab_file, cfg.model.text_encoder.max_length)
    unet = build_denoiser(cfg.model, cfg.data.resolution)
    captions = CaptionProcessor(cfg, tokenizer)
    captions.install(unet, training=True)
    module = DiffusionTrainingModule(build_text_encoder_from_config(cfg.model, tokenizer), unet,
                                     build_noise_scheduler(cfg.model).alphas_cumprod)
    source = LatentSource(dataset, vae, 1.0, show_progress=False)
    step = DiffusionStep(cfg, source, captions, module, TimestepSampler(1000, cfg.model.num_experts),
                         cfg.train.batch_size)
    optimizer, _ = build_optimizer({n: p for n, p in module.named_parameters()}, cfg.train.base)

    def run(k: int) -> None:
        loss, _ = step(k, np.random.default_rng([0, 1, k]))
        loss.backward()
        optimizer.step()
        optimizer.clear_grad(set_to_zero=False)

    return run


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=os.path.join(REPO, "configs", "tiny.yaml"))
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args(argv)

    from ernie_vilg2.cli_utils import quiet_third_party_logs
    from ernie_vilg2.data import build_dataset
    from ernie_vilg2.knowledge.annotations import annotate_records
    from ernie_vilg2.knowledge.textual.analysis import TextAnalyzer
    from ernie_vilg2.models.factory import build_vae
    from ernie_vilg2.training.config import load_config

    quiet_third_party_logs()
    cfg = load_config(args.config)
    dataset = build_dataset(cfg.data)
    vae = build_vae(cfg.model.vae, cfg.data.resolution)  # untrained: only the cost matters here
    vae.eval()
    ann = os.path.join(tempfile.mkdtemp(), "annotations.jsonl")
    records = [{"index": r["index"], "caption": r["caption"], "image": r["image"]} for r in dataset.records]
    annotate_records(records, ann, TextAnalyzer(), progress=False)

    # Each variant says both switches: the config's own settings do not leak into the comparison.
    textual, no_textual = "textual_knowledge.enabled=true", "textual_knowledge.enabled=false"
    visual, no_visual = "visual_knowledge.enabled=true", "visual_knowledge.enabled=false"
    precomputed = f"textual_knowledge.annotations={ann}"
    variants = {
        "knowledge off": [no_textual, no_visual],
        "textual, on the fly": [textual, no_visual],
        "textual, precomputed": [textual, precomputed, no_visual],
        "visual (ground-truth boxes)": [no_textual, visual],
        "textual (precomputed) + visual": [textual, precomputed, visual],
    }
    runs = {name: build_step(args.config, dataset, vae, opts) for name, opts in variants.items()}
    times = {name: [] for name in runs}
    names = list(runs)
    for k in range(args.warmup + args.repeats):
        for j in range(len(names)):  # rotate the order so no variant always runs first
            name = names[(j + k) % len(names)]
            start = time.perf_counter()
            runs[name](k)
            if k >= args.warmup:
                times[name].append(time.perf_counter() - start)

    base_med = statistics.median(times["knowledge off"])
    base_min = min(times["knowledge off"])
    print(machine_report())
    print(f"# Knowledge overhead per training step ({os.path.relpath(args.config, REPO)}, batch "
          f"{cfg.train.batch_size}, {args.repeats} interleaved repeats, paddle {paddle.__version__}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})")
    print("| step | median (ms) | min (ms) | ratio median | ratio min |")
    print("|---|---:|---:|---:|---:|")
    for name in names:
        med, low = statistics.median(times[name]), min(times[name])
        print(f"| {name} | {med * 1e3:.1f} | {low * 1e3:.1f} | {med / base_med:.3f} | {low / base_min:.3f} |")
    print("target ratio <= 1.05; min ratios are steadier when other processes share the CPU.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
