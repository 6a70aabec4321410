"""Deployment speed: dynamic graph vs the exported Python runner (vs the C++ runner), CPU.

Builds the configs/tiny.yaml model with N=1 and N=10 experts (random weights: speed does not
depend on them), saves and exports both, then times, per denoising step and per image, for
batch 1 and 8 (classifier-free guidance on, so the U-Net sees 2x the batch):

  dynamic     ErnieViLG2Pipeline.from_pretrained (what tools/generate.py runs)
  python      ernie_vilg2.deploy.InferencePipeline (deploy/python/infer.py), Paddle Inference,
              native kernels and the project's C++ CPU operators (the default)
  python-plain  the same without the operators (ERNIE_VILG2_CPU_OPS=0: Paddle's kernels only)
  onednn      the same as python with --engine onednn
  openvino    the same with Paddle's OpenVINO engine (--openvino; CPU wheel)
  cpp         deploy/cpp/build/ernie_vilg2_infer --timing (or --cpp BINARY); skipped with a
              note when the binary is absent
  cpp-onednn  the same with --engine onednn

Each measurement runs in its own process (so peak RSS is that runner's alone, imports
included), variants interleaved A B C A B C over --rounds. Step time: median time between
consecutive steps (the first step, which follows text encoding, left out): expert U-Net,
guidance and scheduler. Image time: one whole call (tokenize, text encoder, all steps, VAE
decoder, to uint8) divided by the batch; loading not included. "max Δ" compares each
runner's uint8 images with the dynamic pipeline's for the same noise.

    python benchmarks/deploy_speed.py                   # 25 DPM-Solver++ steps, 2 rounds
    python benchmarks/deploy_speed.py --openvino --cpp deploy/cpp/build/ernie_vilg2_infer --rounds 3
    python benchmarks/deploy_speed.py --config benchmarks/configs/deploy_32x32.yaml --experts 1 --steps 10 \
        --variants dynamic python python-plain cpp   # a U-Net on 32x32 latents
"""
from __future__ import annotations

import argparse
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

