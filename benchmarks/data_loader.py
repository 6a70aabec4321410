"""Loader speed and memory: samples/s from JPEG shards, the data wait of a shard-fed training
step, and the loader's peak RSS against the number of records.

    python benchmarks/data_loader.py            # about 6 minutes on 2 cores
    python benchmarks/data_loader.py --quick    # a smoke run
    python benchmarks/data_loader.py --parts speed --repeats 9 --workdir /tmp

Everything goes through the loader training uses: ``open_source`` and the trainer's
``StageBatches`` (shard plan + ``BatchLoader``; the training process converts each batch to
float pixels), and for the step the trainer's own ``DiffusionStep`` fed by ``StreamedLatents``
(the VAE encodes each batch). The data is written once, untimed, into a temporary folder (or
under ``--workdir``) and removed at the end:

- speed: shards in img2dataset's layout written by the project's ``ShardWriter``, photo-like
  images (smooth noise of several scales plus grain) stored as JPEG quality 90, 4:3, 1.2x the
  target resolution on the short side, so decoding, resizing and cropping are real work. For
  each data.resolution and data.num_workers, blocks of batches run interleaved (A B C A B C ...);
  the batches a block's workers had prefetched while other variants ran are taken before the
  clock starts. samples/s is the median over the blocks.
- wait: configs/tiny.yaml's base-stage step (text encoder, VAE encoding of the batch, U-Net
  forward/backward, AdamW; knowledge as the config has it but label enrichment, which needs a
  labels.json and has no boxes to use here) fed from the 256-px shards, blocks of
  steps interleaved over data.num_workers; the wait is what ``BatchLoader.get`` waited, the
  share is waits / step times of a block (median over blocks).
- rss: one pass over N records of 32-px samples, as shards and as a JSON-lines file (its
  offset index), each in a fresh process with data.num_workers 0 (the training process's own
  part); the peak RSS (VmHWM) of that process, after its imports and at the end.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("GLOG_minloglevel", "2")

from ernie_vilg2.utils.cpu_report import cpu_line  # noqa: E402
from ernie_vilg2.utils.cpu_tuning import tune_cpu_process  # noqa: E402
from ernie_vilg2.utils.process_memory import peak_rss_mib  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(REPO, "configs", "tiny.yaml")
PARTS = ("speed", "wait", "rss")
SPEEDUP_TARGET = 1.8  # 2 workers / 1
WAIT_TARGET = 0.05  # data wait / step, with workers
SCALE = 1.2  # stored short side / data.resolution
WAIT_RESOLUTION = 256  # the shards the tiny step reads: img2dataset's default image size
POOL = 24  # distinct images per data set (decoding costs the same for a repeated one)
CAPTIONS = [("一只猫坐在红色的沙发上", "a cat on a red sofa"),
            ("雪山下的湖面倒映着蓝天", "a lake below snowy mountains"),
            ("街角的咖啡店", "a coffee shop on a street corner"),
            ("一碗热腾腾的牛肉面", "a bowl of beef noodles"),
            ("夕阳下的海滩", "a beach at sunset"),
            ("雨中的黄色出租车", "a yellow taxi in the rain")]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a smoke run: tiny data, one block per variant")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="measurements to run (all)")
    p.add_argument("--config", default=DEFAULT_CONFIG, help="the training config of the wait part (configs/tiny.yaml)")
    p.add_argument("--workdir", help="folder the temporary data goes under (default: the system's temp folder)")
    p.add_argument("--resolutions", type=int, nargs="+", default=[256, 512], help="data.resolution of the speed part")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="data.num_workers compared")
    p.add_argument("--records", type=int, nargs="+", default=[10_000, 100_000], help="data set sizes of the rss part")
    p.add_argument("--repeats", type=int, help="blocks per variant (default 7, --quick 1)")
    p.add_argument("--batches", type=int, help="timed batches (speed) or steps (wait) per block (default 8, --quick 2)")
    p.add_argument("--batch-size", type=int, default=16, help="samples per batch (configs/tiny.yaml's 16)")
    args = p.parse_args(argv)
    if args.quick:
        args.records = [min(n, r) for n, r in zip(args.records, (500, 2_000))]
    args.repeats = args.repeats or (1 if args.quick else 7)
    args.batches = args.batches or (2 if args.quick else 8)
    for name, low in (("resolutions", 8), ("records", 8), ("workers", 0), ("repeats", 1), ("batches", 1),
                      ("batch_size", 1)):
        if min(np.atleast_1d(getattr(args, name))) < low:
            p.error(f"--{name.replace('_', '-')} must be >= {low}")
    if "wait" in args.parts and not os.path.isfile(args.config):
        p.error(f"--config {args.config}: not a file")
    return args


# -- data, written once ---------------------------------------------------------------------------
def photo_like(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """uint8 [height, width, 3]: smooth colour fields of three scales and sensor-like grain, so a
    JPEG of it has a photo's size and decoding cost (a flat image would cost far less)."""
    img = np.full((height, width, 3), 128.0, np.float32)
    for cells, amplitude in ((3, 70.0), (12, 35.0), (48, 15.0)):
        grid = rng.integers(0, 256, (cells, max(1, cells * width // height), 3), dtype=np.uint8)
        layer = np.asarray(Image.fromarray(grid).resize((width, height), Image.Resampling.BICUBIC), np.float32)
        img += (layer - 128.0) * (amplitude / 128.0)
    img += rng.normal(0.0, 4.0, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def image_pool(resolution: int, seed: int):
    """POOL JPEGs (quality 90), 4:3, the short side SCALE x ``resolution``."""
    rng = np.random.default_rng([seed, resolution])
    short = round(SCALE * resolution)
    pool = []
    for _ in range(POOL):
        out = io.BytesIO()
        Image.fromarray(photo_like(rng, short * 4 // 3, short)).save(out, format="JPEG", quality=90)
        pool.append(out.getvalue())
    return pool


def caption(i: int):
    zh, en = CAPTIONS[i % len(CAPTIONS)]
    return (zh, "zh") if i % 2 else (en, "en")


def write_shards(folder: str, images, num_samples: int, shard_size: int) -> str:
    """``num_samples`` samples cycling through ``images``, in img2dataset's layout."""
    from ernie_vilg2.data.shard_writer import ShardWriter, image_member

    os.makedirs(folder)
    members = [image_member(data) for data in images]
    writer = ShardWriter(folder, shard_size)
    for i in range(num_samples):
        text, lang = caption(i)
        writer.add(f"{i:09d}", members[i % len(members)], text, {"lang": lang})
    writer.close()
    return folder


def write_jsonl(folder: str, images, num_records: int) -> str:
    """train.jsonl of ``num_records`` records cycling through ``images`` (files beside it)."""
    os.makedirs(os.path.join(folder, "images"))
    for j, data in enumerate(images):
        with open(os.path.join(folder, "images", f"{j:03d}.jpg"), "wb") as f:
            f.write(data)
    with open(os.path.join(folder, "train.jsonl"), "w", encoding="utf-8") as f:
        for i in range(num_records):
            text, lang = caption(i)
            f.write(json.dumps({"image": f"images/{i % len(images):03d}.jpg", "caption": text, "lang": lang},
                               ensure_ascii=False) + "\n")
    return folder


# -- measurements ---------------------------------------------------------------------------------
def training_config(config: str, root: str, resolution=None):
    from ernie_vilg2.training.config import load_config

    # The samples have no boxes, so label enrichment (which needs a labels.json) would do nothing.
    overrides = [f"data.root={root}", "data.format=webdataset", "visual_knowledge.enrich_captions=false"]
    return load_config(config, overrides + ([f"data.resolution={resolution}"] if resolution else []))


def prefetched(workers: int, prefetch: int) -> int:
    """Batches a loader's workers can hold ready when a block starts: their queues plus the one
    each has in hand."""
    return workers * (prefetch + 1)


def interleaved_blocks(variants, repeats: int, run_block):
    """``run_block(variant)`` for each variant, ``repeats`` times, the order rotated each round
    (after one untimed round); {variant: [result, ...]}."""
    results = {v: [] for v in variants}
    for rep in range(repeats + 1):
        for j in range(len(variants)):
            v = variants[(j + rep) % len(variants)]
            result = run_block(v)
            if rep:
                results[v].append(result)
    return results


def measure_speed(args, config: str, roots) -> dict:
    """{(resolution, workers): [samples/s of each block]} through the trainer's StageBatches."""
    from ernie_vilg2.data.sources import open_source
    from ernie_vilg2.training.data_feed import StageBatches

    feeds, steps = {}, {}
    try:
        for res in args.resolutions:
            cfg = training_config(config, roots[res], res)
            source = open_source(cfg.data)
            for w in args.workers:
                feeds[res, w] = StageBatches(source, cfg, "bench", args.batch_size, num_workers=w)
                steps[res, w] = 0

        def block(v):
            feed = feeds[v]
            for _ in range(prefetched(v[1], feed.prefetch)):
                feed.get(steps[v])
                steps[v] += 1
            start = time.perf_counter()
            for _ in range(args.batches):
                feed.get(steps[v])
                steps[v] += 1
            return args.batches * args.batch_size / (time.perf_counter() - start)

        return interleaved_blocks(list(feeds), args.repeats, block)
    finally:
        for feed in feeds.values():
            feed.close(log=False)


def build_training_step(cfg, source, vae, batch_size: int, workers):
    """configs/tiny.yaml's base-stage step (as the trainer builds it) for each data.num_workers,
    sharing one model and optimizer: {workers: (step(k) -> seconds waited, its StageBatches)}."""
    import paddle

    from ernie_vilg2.models.factory import build_denoiser, build_noise_scheduler, build_text_encoder_from_config
    from ernie_vilg2.text.tokenizer import build_tokenizer
    from ernie_vilg2.training.batches import StreamedLatents
    from ernie_vilg2.training.data_feed import StageBatches
    from ernie_vilg2.training.diffusion_step import DiffusionStep, TimestepSampler
    from ernie_vilg2.training.knowledge import CaptionProcessor
    from ernie_vilg2.training.loop import build_optimizer
    from ernie_vilg2.training.modules import DiffusionTrainingModule

    paddle.seed(0)
    tokenizer = build_tokenizer(cfg.model.text_encoder.vocab_file, cfg.model.text_encoder.max_length)
    unet = build_denoiser(cfg.model, cfg.data.resolution)
    captions = CaptionProcessor(cfg, tokenizer)
    captions.install(unet, training=True)
    module = DiffusionTrainingModule(build_text_encoder_from_config(cfg.model, tokenizer), unet,
                                     build_noise_scheduler(cfg.model).alphas_cumprod)
    optimizer, _ = build_optimizer({n: p for n, p in module.named_parameters()}, cfg.train.base)
    timesteps = TimestepSampler(cfg.model.num_train_timesteps, cfg.model.num_experts)
    steps = {}
    for w in workers:
        batches = StageBatches(source, cfg, "base", batch_size, num_workers=w)
        diffusion_step = DiffusionStep(cfg, StreamedLatents(batches, vae, 1.0), captions, module, timesteps,
                                       batch_size)

        def run(k: int, diffusion_step=diffusion_step) -> float:
            loss, logs = diffusion_step(k, np.random.default_rng([0, k]))
            loss.backward()
            optimizer.step()
            optimizer.clear_grad(set_to_zero=False)
            return logs["data_wait_s"]

        steps[w] = (run, batches)
    return steps


def measure_wait(args, config: str, root: str) -> dict:
    """{workers: [(median step s, median wait s, wait share) of each block]}."""
    from ernie_vilg2.data.sources import open_source
    from ernie_vilg2.models.factory import build_vae

    cfg = training_config(config, root)
    vae = build_vae(cfg.model.vae, cfg.data.resolution)  # untrained: only its cost matters here
    vae.eval()
    steps = build_training_step(cfg, open_source(cfg.data), vae, args.batch_size, args.workers)
    position = {w: 0 for w in args.workers}
    try:
        def block(w):
            run, batches = steps[w]
            times, waits = [], []
            for i in range(prefetched(w, batches.prefetch) + args.batches):
                start = time.perf_counter()
                wait = run(position[w])
                position[w] += 1
                if i >= prefetched(w, batches.prefetch):
                    times.append(time.perf_counter() - start)
                    waits.append(wait)
            return statistics.median(times), statistics.median(waits), sum(waits) / sum(times)

        return interleaved_blocks(list(args.workers), args.repeats, block)
    finally:
        for _, batches in steps.values():
            batches.close(log=False)


def rss_child(root: str, records: int, resolution: int, batch_size: int) -> None:
    """In a fresh process: one pass over the ``records`` samples at ``root`` through the loader with
    0 workers; prints {"import_kib", "peak_kib"} (peak RSS after the imports, at the end)."""
    from ernie_vilg2.data.batch_plans import make_plan
    from ernie_vilg2.data.config import DataConfig
    from ernie_vilg2.data.loader import BatchLoader
    from ernie_vilg2.data.sources import open_source

    imported = peak_rss_mib() * 1024
    data = DataConfig(root=root, resolution=resolution)
    plan = make_plan(open_source(data), seed=0, rank=0, world=1, batch_size=batch_size, workers=0,
                     shuffle_buffer=data.shuffle_buffer)
    loader = BatchLoader(plan, 0, 0)
    for _ in range(-(-records // batch_size)):
        loader.get()
    loader.close()
    print(json.dumps({"import_kib": imported, "peak_kib": peak_rss_mib() * 1024}))


def measure_rss(root: str, records: int, resolution: int, batch_size: int) -> dict:
    """rss_child's numbers and its wall time, from a fresh interpreter."""
    code = (f"import sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); import data_loader; "
            f"data_loader.rss_child({root!r}, {records}, {resolution}, {batch_size})")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1800)
    if done.returncode:
        raise SystemExit(f"error: the rss child for {root} failed:\n{done.stderr[-2000:]}")
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "seconds": time.perf_counter() - start}


# -- the run --------------------------------------------------------------------------------------
def print_speed(args, speed, image_kib) -> None:
    pairs = list(zip(args.workers, args.workers[1:]))
    print(f"\n## Samples/s from JPEG shards (batch {args.batch_size}, median of {args.repeats} blocks of "
          f"{args.batches} batches)\n")
    print("| data.resolution | stored JPEG | " + " | ".join(f"{w} workers (samples/s)" for w in args.workers)
          + "".join(f" | {b} / {a} workers" for a, b in pairs) + " |")
    print("|---:|---|" + "---:|" * (len(args.workers) + len(pairs)))
    for res in args.resolutions:
        med = {w: statistics.median(speed[res, w]) for w in args.workers}
        short = round(SCALE * res)
        cells = [f"{med[w]:,.0f}" for w in args.workers]
        cells += [f"**{med[b] / med[a]:.2f}x**" for a, b in pairs]
        print(f"| {res} | {short * 4 // 3}x{short}, {image_kib[res]:.0f} KiB | " + " | ".join(cells) + " |")
    print(f"\ntarget: 2 workers >= {SPEEDUP_TARGET}x one worker. Load average after this part: "
          f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} cores.")


def print_wait(args, wait) -> None:
    print(f"\n## Data wait of a {os.path.relpath(args.config, REPO)} base-stage step fed from the "
          f"{WAIT_RESOLUTION}-px shards (median of {args.repeats} blocks of {args.batches} steps)\n")
    print("| data.num_workers | step (ms) | data wait (ms) | data wait / step |")
    print("|---:|---:|---:|---:|")
    for w in args.workers:
        blocks = wait[w]
        step, waited, share = (statistics.median(b[i] for b in blocks) for i in range(3))
        print(f"| {w} | {step * 1e3:.1f} | {waited * 1e3:.1f} | **{share:.1%}** |")
    print(f"\ntarget: data wait < {WAIT_TARGET:.0%} of the step with workers. Load average after this part: "
          f"{os.getloadavg()[0]:.2f}.")


def print_rss(rss) -> None:
    print("\n## Peak RSS of the loader process (one pass, 32-px samples, 0 workers, a fresh process each)\n")
    print("| source | records | peak RSS (MiB) | after imports (MiB) | peak - imports (MiB) | pass (s) |")
    print("|---|---:|---:|---:|---:|---:|")
    for (kind, n), r in rss.items():
        print(f"| {kind} | {n:,} | {r['peak_kib'] / 1024:.1f} | {r['import_kib'] / 1024:.1f} | "
              f"{(r['peak_kib'] - r['import_kib']) / 1024:.1f} | {r['seconds']:.1f} |")
    for kind in dict.fromkeys(k for k, _ in rss):
        sizes = sorted(n for k, n in rss if k == kind)
        low, high = rss[kind, sizes[0]]["peak_kib"], rss[kind, sizes[-1]]["peak_kib"]
        print(f"\n{kind}: peak RSS at {sizes[-1]:,} / at {sizes[0]:,} records: **{high / low:.2f}x** (target: flat)")


def run(args, work: str) -> None:
    start = time.time()
    shards = max(4 if args.quick else 8, max(args.workers))  # a worker reads shards of its own
    per_shard = 16 if args.quick else 64
    roots, image_kib = {}, {}
    resolutions = sorted(set(args.resolutions if "speed" in args.parts else [])
                         | ({WAIT_RESOLUTION} if "wait" in args.parts else set()))
    for res in resolutions:
        images = image_pool(res, seed=0)
        image_kib[res] = statistics.mean(len(b) for b in images) / 1024
        roots[res] = write_shards(os.path.join(work, f"shards-{res}"), images, shards * per_shard, per_shard)
    load = os.getloadavg()
    print("# Data loader: speed and memory\n")
    print(cpu_line())
    print(f"Load average at the start {load[0]:.2f}; shards of "
          f"{per_shard} samples written by ShardWriter (photo-like JPEGs, quality 90, short side {SCALE}x "
          f"data.resolution, 4:3), data.prefetch 2, data.shuffle_buffer 1000")
    if "speed" in args.parts:
        print_speed(args, measure_speed(args, args.config, roots), image_kib)
    if "wait" in args.parts:
        import paddle

        print(f"\n(paddle {paddle.__version__}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})")
        print_wait(args, measure_wait(args, args.config, roots[WAIT_RESOLUTION]))
    if "rss" in args.parts:
        small = image_pool(32, seed=1)
        rss = {}
        for n in args.records:
            folder = os.path.join(work, f"rss-{n}")
            shard_size = max(1, min(1000, n // 10))
            rss["webdataset shards", n] = measure_rss(write_shards(os.path.join(folder, "shards"), small, n,
                                                                   shard_size), n, 32, args.batch_size)
            jsonl = write_jsonl(os.path.join(folder, "jsonl"), small, n)
            rss["JSON lines (offset index)", n] = measure_rss(jsonl, n, 32, args.batch_size)
            shutil.rmtree(folder)
        print_rss(dict(sorted(rss.items())))
    print(f"\n(whole run: {time.time() - start:.0f} s; load average at the end {os.getloadavg()[0]:.2f})")


def main(argv=None) -> int:
    tune_cpu_process()  # as the training process does, before paddle's import
    args = parse_args(argv)
    from ernie_vilg2.cli_utils import quiet_third_party_logs

    quiet_third_party_logs()
    if args.workdir:
        os.makedirs(args.workdir, exist_ok=True)
    work = tempfile.mkdtemp(prefix="data-loader-bench-", dir=args.workdir)
    try:
        run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
