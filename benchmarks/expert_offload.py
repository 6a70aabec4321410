"""Sampling a bank of experts larger than memory: peak memory and time of a 10-expert
pipeline with and without expert offload, against one expert.

Each measurement runs in its own process (peak RSS = the process's high-water mark:
loading plus sampling), the variants interleaved A B C D A B C D. Every variant samples
the same images: the 10 experts are branched from one U-Net, so they equal the 1-expert
model (checked). Targets (issue 10): 10-expert peak memory <= 1.3x one expert, time <= 1.1x.

    python benchmarks/expert_offload.py                   # 10 experts of 8.6 M parameters, 64 px
    python benchmarks/expert_offload.py --channels 64 128 128 --steps 25 --sampler dpm --rounds 3

Rows:
  1 expert                 the baseline: one U-Net, in memory
  N experts, in memory     ErnieViLG2Pipeline.from_pretrained(folder)
  N experts, offload cpu   from_pretrained(folder, expert_offload="cpu"): on a CPU host and
                           device are one, so nothing moves (the row shows it costs nothing)
  N experts, offload disk  from_pretrained(folder, expert_offload="disk"): one expert in memory,
                           each read from the safetensors file when its timesteps come

``offload_rows(...)`` returns the rows and ``format_table(rows)`` prints them, for other
benchmarks (benchmarks/expert_parallel.py) to show the same rows.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence

from ernie_vilg2.utils.cpu_report import machine_report
from ernie_vilg2.utils.cpu_tuning import tune_cpu_process
from ernie_vilg2.utils.process_memory import peak_rss_mib

os.environ.setdefault("GLOG_minloglevel", "2")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEMORY_TARGET, TIME_TARGET = 1.3, 1.1
PROMPTS = ["红苹果", "a blue heart"]
VARIANTS = ("1 expert", "N experts, in memory", "N experts, offload cpu", "N experts, offload disk")


def _model_config(channels: Sequence[int], layers: int):
    """configs/tiny.yaml's text encoder and VAE (64 px -> 16x16 latents) with a larger U-Net,
    so that the experts' weights are most of what grows with N."""
    from ernie_vilg2.models.config import ModelConfig, TextEncoderConfig, UNetConfig, VAEConfig

    levels = len(channels)
    return ModelConfig(
        num_experts=1,
        text_encoder=TextEncoderConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                       intermediate_size=128, max_length=24),
        unet=UNetConfig(block_out_channels=list(channels), layers_per_block=layers, attention_head_dim=8,
                        norm_num_groups=32,
                        down_block_types=["CrossAttnDownBlock2D"] * (levels - 1) + ["DownBlock2D"],
                        up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * (levels - 1)),
        vae=VAEConfig(block_out_channels=[32, 64, 64], layers_per_block=1, latent_channels=4, norm_num_groups=8),
    )


def build_banks(workdir: str, experts: int, channels: Sequence[int], layers: int, resolution: int, seed: int = 0):
    """Save a 1-expert pipeline and its ``experts``-expert branch under ``workdir``; return
    (folder of 1, folder of N, parameters per expert)."""
    import paddle

    from ernie_vilg2.pipelines import branch_pipeline
    from ernie_vilg2.pipelines.building import build_pipeline

    paddle.seed(seed)
    one = build_pipeline(_model_config(channels, layers), resolution)
    per_expert = sum(int(p.size) for p in one.unet.parameters())
    folders = (os.path.join(workdir, "one"), os.path.join(workdir, f"bank{experts}"))
    one.save_pretrained(folders[0])
    branch_pipeline(one, experts).save_pretrained(folders[1])
    return folders[0], folders[1], per_expert


