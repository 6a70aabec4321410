"""Peer benchmark: the same U-Net (or whole model) in PPDiffusers/Paddle and diffusers/PyTorch.

Builds one U-Net config in both (Paddle initialises it, the weights are copied across),
prints how far their outputs are apart, then times, in separate processes that take turns
(A B C, A B C, ...): a training step (forward + MSE loss + backward + AdamW) and a sampling
step with classifier-free guidance (U-Net on the doubled batch + guidance + DDIM step).
The ``tiny-pipeline`` config times the whole model instead (benchmarks/peer_pipeline.py): our
stage-1 training step (ERNIE + expert U-Net + clipped AdamW, as tools/train.py) against the same
with transformers' BertModel holding ERNIE's weights, and ErnieViLG2Pipeline's 25-step DDIM
sampling with CFG and VAE decode against that loop in diffusers.
Paddle runs as PPDiffusers comes (``stock``: its ``AttnProcessor``, MKL's own CPU dispatch)
and as the project runs it (``fast``: ``FastAttnProcessor`` with the C++ CPU attention
operator, the faster layers of models/fast_layers.py with the C++ convolution operator, MKL's
AVX2 path on AMD CPUs, glibc keeping freed memory); ``--variants`` adds
the steps in between (``stock-avx2``: only the MKL setting; ``fast-paddle``: all but the C++
operators), ``fast-lean`` (``fast`` with glibc mapping each tensor from the OS and handing
it back when freed: least memory, slower) and ``fast-program`` (``fast``, sampling through the
U-Net's exported program with the C++ operators in a Paddle Inference predictor, as the
deployment runners sample; U-Net configs). Peak memory is each process's VmHWM; its import
alone is in the "import" column.

    make bench-peer                                     # creates .venv-peer, runs the defaults
    python benchmarks/vs_pytorch.py --configs tiny --threads 1 --rounds 3
    python benchmarks/vs_pytorch.py --peer-python .venv-peer/bin/python --configs 32x32
    python benchmarks/vs_pytorch.py --configs tiny-pipeline --threads 1 --rounds 2

Configs: ``tiny`` is configs/tiny.yaml's expert U-Net (8x8 latents, train batch 16,
sampling batch 32 = 64 U-Net rows with CFG); ``32x32`` is a 3-level U-Net at 32x32
latents (64/128/128 channels, 2 layers per block, 8 heads; train batch 8, sampling batch
4); ``tiny-pipeline`` is configs/tiny.yaml's whole model, randomly initialised (ERNIE, VAE,
10 experts; train batch 16, its 8 sample prompts). The peer venv holds requirements/peer.txt
(torch CPU wheel + diffusers + transformers), never the project's venv.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

import numpy as np

from peer_worker import PADDLE_VARIANTS, variant_environment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "benchmarks", "peer_worker.py")
DEFAULT_PEER = os.path.join(ROOT, ".venv-peer", "bin", "python")

SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                 clip_sample=False, set_alpha_to_one=False)
CONFIGS = {
    "tiny": dict(config=os.path.join(ROOT, "configs", "tiny.yaml"), batch=16, sample_batch=32, steps=5),
    "32x32": dict(
        unet=dict(sample_size=32, in_channels=4, out_channels=4,
                  down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
                  up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
                  block_out_channels=[64, 128, 128], layers_per_block=2, attention_head_dim=8,
                  norm_num_groups=32, cross_attention_dim=64),
        text_length=24, batch=8, sample_batch=4, steps=1),
    # Timed per turn: 5 training steps, or 1 whole sampling run (25 steps + decode).
    "tiny-pipeline": dict(pipeline=os.path.join(ROOT, "configs", "tiny.yaml"), steps=dict(train=5, sample=1)),
}
# What each agreement line compares, by (U-Net or whole model, mode).
CHECKED = {("unet", "train"): "U-Net output", ("unet", "sample"): "one CFG + DDIM step",
           ("pipeline", "train"): "text-encoder output", ("pipeline", "sample"): "images, 25 steps + VAE decode"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="+", default=["tiny", "32x32", "tiny-pipeline"], choices=sorted(CONFIGS))
    p.add_argument("--modes", nargs="+", default=["train", "sample"], choices=("train", "sample"))
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--variants", nargs="+", default=["stock", "fast"],
                   choices=list(PADDLE_VARIANTS),
                   help="Paddle variants to time (see above)")
    p.add_argument("--rounds", type=int, default=3, help="turns per process (A B C x rounds)")
    p.add_argument("--steps", type=int, help="timed steps per turn (default: 5 tiny, 1 32x32; tiny-pipeline: "
                                             "5 training steps, 1 sampling run)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per process first")
    p.add_argument("--peer-python", default=DEFAULT_PEER,
                   help="python of the peer venv (torch + diffusers + transformers; default .venv-peer/bin/python)")
    p.add_argument("--keep", help="folder for weights, inputs, outputs and worker logs (default: a temp dir)")
    args = p.parse_args(argv)
    for name in ("rounds", "steps"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    if args.warmup < 1:
        p.error("--warmup must be >= 1 (the first step builds caches)")
    if any(t < 1 for t in args.threads):
        p.error("--threads must be >= 1")
    if not os.path.isfile(args.peer_python):
        p.error(f"--peer-python: {args.peer_python} not found; `make bench-peer` creates .venv-peer "
                f"from requirements/peer.txt")
    if "fast-program" in args.variants and any("pipeline" in CONFIGS[c] for c in args.configs):
        p.error("--variants fast-program: U-Net configs only (the whole model's exported pipeline: "
                "benchmarks/deploy_speed.py)")
    if any("pipeline" in CONFIGS[c] for c in args.configs) and not peer_has(args.peer_python, "transformers"):
        p.error(f"--peer-python: {args.peer_python} has no transformers (the pipeline configs' BERT); "
                f"install requirements/peer.txt into that venv")
    return args


def peer_has(python: str, module: str) -> bool:
    """Whether the peer venv can import ``module`` (found, not imported)."""
    probe = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
    return subprocess.run([python, "-c", probe], capture_output=True).returncode == 0


def resolve_unet(cfg: dict) -> tuple:
    """UNet kwargs and text length: from a project YAML (the expert U-Net) or given."""
    if "unet" in cfg:
        return cfg["unet"], cfg["text_length"]
    from ernie_vilg2.config import from_dict, read_yaml
    from ernie_vilg2.models.config import ModelConfig

    raw = read_yaml(cfg["config"])
    model = from_dict(ModelConfig, raw["model"], "model")
    latent = raw["data"]["resolution"] // model.vae.scale_factor
    u = model.unet
    # The keyword set of ernie_vilg2.models.factory.unet_kwargs (which needs ppdiffusers).
    unet = dict(sample_size=latent, in_channels=model.vae.latent_channels, out_channels=model.vae.latent_channels,
                down_block_types=list(u.down_block_types), up_block_types=list(u.up_block_types),
                block_out_channels=list(u.block_out_channels), layers_per_block=u.layers_per_block,
                attention_head_dim=u.attention_head_dim, norm_num_groups=u.norm_num_groups,
                cross_attention_dim=model.text_encoder.hidden_size)
    return unet, model.text_encoder.max_length


class Worker:
    """One benchmark process: started, then driven over stdin/stdout."""

    def __init__(self, python, spec_path, framework, mode, variant, threads, out):
        self.label = "torch" if framework == "torch" else f"paddle-{variant}"
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), GLOG_minloglevel="2")
        if framework == "paddle":
            env.update(variant_environment(variant))
        self.log_path = os.path.join(out, f"log-{self.label}-{mode}-{threads}.txt")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [python, WORKER, "run", spec_path, "--framework", framework, "--mode", mode, "--variant", variant,
             "--out", out],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, env=env, cwd=ROOT)
        self.times = []

    def expect(self, word):
        for line in self.proc.stdout:
            if line.startswith(word + " "):
                return json.loads(line[len(word) + 1:])
        self.log.flush()
        with open(self.log_path) as f:
            tail = f.read()[-3000:]
        raise SystemExit(f"error: {self.label} worker exited (status {self.proc.wait()}); log {self.log_path}:\n{tail}")

    def run(self, steps):
        self.proc.stdin.write(f"run {steps}\n")
        self.proc.stdin.flush()
        self.times += self.expect("TIMES")

    def finish(self):
        self.proc.stdin.write("quit\n")
        self.proc.stdin.flush()
        done = self.expect("DONE")
        self.proc.wait()
        self.log.close()
        return done


def init_config(name, cfg, out, args):
    common = dict(seed=0, warmup=args.warmup, weights=os.path.join(out, f"{name}-weights.npz"),
                  inputs=os.path.join(out, f"{name}-inputs.npz"))
    if "pipeline" in cfg:  # the worker's init adds the sizes and settings from the YAML
        spec = dict(pipeline=dict(config=cfg["pipeline"], folder=os.path.join(out, f"{name}-pipeline"),
                                  base_unet=os.path.join(out, f"{name}-base-unet")), **common)
    else:
        unet, text_length = resolve_unet(cfg)
        spec = dict(unet=unet, text_length=text_length, batch=cfg["batch"], sample_batch=cfg["sample_batch"],
                    scheduler=SCHEDULER, lr=1e-4, weight_decay=0.01, sample_steps=25, guidance=3.0, **common)
    spec_path = os.path.join(out, f"{name}-spec.json")
    with open(spec_path, "w") as f:
        json.dump(spec, f)
    env = dict(os.environ, GLOG_minloglevel="2")
    log_path = os.path.join(out, f"log-{name}-init.txt")
    with open(log_path, "w") as log:
        status = subprocess.run([sys.executable, WORKER, "init", spec_path], env=env, cwd=ROOT, stderr=log).returncode
    if status:
        with open(log_path) as f:
            raise SystemExit(f"error: building {name} failed (status {status}); log {log_path}:\n{f.read()[-3000:]}")
    with open(spec_path) as f:
        spec = json.load(f)  # with what the init added
    n_params = sum(v.size for v in np.load(spec["weights"]).values())
    return spec_path, spec, n_params


def run_cell(spec_path, mode, threads, steps, args, out):
    workers = []
    try:
        for v in args.variants:
            workers.append(Worker(sys.executable, spec_path, "paddle", mode, v, threads, out))
        workers.append(Worker(args.peer_python, spec_path, "torch", mode, "default", threads, out))
        ready = {w.label: w.expect("READY") for w in workers}
        for _ in range(args.rounds):
            for w in workers:
                w.run(steps)
        done = {w.label: w.finish() for w in workers}
    finally:  # an error or Ctrl-C: no worker left warming up on the shared CPU
        for w in workers:
            if w.proc.poll() is None:
                w.proc.kill()
    return workers, ready, done


def fmt_ms(seconds):
    return f"{seconds * 1e3:,.0f}" if seconds >= 0.1 else f"{seconds * 1e3:.1f}"


def print_gflops(rows, flops, labels):
    """Achieved GFLOP/s of each U-Net row and its share of the float32 peak of the cores used
    (flops counted from the layer shapes by the init: benchmarks/flop_count.py)."""
    from ernie_vilg2.utils import cpu_report

    peak = cpu_report.core_peak_gflops()
    counted = [row for row in rows if flops.get(row[:2])]
    if not counted:
        return
    print()
    print(f"Achieved GFLOP/s (convolutions, linear layers and attention products; training step = 3x the "
          f"forward) and share of the float32 peak of the cores used ({peak or 0:,.1f} GFLOP/s per core):")
    print("| config | step | threads | GFLOP | " + " | ".join(f"{lab} GFLOP/s (peak)" for lab in labels) + " |")
    print("|---|---|---:|---:|" + "---:|" * len(labels))
    for name, step_name, threads, med, *_ in counted:
        count = flops[name, step_name]
        cells = [name, step_name, str(threads), f"{count / 1e9:,.1f}"]
        for lab in labels:
            rate = count / med[lab] / 1e9
            cells.append(f"{rate:,.1f} ({rate / (peak * threads):.1%})" if peak else f"{rate:,.1f}")
        print("| " + " | ".join(cells) + " |")


def main(argv=None):
    args = parse_args(argv)
    out = args.keep or tempfile.mkdtemp(prefix="vs_pytorch_")
    os.makedirs(out, exist_ok=True)
    labels = [f"paddle-{v}" for v in args.variants]
    rows, checks, flops = [], [], {}
    for name in args.configs:
        cfg = CONFIGS[name]
        spec_path, spec, n_params = init_config(name, cfg, out, args)
        print(f"# {name}: {n_params:,} parameters", file=sys.stderr, flush=True)
        kind = "pipeline" if "pipeline" in cfg else "unet"
        for mode in args.modes:
            steps = args.steps or (cfg["steps"][mode] if isinstance(cfg["steps"], dict) else cfg["steps"])
            # A pipeline's sampling "step" is a whole run.
            step_name = f"sample {spec['sample_steps']} steps" if (kind, mode) == ("pipeline", "sample") else mode
            for threads in args.threads:
                workers, ready, done = run_cell(spec_path, mode, threads, steps, args, out)
                med = {w.label: statistics.median(w.times) for w in workers}
                peak = {k: v["peak_rss_mib"] for k, v in done.items()}
                ref = np.load(os.path.join(out, f"check-torch-default-{mode}.npy"))
                diffs = {lab: float(np.abs(np.load(os.path.join(out, f"check-{lab}-{mode}.npy")) - ref).max())
                         for lab in labels}
                rows.append((name, step_name, threads, med, peak, ready))
                flops[name, step_name] = spec.get("flops", {}).get(mode)
                checks.append((name, CHECKED[kind, mode], mode, threads, diffs, ready))
                print(f"# {name} {mode} {threads} thread(s): " + ", ".join(
                    f"{k} {fmt_ms(v)} ms" for k, v in med.items()), file=sys.stderr, flush=True)

    from ernie_vilg2.utils import cpu_report

    print(cpu_report.cpu_line())
    code_paths = {}
    for *_, ready in rows:
        for label, info in ready.items():
            code_paths.setdefault(label, info["code_path"])
    for label, path in code_paths.items():
        print(f"- {label}: {path}")
    print()
    head = ["config", "step", "threads"] + [f"{lab} (ms)" for lab in labels] + ["torch (ms)"]
    head += [f"{lab}/torch" for lab in labels]
    head += [f"peak MiB {lab}" for lab in labels] + ["peak MiB torch"] + [f"mem {lab}/torch" for lab in labels]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * 3 + "---:|" * (len(head) - 3))
    for name, step_name, threads, med, peak, ready in rows:
        cells = [name, step_name, str(threads)] + [fmt_ms(med[lab]) for lab in labels] + [fmt_ms(med["torch"])]
        cells += [f"**{med[lab] / med['torch']:.2f}**" for lab in labels]
        cells += [f"{peak[lab]:,.0f}" for lab in labels] + [f"{peak['torch']:,.0f}"]
        cells += [f"{peak[lab] / peak['torch']:.2f}" for lab in labels]
        print("| " + " | ".join(cells) + " |")
    print()
    print("Agreement with diffusers on the same weights and inputs (max |Δ| of what each line names; "
          "first training loss):")
    for name, checked, mode, threads, diffs, ready in checks:
        loss = {k: v["first_loss"] for k, v in ready.items()}
        extra = "" if mode != "train" else "; first loss " + ", ".join(f"{k} {v:.6f}" for k, v in loss.items())
        print(f"- {name} {mode} {threads}t ({checked}): " + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items())
              + extra)
    print_gflops(rows, flops, labels + ["torch"])
    imports = {k: v["import_rss_mib"] for k, v in rows[0][5].items()} if rows else {}
    print("RSS after import (MiB, included in the peaks): " + ", ".join(f"{k} {v:,.0f}" for k, v in imports.items()))
    print(f"(worker logs, weights and outputs: {out})")


if __name__ == "__main__":
    main()