os.environ.setdefault("GLOG_minloglevel", "2")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(ROOT, "configs", "tiny.yaml")
DEFAULT_CPP = os.path.join(ROOT, "deploy", "cpp", "build", "ernie_vilg2_infer")
PROMPTS = ["红苹果", "a red apple", "蓝心", "a blue heart", "黄色方块", "a yellow square", "青蛙", "a frog"]
TARGET = 1.5
VARIANTS = ("dynamic", "python", "python-plain", "onednn", "openvino", "cpp", "cpp-onednn")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=DEFAULT_CONFIG, help="YAML whose model: section gives the sizes")
    p.add_argument("--steps", type=int, default=25, help="sampling steps per image")
    p.add_argument("--sampler", choices=("ddim", "dpm"), default="dpm")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="prompts per call")
    p.add_argument("--experts", type=int, nargs="+", default=[1, 10], help="N of the models compared")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds (one process per cell per round)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per process (after one warm-up call)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads of every runner (OMP / math library)")
    p.add_argument("--openvino", action="store_true", help="add the Python runner on Paddle's OpenVINO engine")
    p.add_argument("--variants", nargs="+", choices=VARIANTS, help="runners to time (default: all; cpp rows need "
                   "the binary, openvino --openvino)")
    p.add_argument("--cpp", default=DEFAULT_CPP, help="C++ runner binary (row skipped when absent)")
    p.add_argument("--workdir", help="keep the models and exports here (default: a temporary folder)")
    p.add_argument("--worker", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for name in ("steps", "rounds", "repeats", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    return args


# -- worker: one runner, one model, one batch size, in its own process ----------------------------
def worker(variant, folder, batch, steps, sampler, repeats, threads, noise_file, out_file):
    import numpy as np

    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
    noise = np.load(noise_file)
    if variant == "dynamic":
        import paddle

        from ernie_vilg2.cli_utils import quiet_third_party_logs
        from ernie_vilg2.pipelines import load_pipeline

        quiet_third_party_logs()
        pipe = load_pipeline(folder, sampler=sampler)
        pipe.set_progress_bar_config(disable=True)
        latents = paddle.to_tensor(noise)
    else:
        from ernie_vilg2.deploy import InferencePipeline

        engine = {"python": "paddle", "python-plain": "paddle"}.get(variant, variant)
        pipe = InferencePipeline.from_export(folder, sampler=sampler, threads=threads, engine=engine, verify="size")
        latents = noise
    marks = []

    def call():
        marks.clear()
        return pipe(prompts, num_inference_steps=steps, guidance_scale=2.1, latents=latents,
                    callback=lambda i, t, x: marks.append(time.perf_counter())).images

    images = call()  # warm-up: every expert's first run
    step_ms, image_ms = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        images = call()
        image_ms.append((time.perf_counter() - start) * 1000 / batch)
        step_ms += [(b - a) * 1000 for a, b in zip(marks, marks[1:])]
    np.save(out_file, np.stack([np.asarray(im) for im in images]))
    print(json.dumps({"step_ms": statistics.median(step_ms), "image_ms": statistics.median(image_ms)}))


# -- the main process -------------------------------------------------------------------------------
# A small launcher between this (large) process and the measured one: a child inherits its
# parent's peak RSS through fork, so the measured process must be forked by a small one.
_LAUNCHER = (
    "import os, subprocess, sys\n"
    "child = subprocess.Popen(sys.argv[1:])\n"
    "_, status, usage = os.wait4(child.pid, 0)\n"
    "sys.stderr.write(f'\\nPEAK_RSS_KB={usage.ru_maxrss}\\n')\n"
    "sys.exit(os.waitstatus_to_exitcode(status))\n"
)


def run_measured(command, env, timeout=1800):
    """Run ``command``; return (stdout, stderr, return code, peak RSS in MiB of that process)."""
    proc = subprocess.run([sys.executable, "-c", _LAUNCHER, *command], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=timeout)
    marker = [line for line in proc.stderr.splitlines() if line.startswith("PEAK_RSS_KB=")]
    rss = int(marker[-1].split("=")[1]) / 1024 if marker else float("nan")
    return proc.stdout, proc.stderr, proc.returncode, rss


def prepare(args, workdir):
    """Save and export the N=1 and N=10 models (random weights) once."""
    from ernie_vilg2.config import from_dict, read_yaml
    from ernie_vilg2.deploy import export_pipeline
    from ernie_vilg2.models.config import ModelConfig
    from ernie_vilg2.pipelines.building import build_pipeline

    import paddle

    raw = read_yaml(args.config)
    model_cfg = from_dict(ModelConfig, raw.get("model") or {}, "model")
    resolution = (raw.get("data") or {}).get("resolution") or 32
    folders = {}
    for n in args.experts:
        pipe_dir, export_dir = os.path.join(workdir, f"pipeline-n{n}"), os.path.join(workdir, f"export-n{n}")
        if not os.path.isdir(pipe_dir):
            paddle.seed(n)
            build_pipeline(model_cfg, resolution, num_experts=n).save_pretrained(pipe_dir)
        if not os.path.isdir(export_dir):
            started = time.time()
            export_pipeline(pipe_dir, export_dir, log=lambda message: None)
            print(f"exported N={n} in {time.time() - started:.1f} s", file=sys.stderr)
        folders[n] = (pipe_dir, export_dir)
    return folders


def main(argv=None):
    tune_cpu_process()
    args = parse_args(argv)
    if args.worker:
        w = args.worker
        worker(w[0], w[1], int(w[2]), int(w[3]), w[4], int(w[5]), int(w[6]), w[7], w[8])
        return 0
    import numpy as np

    workdir = args.workdir or tempfile.mkdtemp(prefix="deploy_speed.")
    os.makedirs(workdir, exist_ok=True)
    try:
        folders = prepare(args, workdir)
        cpp = args.cpp if args.cpp and os.path.isfile(args.cpp) and os.access(args.cpp, os.X_OK) else None
        variants = [v for v in args.variants or VARIANTS if (cpp or not v.startswith("cpp"))
                    and (args.openvino or v != "openvino")]
        if "dynamic" not in variants:
            variants.insert(0, "dynamic")  # the reference of the speed-ups and differences
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "GLOG_minloglevel": "2",
               "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
        cells = [(n, b) for n in args.experts for b in args.batches]
        results, cpp_failures = {}, []
        for r in range(args.rounds):
            for n, batch in cells:
                manifest = json.load(open(os.path.join(folders[n][1], "manifest.json"), encoding="utf-8"))
                lat = manifest["latent"]
                noise_file = os.path.join(workdir, f"noise-b{batch}.npy")
                if not os.path.isfile(noise_file):
                    shape = [batch, lat["channels"], lat["height"], lat["width"]]
                    np.save(noise_file, np.random.default_rng(0).standard_normal(shape).astype("float32"))
                for variant in variants:
                    images = os.path.join(workdir, f"images-{variant}-n{n}-b{batch}.npy")
                    if variant.startswith("cpp"):
                        engine = "onednn" if variant == "cpp-onednn" else "paddle"
                        record = run_cpp(cpp, folders[n][1], batch, args, noise_file, images, env, engine)
                        if isinstance(record, str):  # the binary failed: report it, keep the other rows
                            cpp_failures.append(f"{variant} N={n} batch={batch}: {record}")
                            continue
                    else:
                        folder = folders[n][0] if variant == "dynamic" else folders[n][1]
                        command = [sys.executable, os.path.abspath(__file__), "--worker", variant, folder, str(batch),
                                   str(args.steps), args.sampler, str(args.repeats), str(args.threads), noise_file,
                                   images]
                        plain = {"ERNIE_VILG2_CPU_OPS": "0"} if variant == "python-plain" else {}
                        out, err, code, rss = run_measured(command, {**env, **plain})
                        if code != 0:
                            raise SystemExit(f"error: {variant} N={n} batch={batch} failed:\n{err[-2000:]}")
                        record = {**json.loads(out.strip().splitlines()[-1]), "rss": rss}
                    results.setdefault((n, batch, variant), []).append(record)
                    print(f"round {r + 1}: N={n} batch={batch} {variant}: step {record['step_ms']:.1f} ms, "
                          f"image {record['image_ms']:.1f} ms, RSS {record['rss']:.0f} MiB", file=sys.stderr)
        print_table(args, cells, variants, results, workdir, cpp)
        for failure in cpp_failures:
            print(f"C++ runner failed, {failure}")
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


def run_cpp(binary, export_dir, batch, args, noise_file, images_file, env, engine="paddle"):
    """The C++ runner as the Python workers are timed: one process, a warm-up run (every
    predictor's first run) then --repeats timed runs (``--repeat``; its --timing excludes loading).
    Returns the timings, or the last line of the runner's error output if it failed."""
    import numpy as np
    from PIL import Image

    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
    out_png = os.path.splitext(images_file)[0] + ".png"  # the grid; the images are <stem>_000.png ...
    command = [binary, "--model", export_dir, *[a for p in prompts for a in ("--prompt", p)], "--noise", noise_file,
               "--steps", str(args.steps), "--sampler", args.sampler, "--guidance", "2.1", "--batch-size", str(batch),
               "--threads", str(args.threads), "--engine", engine, "--out", out_png, "--timing",
               "--repeat", str(args.repeats + 1)]
    out, err, code, rss = run_measured(command, env)
    if code != 0:
        lines = [line for line in err.splitlines() if line.strip() and not line.startswith("PEAK_RSS_KB=")]
        return lines[-1] if lines else f"exit status {code}"
    timings = [json.loads(line) for line in out.splitlines() if line.startswith("{")][1:]  # warm-up dropped
    steps = [ms for t in timings for ms in t["step_ms"][1:]]
    images = [t["total_ms"] / batch for t in timings]
    stem = os.path.splitext(out_png)[0]
    singles = [f"{stem}_{i:03d}.png" for i in range(batch)]
    np.save(images_file, np.stack([np.asarray(Image.open(p).convert("RGB")) for p in singles]))
    return {"step_ms": statistics.median(steps), "image_ms": statistics.median(images), "rss": rss}


def print_table(args, cells, variants, results, workdir, cpp):
    import numpy as np

    print(machine_report())
    print(f"\nCPU, {args.threads} thread(s), {args.steps} {args.sampler} steps, guidance 2.1, "
          f"{args.rounds} interleaved rounds x {args.repeats} calls; medians over rounds\n")
    print("| N | batch | runner | step (ms) | image (ms) | step speed-up | image speed-up | peak RSS (MiB) "
          "| max Δ vs dynamic (uint8) |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for n, batch in cells:
        reference = np.load(os.path.join(workdir, f"images-dynamic-n{n}-b{batch}.npy")).astype(int)
        base = {k: statistics.median(r[k] for r in results[(n, batch, "dynamic")]) for k in ("step_ms", "image_ms")}
        for variant in variants:
            rows = results.get((n, batch, variant))
            if not rows:
                continue
            step = statistics.median(r["step_ms"] for r in rows)
            image = statistics.median(r["image_ms"] for r in rows)
            rss = max(r["rss"] for r in rows)
            diff = np.abs(np.load(os.path.join(workdir, f"images-{variant}-n{n}-b{batch}.npy")).astype(int)
                          - reference).max()
            print(f"| {n} | {batch} | {variant} | {step:.1f} | {image:.1f} | {base['step_ms'] / step:.2f}x "
                  f"| {base['image_ms'] / image:.2f}x | {rss:.0f} | {diff} |")
    if not cpp:
        print(f"\nC++ runner: no binary at {args.cpp} (build it with `make cpp`); row skipped.")
    print(f"\nTarget: exported runners >= {TARGET}x the dynamic graph per image.")


if __name__ == "__main__":
    sys.exit(main())