def _child(args) -> None:
    """One measurement: load, sample ``--runs`` + 1 times (the first untimed), print JSON."""
    from ernie_vilg2.cli_utils import quiet_third_party_logs

    quiet_third_party_logs()
    import numpy as np
    import paddle

    from ernie_vilg2.models.factory import build_sampler
    from ernie_vilg2.pipelines import ErnieViLG2Pipeline

    paddle.set_device("cpu")
    offload = {"cpu": "cpu", "disk": "disk"}.get(args.child.rsplit(" ", 1)[-1])
    start = time.perf_counter()
    pipe = ErnieViLG2Pipeline.from_pretrained(args.model, expert_offload=offload)
    load_s = time.perf_counter() - start
    pipe.scheduler = build_sampler(args.sampler, dict(pipe.scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    times, cpu_times = [], []
    for run in range(args.runs + 1):
        start, cpu_start = time.perf_counter(), time.process_time()
        images = pipe(PROMPTS, num_inference_steps=args.steps, guidance_scale=3.0, seed=0, output_type="np").images
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    np.save(args.images, images)
    stats = pipe.expert_offload.run if pipe.expert_offload is not None else None
    print(json.dumps({
        "peak_mib": peak_rss_mib(),
        "load_s": load_s, "run_s": statistics.median(times[1:]),
        "cpu_s": statistics.median(cpu_times[1:]),
        "loads": stats.loads if stats else 0, "switches": stats.switches if stats else 0,
        "load_seconds": stats.load_seconds if stats else 0.0,
    }))


def _measure(variant: str, folder: str, steps: int, sampler: str, runs: int, images: str) -> Dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", variant, "--model", folder, "--steps", str(steps),
           "--sampler", sampler, "--runs", str(runs), "--images", images]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{variant}: the measuring process failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def offload_rows(experts: int = 10, channels: Sequence[int] = (64, 128, 128), layers: int = 2,
                 resolution: int = 64, steps: int = 50, sampler: str = "ddim", rounds: int = 2, runs: int = 1,
                 workdir: Optional[str] = None, log=print) -> Dict:
    """Measure every variant ``rounds`` times, interleaved; return
    ``{"rows": [...], "settings": {...}}`` with medians and ratios to one expert."""
    import numpy as np

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        one, bank, per_expert = build_banks(tmp, experts, channels, layers, resolution)
        folder = {"1 expert": one}
        results: Dict[str, List[Dict]] = {v: [] for v in VARIANTS}
        for r in range(rounds):
            for v in VARIANTS:
                images = os.path.join(tmp, f"{VARIANTS.index(v)}.npy")
                results[v].append(_measure(v, folder.get(v, bank), steps, sampler, runs, images))
                log(f"round {r + 1}/{rounds}, {v.replace('N ', f'{experts} ')}: "
                    f"{results[v][-1]['peak_mib']:.0f} MiB, {results[v][-1]['run_s']:.2f} s per run "
                    f"({results[v][-1]['cpu_s']:.2f} s CPU)")
        first = np.load(os.path.join(tmp, "0.npy"))
        same = all(np.array_equal(first, np.load(os.path.join(tmp, f"{i}.npy"))) for i in range(len(VARIANTS)))
    base = {k: statistics.median(m[k] for m in results[VARIANTS[0]]) for k in ("peak_mib", "run_s", "cpu_s")}
    rows = []
    for v in VARIANTS:
        med = {k: statistics.median(m[k] for m in results[v]) for k in results[v][0]}
        rows.append({"variant": v.replace("N ", f"{experts} "), **med,
                     "memory_ratio": med["peak_mib"] / base["peak_mib"], "time_ratio": med["run_s"] / base["run_s"],
                     "cpu_ratio": med["cpu_s"] / base["cpu_s"]})
    settings = dict(experts=experts, params_per_expert=per_expert, mib_per_expert=per_expert * 4 / 2 ** 20,
                    channels=list(channels), layers=layers, resolution=resolution, steps=steps, sampler=sampler,
                    rounds=rounds, runs=runs, same_images=same)
    return {"rows": rows, "settings": settings}


def format_table(result: Dict) -> str:
    s = result["settings"]
    lines = [
        f"{s['experts']} experts of {s['params_per_expert']:,} parameters ({s['mib_per_expert']:.0f} MiB float32) "
        f"vs 1; {s['resolution']} px ({s['resolution'] // 4}x{s['resolution'] // 4} latents), batch "
        f"{len(PROMPTS)} with guidance, {s['sampler']} {s['steps']} steps; each cell the median of "
        f"{s['rounds']} processes (interleaved), a run = one sampling call (median of {s['runs']} after one "
        f"untimed); peak = the process's RSS high-water mark, loading included; CPU = the process's "
        f"CPU time for the run (what the run itself costs when other jobs share the cores); every variant "
        f"gave {'the same images' if s['same_images'] else 'DIFFERENT images'}.",
        "",
        "| variant | peak RSS (MiB) | vs 1 expert | CPU per run (s) | vs 1 expert | wall per run (s) | vs 1 expert "
        "| expert loads / switches per run | load time per run (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        flags = {k: "" if row[k] <= target else " (above target)" for k, target in
                 (("memory_ratio", MEMORY_TARGET), ("time_ratio", TIME_TARGET), ("cpu_ratio", TIME_TARGET))}
        lines.append(f"| {row['variant']} | {row['peak_mib']:.0f} | {row['memory_ratio']:.2f}x{flags['memory_ratio']} "
                     f"| {row['cpu_s']:.2f} | {row['cpu_ratio']:.2f}x{flags['cpu_ratio']} | {row['run_s']:.2f} | "
                     f"{row['time_ratio']:.2f}x{flags['time_ratio']} | {row['loads']:.0f} / {row['switches']:.0f} | "
                     f"{row['load_seconds']:.2f} |")
    lines.append(f"\nTargets: peak memory <= {MEMORY_TARGET}x and time <= {TIME_TARGET}x one expert.")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--experts", type=int, default=10, help="experts of the bank (must divide 1000)")
    p.add_argument("--channels", type=int, nargs="+", default=[64, 128, 128], help="U-Net block_out_channels")
    p.add_argument("--layers", type=int, default=2, help="U-Net layers_per_block")
    p.add_argument("--resolution", type=int, default=64, help="image size in pixels (multiple of 4)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--sampler", choices=("ddim", "dpm"), default="ddim")
    p.add_argument("--rounds", type=int, default=2, help="processes per variant, interleaved")
    p.add_argument("--runs", type=int, default=1, help="timed sampling calls per process (after one untimed)")
    p.add_argument("--workdir", help="where the banks are saved meanwhile (default: the system's temp folder)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON after the table")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--images", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for name in ("experts", "layers", "resolution", "steps", "rounds", "runs"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if 1000 % args.experts:
        p.error(f"--experts must divide the 1000 training timesteps, got {args.experts}")
    if args.resolution % 4:
        p.error(f"--resolution must be a multiple of 4 (the VAE factor), got {args.resolution}")
    return args


def main(argv=None) -> int:
    tune_cpu_process()
    args = parse_args(argv)
    if args.child:
        _child(args)
        return 0
    from ernie_vilg2.cli_utils import quiet_third_party_logs

    quiet_third_party_logs()
    result = offload_rows(args.experts, args.channels, args.layers, args.resolution, args.steps, args.sampler,
                          args.rounds, args.runs, args.workdir, log=lambda m: print(m, file=sys.stderr))
    print(machine_report())
    print("# Expert offload: sampling a bank larger than memory\n")
    print(format_table(result))
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
