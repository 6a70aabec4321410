"""Full vs LoRA experts (model.expert_type: lora) at N = 10: parameters, peak training memory,
step time, and (from an ablation run) the quality after the same number of steps.

Each (config, variant) is measured in a fresh process (peak RSS is per process), the two
variants alternating A B A B over --rounds; the table gives medians and LoRA/full ratios.
Both banks branch from the same U-Net; the text context is random (the text encoder is frozen
in stage 2 and the same for both), the optimizer is the trainer's (AdamW, global-norm
clipping, gradients of idle experts left unset).

    python benchmarks/lora_experts.py                          # tiny and 32x32, 2 rounds
    python benchmarks/lora_experts.py --configs tiny --rounds 3 --threads 2
    python benchmarks/lora_experts.py --configs tiny --quality output/ablation/results.json

Rows: ``train, mixed timesteps`` (one worker trains all experts: a full bank runs one U-Net per
expert present in the batch, the LoRA bank runs its base once with an adapter per row);
``train, one stage`` (every row from one expert's stage, as expert-parallel workers train);
``sample, CFG step`` (one denoising step, one expert, the LoRA adapters unmerged).
--quality reads results.json of ``benchmarks/ablation.py --variants e f`` (e: full experts,
f: LoRA experts, same steps and seeds) and adds FID and the composition score.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from ernie_vilg2.utils.cpu_report import machine_report
from ernie_vilg2.utils.process_memory import peak_rss_mib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGETS = {"params": 1.15, "train, mixed timesteps": 1.1}
TINY_YAML = os.path.join(ROOT, "configs", "tiny.yaml")
# The 32x32 U-Net of benchmarks/vs_pytorch.py (3 levels at 32x32 latents), train batch 8, sampling batch 4.
UNET_32 = dict(sample_size=32, in_channels=4, out_channels=4,
               down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
               up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
               block_out_channels=[64, 128, 128], layers_per_block=2, attention_head_dim=8,
               norm_num_groups=32, cross_attention_dim=64)
CONFIGS = {"tiny": dict(batch=16, sample_batch=32, text_length=24, steps=5),
           "32x32": dict(unet=UNET_32, batch=8, sample_batch=4, text_length=24, steps=2)}
ROWS = ("train, mixed timesteps", "train, one stage", "sample, CFG step")
VARIANTS = ("full", "lora")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS),
                   help="configs to time (none: only --quality)")
    p.add_argument("--experts", type=int, default=10, help="N (must divide 1000)")
    p.add_argument("--rank", type=int, default=4, help="LoRA rank (model.lora.rank)")
    p.add_argument("--rounds", type=int, default=2, help="A B rounds (a fresh process per variant and round)")
    p.add_argument("--steps", type=int, help="timed steps per row and process (default: 5 tiny, 2 32x32)")
    p.add_argument("--threads", type=int, default=1, help="OMP/MKL threads of the measured processes")
    p.add_argument("--quality", metavar="RESULTS_JSON", help="results.json of benchmarks/ablation.py --variants e f")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # "config:variant": one measurement, JSON on stdout
    args = p.parse_args(argv)
    if args.experts < 1 or 1000 % args.experts:
        p.error(f"--experts must divide 1000, got {args.experts}")
    for name in ("rank", "rounds", "steps", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name} must be >= 1, got {value}")
    if args.quality and not os.path.isfile(args.quality):
        p.error(f"--quality: file not found: {args.quality}")
    return args


def _unet(name: str):
    from ppdiffusers import UNet2DConditionModel

    if name == "tiny":
        from ernie_vilg2.config import from_dict, read_yaml
        from ernie_vilg2.models.config import ModelConfig
        from ernie_vilg2.models.factory import unet_kwargs

        raw = read_yaml(TINY_YAML)
        cfg = from_dict(ModelConfig, raw["model"], "model")
        return UNet2DConditionModel(**unet_kwargs(cfg, raw["data"]["resolution"] // cfg.vae.scale_factor))
    return UNet2DConditionModel(**CONFIGS[name]["unet"])


def measure(name: str, variant: str, experts: int, rank: int, steps: int) -> dict:
    """Build one bank of ``experts`` from a fresh U-Net, train and sample it; times and memory."""
    import numpy as np
    import paddle

    from ernie_vilg2.models.expert_bank import MixtureOfDenoisingExperts
    from ernie_vilg2.models.lora_experts import LoRAExperts
    from ernie_vilg2.models.speedups import apply_speedups

    paddle.seed(0)
    unet = _unet(name)
    one_unet = sum(int(p.numel()) for p in unet.parameters())
    if variant == "lora":
        bank = LoRAExperts.from_unet(unet, experts, lora_rank=rank)
    else:
        bank = MixtureOfDenoisingExperts.from_unet(unet, experts)
    del unet
    bank = apply_speedups(bank)
    trainable = [p for p in bank.parameters() if not p.stop_gradient]
    optimizer = paddle.optimizer.AdamW(learning_rate=1e-4, parameters=trainable, weight_decay=0.01,
                                       grad_clip=paddle.nn.ClipGradByGlobalNorm(1.0))
    spec = CONFIGS[name]
    cfg = bank.base.config if variant == "lora" else bank.experts[0].config
    shape = [spec["batch"], cfg.in_channels, cfg.sample_size, cfg.sample_size]
    rng = np.random.default_rng(0)
    stage = 1000 // experts

    def tensor(*dims):
        return paddle.to_tensor(rng.standard_normal(dims).astype("float32"))

    def train_step(timesteps) -> float:
        x, noise = tensor(*shape), tensor(*shape)
        context = tensor(shape[0], spec["text_length"], cfg.cross_attention_dim)
        loss = paddle.nn.functional.mse_loss(bank(x, paddle.to_tensor(timesteps, dtype="int64"), context).sample, noise)
        loss.backward()
        optimizer.step()
        optimizer.clear_grad(set_to_zero=False)  # as the trainer: idle experts are not updated
        return float(loss)

    def sample_step(t) -> float:
        with paddle.no_grad():
            x = tensor(2 * spec["sample_batch"], *shape[1:])
            context = tensor(2 * spec["sample_batch"], spec["text_length"], cfg.cross_attention_dim)
            uncond, text = bank(x, paddle.to_tensor([t]), context).sample.chunk(2)
            return float((uncond + 3.0 * (text - uncond)).mean())

    draws = {"train, mixed timesteps": lambda: rng.integers(0, 1000, shape[0]).tolist(),
             "train, one stage": lambda: (int(rng.integers(0, experts)) * stage
                                          + rng.integers(0, stage, shape[0])).tolist()}
    bank.train()
    for e in range(experts):  # every expert's optimizer state exists before timing
        train_step([e * stage] * shape[0])
    times = {}
    for row in ROWS[:2]:
        train_step(draws[row]())
        times[row] = []
        for _ in range(steps):
            start = time.perf_counter()
            train_step(draws[row]())
            times[row].append(time.perf_counter() - start)
    peak_train = peak_rss_mib()
    bank.eval()
    sample_step(500)
    times[ROWS[2]] = []
    for _ in range(steps):
        start = time.perf_counter()
        sample_step(int(rng.integers(0, 1000)))
        times[ROWS[2]].append(time.perf_counter() - start)
    return {"params": sum(int(p.numel()) for p in bank.parameters()), "trainable": sum(int(p.numel()) for p in trainable),
            "one_unet": one_unet, "peak_train_mib": peak_train, "times": times}


def _worker(args) -> int:
    from ernie_vilg2.cli_utils import quiet_third_party_logs
    from ernie_vilg2.utils.cpu_tuning import tune_cpu_process

    tune_cpu_process()
    quiet_third_party_logs()
    name, variant = args.worker.split(":")
    steps = args.steps or CONFIGS[name]["steps"]
    print(json.dumps(measure(name, variant, args.experts, args.rank, steps)))
    return 0


def _run_worker(args, name: str, variant: str) -> dict:
    threads = str(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "GLOG_minloglevel": "2",
           "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", f"{name}:{variant}", "--experts", str(args.experts),
           "--rank", str(args.rank)] + (["--steps", str(args.steps)] if args.steps else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"error: {name} {variant} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _speed_table(args, results) -> None:
    print(f"# Full vs LoRA experts, N = {args.experts}, rank {args.rank}\n")
    print(machine_report())
    print(f"{args.threads} thread(s); {args.rounds} rounds of fresh processes, A B interleaved; "
          "times are medians over rounds and steps\n")
    print("| config | quantity | full | LoRA | LoRA / full | target |")
    print("|---|---|---:|---:|---:|---|")
    for name in args.configs:
        full, lora = results[(name, "full")][0], results[(name, "lora")][0]
        one = full["one_unet"]
        print(f"| {name} | parameters (one U-Net: {one:,}) | {full['params']:,} ({full['params'] / one:.2f}x) | "
              f"{lora['params']:,} ({lora['params'] / one:.2f}x) | {lora['params'] / full['params']:.3f} | "
              f"LoRA <= {TARGETS['params']}x one U-Net: {'met' if lora['params'] / one <= TARGETS['params'] else 'NOT met'} |")
        print(f"| {name} | trained parameters | {full['trainable']:,} | {lora['trainable']:,} | "
              f"{lora['trainable'] / full['trainable']:.3f} | |")
        peak = {v: statistics.median(r["peak_train_mib"] for r in results[(name, v)]) for v in VARIANTS}
        print(f"| {name} | peak RSS while training (MiB) | {peak['full']:.0f} | {peak['lora']:.0f} | "
              f"{peak['lora'] / peak['full']:.2f} | |")
        for row in ROWS:
            med = {v: statistics.median(t for r in results[(name, v)] for t in r["times"][row]) for v in VARIANTS}
            ratio = med["lora"] / med["full"]
            target = TARGETS.get(row)
            verdict = "" if target is None else f"<= {target}: {'met' if ratio <= target else 'NOT met'}"
            print(f"| {name} | {row} (ms) | {med['full'] * 1e3:.1f} | {med['lora'] * 1e3:.1f} | {ratio:.2f} | "
                  f"{verdict} |")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        return _worker(args)
    results = {(c, v): [] for c in args.configs for v in VARIANTS}
    for rnd in range(args.rounds):
        for name in args.configs:
            for variant in (VARIANTS if rnd % 2 == 0 else VARIANTS[::-1]):
                print(f"round {rnd + 1}/{args.rounds}: {name} {variant} ...", file=sys.stderr, flush=True)
                results[(name, variant)].append(_run_worker(args, name, variant))

    if args.configs:
        _speed_table(args, results)
    if args.quality:
        from ablation import comparison_table, table

        with open(args.quality, encoding="utf-8") as f:
            runs = json.load(f)["runs"]
        if not {"e", "f"} <= {r["variant"] for r in runs if "report" in r}:
            raise SystemExit(f"error: --quality: {args.quality} needs evaluated runs of variants e and f")
        print("\n" + table(runs, ["e", "f"]) + "\n\n" + comparison_table(runs, [("e", "f")]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
