"""One attention layer, PPDiffusers' stock AttnProcessor vs FastAttnProcessor by chunk size,
and FastAttnProcessor with the C++ CPU attention operator (ernie_vilg2/ops, where built).

Self-attention at the first level of the 32x32 U-Net of benchmarks/vs_pytorch.py (1,024
image tokens, 64 channels, 8 heads, batch 8) by default; forward + backward (train) and
forward alone (no_grad), variants interleaved in one process; prints medians and the
speed-up over stock. ``FastAttnProcessor``'s default ``chunk_bytes`` comes from this table.

    python benchmarks/attention_chunks.py
    python benchmarks/attention_chunks.py --tokens 256 --channels 128 --text 24 --repeats 5
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

from ernie_vilg2.utils.cpu_report import machine_report
from ernie_vilg2.utils.cpu_tuning import tune_cpu_process

os.environ.setdefault("GLOG_minloglevel", "2")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--tokens", type=int, default=1024, help="image tokens (queries)")
    p.add_argument("--text", type=int, default=0, help="text tokens (keys) for cross-attention; 0: self-attention")
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--chunks", nargs="+", type=float, default=[1, 2, 4, 8, 16, 0],
                   help="chunk_bytes values to time, MiB; 0: the whole score matrix at once (autograd backward)")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    if min(args.batch, args.tokens, args.channels, args.heads, args.repeats) < 1 or args.text < 0 or \
            min(args.chunks) < 0:
        p.error("sizes and --repeats must be >= 1 (--text >= 0)")
    if args.channels % args.heads:
        p.error("--channels must be a multiple of --heads")
    return args


def main(argv=None):
    tune_cpu_process()
    args = parse_args(argv)
    import paddle
    from ppdiffusers.models.attention_processor import Attention, AttnProcessor

    from ernie_vilg2 import ops
    from ernie_vilg2.models import attention_processor
    from ernie_vilg2.models.attention_processor import FastAttnProcessor

    paddle.seed(0)
    cross = args.text or None
    attn = Attention(query_dim=args.channels, cross_attention_dim=cross, heads=args.heads,
                     dim_head=args.channels // args.heads)
    x = paddle.randn([args.batch, args.tokens, args.channels])
    x.stop_gradient = False
    context = paddle.randn([args.batch, args.text, args.channels]) if cross else None
    # name: (processor, whether the C++ operator may run)
    variants = {"stock": (AttnProcessor(), False)}
    variants.update({f"fast, {mib:g} MiB blocks" if mib else "fast, whole matrix":
                     (FastAttnProcessor(chunk_bytes=int(mib * 2**20) if mib else 2**62), False) for mib in args.chunks})
    if ops.cpu_ops_available():
        variants["fast, C++ operator"] = (FastAttnProcessor(), True)
    op_min_scores = attention_processor.CPU_OP_MIN_SCORES

    def train():
        attn(x, context).sum().backward()
        attn.clear_gradients()
        x.clear_gradient()

    def forward():
        with paddle.no_grad():
            attn(x, context)

    times = {(name, mode): [] for name in variants for mode in ("train", "forward")}
    for r in range(args.repeats + 1):  # the first round warms up
        for name, (proc, cpu_op) in variants.items():
            attn.set_processor(proc)
            attention_processor.CPU_OP_MIN_SCORES = op_min_scores if cpu_op else 2**62
            for mode, fn in (("train", train), ("forward", forward)):
                start = time.perf_counter()
                fn()
                if r:
                    times[(name, mode)].append(time.perf_counter() - start)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    kind = f"cross-attention to {args.text} tokens" if cross else "self-attention"
    print(machine_report())
    print(f"{kind}: batch {args.batch}, {args.tokens} queries, {args.channels} channels, {args.heads} heads, "
          f"{os.environ.get('OMP_NUM_THREADS', '1')} thread(s), MKL_DEBUG_CPU_TYPE="
          f"{os.environ.get('MKL_DEBUG_CPU_TYPE', 'unset')}")
    print()
    print("| processor | train fwd+bwd (ms) | speed-up | forward (ms) | speed-up |")
    print("|---|---:|---:|---:|---:|")
    for name in variants:
        t, f = med[(name, "train")], med[(name, "forward")]
        print(f"| {name} | {t:,.1f} | {med[('stock', 'train')] / t:.2f}x | {f:,.1f} | "
              f"{med[('stock', 'forward')] / f:.2f}x |")


if __name__ == "__main__":
    main()
