"""Expert-parallel stage 2: step time and per-rank peak memory for 1, 2 and 4 ranks on CPU,
and the memory plan of the 24B config on 320 x 80 GB.

The trainer's own experts stage (``train.expert_parallel: true``) runs through
``python -m paddle.distributed.launch --nproc_per_node W`` for each W, rounds interleaved, on
one prepared run folder (VAE and base stages trained once, in-process). The global batch
stays the same, so each rank computes batch / W rows; with N experts and W ranks each rank
holds N / min(N, W) of them. Step time: median wall time between consecutive steps of rank 0
(all ranks wait for each other in the all-reduces). Memory: each rank's peak RSS at exit
(VmHWM), which includes the imports (about 0.4 GB) and the latent cache.

    python benchmarks/expert_parallel.py --rounds 2            # N=4, [128, 256] experts, batch 16
    python benchmarks/expert_parallel.py --ranks 1 2 --channels 64 128 --steps 6

On a 2-core machine 4 ranks share 2 cores: the rows show what each rank holds and how the
job scales on this CPU, not GPU speed-ups.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from ernie_vilg2.utils.cpu_report import machine_report
from ernie_vilg2.utils.cpu_tuning import tune_cpu_process
from ernie_vilg2.utils.process_memory import peak_rss_mib

os.environ.setdefault("GLOG_minloglevel", "2")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tiny.yaml")
CONFIG_24B = os.path.join(ROOT, "configs", "ernie_vilg2_24b.yaml")
MARK = "EP-BENCH "


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4], help="world sizes to compare (default 1 2 4)")
    p.add_argument("--experts", type=int, default=4, help="model.num_experts (default 4)")
    p.add_argument("--channels", type=int, nargs="+", default=[128, 256],
                   help="U-Net block_out_channels of each expert (default 128 256: 12.5 M parameters)")
    p.add_argument("--batch", type=int, default=16, help="global batch per step (default 16)")
    p.add_argument("--steps", type=int, default=8,
                   help="experts-stage steps per run (default 8); the first and the last (it saves) are not timed")
    p.add_argument("--rounds", type=int, default=1, help="runs per world size, interleaved (default 1)")
    p.add_argument("--timeout", type=int, default=900, help="seconds per launch (default 900)")
    p.add_argument("--no-plan", action="store_true", help="skip the 24B memory plan")
    p.add_argument("--no-offload", action="store_true",
                   help="skip the offloaded-sampling rows (benchmarks/expert_offload.py's defaults)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # one launched rank
    args, rest = p.parse_known_args(argv)
    if args.worker:
        return args, rest
    if rest:
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    for w in args.ranks:
        if w < 1 or args.batch % w:
            p.error(f"--ranks: {w} must be >= 1 and divide --batch {args.batch}")
    if args.steps < 3:
        p.error("--steps must be >= 3 (the first step is not timed)")
    return args, rest


def overrides(args, out_dir, data_dir):
    return {
        "train.output_dir": out_dir, "data.builtin.out_dir": data_dir,
        "data.builtin.num_scenes": 24, "data.builtin.num_val_scenes": 2,
        "model.num_experts": args.experts, "model.unet.block_out_channels": json.dumps(args.channels),
        "train.batch_size": args.batch, "train.vae.steps": 1, "train.base.steps": 1,
        "train.experts.steps": args.steps, "train.checkpoint_every": 100000, "train.log_every": 100000,
        "train.expert_parallel": "true", "sample.steps": 1, "sample.prompts": "[红苹果]",
    }


# -- one launched rank ---------------------------------------------------------------------------------
def worker(rest) -> int:
    """tools/train.py with a clock on the experts stage's steps; prints the rank's numbers at exit."""
    import atexit

    sys.path.insert(0, os.path.join(ROOT, "tools"))  # tools/train.py as a module
    import paddle.distributed as dist

    from ernie_vilg2.training.loop import Trainer

    stamps, held = [], {}
    init = Trainer.__init__

    def timed_init(self, *a, **kw):
        init(self, *a, **kw)
        if self.settings.stage == "experts":
            held["parameters"] = sum(int(p.size) for n, p in self.module.named_parameters() if n.startswith("unet."))
            on_step = self.on_step

            def clock(step):
                stamps.append(time.perf_counter())
                if on_step is not None:
                    on_step(step)

            self.on_step = clock

    Trainer.__init__ = timed_init

    def report():
        steps = [b - a for a, b in zip(stamps, stamps[1:])]
        print(MARK + json.dumps({"rank": dist.get_rank(), "world": dist.get_world_size(),
                                 "step_s": statistics.median(steps[:-1] or steps) if steps else None,
                                 "maxrss": peak_rss_mib() * 2**20, **held}),
              file=sys.stderr, flush=True)

    atexit.register(report)
    import train

    return train.main(rest)


# -- the driver ---------------------------------------------------------------------------------------
def prepare(args, root: str) -> str:
    """VAE and base stages of the benchmark model, once (in-process)."""
    from ernie_vilg2.training.config import load_config
    from ernie_vilg2.training.runner import run_training

    opts = overrides(args, os.path.join(root, "prepared"), os.path.join(root, "data"))
    opts["train.stages"] = "[vae, base]"
    run_training(load_config(TINY, [f"{k}={v}" for k, v in opts.items()]))
    return os.path.join(root, "prepared")


def run_world(args, root: str, prepared: str, world: int, round_: int) -> list:
    out = os.path.join(root, f"w{world}-r{round_}")
    os.makedirs(out)
    for stage in ("vae", "base"):
        shutil.copytree(os.path.join(prepared, stage), os.path.join(out, stage))
    cli = []
    for k, v in overrides(args, out, os.path.join(root, "data")).items():
        cli += ["-o", f"{k}={v}"]
    log_dir = out + "-log"
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", str(world), "--log_dir", log_dir,
           os.path.abspath(__file__), "--worker", "--config", TINY, "--resume", "--stage", "experts", *cli]
    proc = subprocess.run(cmd, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=args.timeout)
    logs = "".join(open(p, errors="replace").read() for p in sorted(glob.glob(os.path.join(log_dir, "workerlog.*"))))
    rows = [json.loads(line[len(MARK):]) for line in logs.splitlines() if line.startswith(MARK)]
    if proc.returncode != 0 or len(rows) != world:
        raise SystemExit(f"error: {world} ranks failed (exit {proc.returncode}); logs in {log_dir}:\n{logs[-2000:]}")
    return rows


def main(argv=None) -> int:
    tune_cpu_process()
    args, rest = parse_args(argv)
    if args.worker:
        return worker(rest)
    from ernie_vilg2.cli_utils import quiet_third_party_logs

    quiet_third_party_logs()
    root = tempfile.mkdtemp(prefix="expert_parallel_bench.")
    try:
        prepared = prepare(args, root)
        results = {w: [] for w in args.ranks}
        for round_ in range(args.rounds):
            for w in args.ranks:  # interleaved
                t0 = time.time()
                results[w].append(run_world(args, root, prepared, w, round_))
                print(f"round {round_ + 1}: {w} rank(s) in {time.time() - t0:.0f} s", file=sys.stderr)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print_table(args, results)
    if not args.no_plan:
        print_plan()
    if not args.no_offload:  # the sampling side of the same layout: one expert in memory
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from expert_offload import format_table, offload_rows

        print("\nSampling the bank with expert offload (benchmarks/expert_offload.py):\n")
        print(format_table(offload_rows(log=lambda line: print(line, file=sys.stderr))))
    return 0


def print_table(args, results) -> None:
    n = args.experts
    base = None
    print(machine_report())
    print(f"\nExpert-parallel experts stage on CPU: N={n} experts of {args.channels} channels, global batch "
          f"{args.batch}, median of {args.steps - 2} steps x {args.rounds} round(s); RSS = peak per rank\n")
    print("| ranks | groups x ranks | experts per rank | U-Net parameters per rank | step (ms) | step vs 1 rank "
          "| peak RSS per rank, max (MiB) | RSS vs 1 rank |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for w, runs in results.items():
        groups = min(n, w)
        step = statistics.median(r["step_s"] for run in runs for r in run if r["rank"] == 0)
        rss = max(r["maxrss"] for run in runs for r in run)
        params = runs[0][0]["parameters"]
        base = base or (step, rss)
        print(f"| {w} | {groups} x {w // groups} | {n // groups} | {params:,} | {step * 1e3:.0f} | "
              f"{step / base[0]:.2f}x | {rss / 2**20:.0f} | {rss / base[1]:.2f}x |")


def print_plan() -> None:
    from ernie_vilg2.planning.memory_plan import build_plan, default_layout, format_plan
    from ernie_vilg2.training.config import load_config

    cfg = load_config(CONFIG_24B)
    print()
    print(format_plan(build_plan(cfg, default_layout(cfg, 320, 80), config_path="configs/ernie_vilg2_24b.yaml")))


if __name__ == "__main__":
    sys.exit(main())
