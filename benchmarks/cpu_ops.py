"""The C++ CPU operators alone, on each code path: ms per call at the U-Nets' shapes.

Each path (``ERNIE_VILG2_CPU_ISA``: generic, avx2, avx512, as this CPU has them) runs in its
own process (the path is chosen once per process; ``generic`` and ``avx2`` also cap MKL and
oneDNN there), the processes taking turns for ``--rounds``; each times the attention operator
and the convolution operator at the shapes of configs/tiny.yaml's expert U-Net (8x8 latents,
train batch 16) and of the 32x32 U-Net of benchmarks/vs_pytorch.py (train batch 8), forward
and forward + backward, and the table gives the median per call and avx512 against avx2.

    python benchmarks/cpu_ops.py
    python benchmarks/cpu_ops.py --threads 2 --rounds 3 --paths avx2 avx512
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATHS = ("generic", "avx2", "avx512")
# (U-Net, layer, q [B, N, heads, d] shape, keys L): the layers that take the operator (4,096+
# scores per head); the tiny U-Net's 24-key cross-attention stays in Paddle's ops.
ATTENTION = [("tiny", "self-attention 8x8", (16, 64, 4, 8), 64),
             ("32x32", "self-attention 32x32", (8, 1024, 8, 8), 1024),
             ("32x32", "cross-attention 32x32", (8, 1024, 8, 8), 24),
             ("32x32", "self-attention 16x16", (8, 256, 8, 16), 256)]
# (U-Net, layer, input [B, C, H, W], output channels, kernel): 3x3 with padding 1.
CONV = [("tiny", "conv 3x3 32->32 at 8x8", (16, 32, 8, 8), 32, 3),
        ("tiny", "conv 3x3 64->64 at 4x4", (16, 64, 4, 4), 64, 3),
        ("32x32", "conv 3x3 64->64 at 32x32", (8, 64, 32, 32), 64, 3),
        ("32x32", "conv 3x3 192->64 at 32x32", (8, 192, 32, 32), 64, 3),
        ("32x32", "conv 3x3 128->128 at 16x16", (8, 128, 16, 16), 128, 3)]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--paths", nargs="+", choices=PATHS, help="code paths to time (default: all this CPU has)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=2, help="turns of each path's process")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per shape and turn")
    p.add_argument("--worker", choices=("time", "probe"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if min(args.threads, args.rounds, args.repeats) < 1:
        p.error("--threads, --rounds and --repeats must be >= 1")
    return args


def median_ms(call, repeats: int) -> float:
    call()  # warm-up: primitives built, pages touched
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def worker(repeats: int) -> dict:
    """Times of every shape on this process's path (none with ``repeats`` 0), with the
    operators' configuration."""
    from ernie_vilg2.utils.cpu_tuning import tune_cpu_process

    tune_cpu_process()  # before Paddle's first MKL call: the forced path's caps
    import paddle

    from ernie_vilg2 import ops

    paddle.seed(0)
    rows = {}
    for unet, layer, (b, n, h, d), l in ATTENTION if repeats else ():
        q = paddle.randn([b, n, h, d])
        k, v = paddle.randn([b, l, h, d]), paddle.randn([b, l, h, d])
        for t in (q, k, v):
            t.stop_gradient = False
        grad = paddle.randn([b, n, h, d])

        def forward_backward():
            paddle.autograd.backward([ops.cpu_attention(q, k, v, d ** -0.5)], [grad])

        with paddle.no_grad():
            rows[unet, layer, "forward"] = median_ms(lambda: ops.cpu_attention(q, k, v, d ** -0.5), repeats)
        rows[unet, layer, "forward + backward"] = median_ms(forward_backward, repeats)
    for unet, layer, (b, c, height, width), out, kernel in CONV if repeats else ():
        x = paddle.randn([b, c, height, width])
        w, bias = paddle.randn([out, c, kernel, kernel]) * 0.05, paddle.randn([out])
        for t in (x, w, bias):
            t.stop_gradient = False
        grad = paddle.randn([b, out, height, width])

        def conv():
            return ops.cpu_conv2d(x, w, bias, [1, 1], [kernel // 2] * 2, [1, 1])

        def forward_backward():
            paddle.autograd.backward([conv()], [grad])

        with paddle.no_grad():
            rows[unet, layer, "forward"] = median_ms(conv, repeats)
        rows[unet, layer, "forward + backward"] = median_ms(forward_backward, repeats)
    return {"config": ops.cpu_ops_config(), "rows": [[*key, ms] for key, ms in rows.items()]}


def run_path(path: str, threads: int, repeats: int) -> dict:
    """A worker process on ``path``: its times (``repeats`` 0: only its configuration)."""
    env = dict(os.environ, ERNIE_VILG2_CPU_ISA=path, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               GLOG_minloglevel="2")
    for cap in ("MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):  # the path sets its own
        env.pop(cap, None)
    done = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", "time" if repeats else "probe",
                           "--repeats", str(max(repeats, 1))],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"error: the {path} path failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.repeats if args.worker == "time" else 0)))
        return
    from ernie_vilg2.utils import cpu_report

    paths = args.paths or run_path("generic", 1, 0)["config"]["paths"][::-1]
    times, configs = {}, {}
    for _ in range(args.rounds):
        for path in paths:
            result = run_path(path, args.threads, args.repeats)
            configs[path] = result["config"]
            for unet, layer, kind, ms in result["rows"]:
                times.setdefault((unet, layer, kind), {}).setdefault(path, []).append(ms)
    print(cpu_report.cpu_line())
    for path in paths:
        print(cpu_report.ops_line(configs[path]))
    print(f"{args.threads} thread(s); median of {args.rounds} x {args.repeats} calls per cell")
    print()
    ratio = "avx512" in paths and "avx2" in paths
    head = ["U-Net", "layer", "pass"] + [f"{p} (ms)" for p in paths] + (["avx512/avx2"] if ratio else [])
    print("| " + " | ".join(head) + " |")
    print("|---|---|---|" + "---:|" * (len(paths) + ratio))
    for (unet, layer, kind), by_path in times.items():
        med = {p: statistics.median(by_path[p]) for p in paths}
        cells = [unet, layer, kind] + [f"{med[p]:.2f}" for p in paths]
        if ratio:
            cells.append(f"{med['avx512'] / med['avx2']:.2f}")
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
