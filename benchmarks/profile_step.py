"""Where a Paddle U-Net step spends its time: paddle.profiler's operator table, top rows.

The U-Net, inputs and step of benchmarks/vs_pytorch.py (forward + MSE + backward + AdamW,
or with ``--mode sample`` a sampling step with guidance),
profiled after warm-up steps; prints a markdown table of the operators with the most CPU
time per step (forward and backward ops listed apart: ``Global_...GradNode`` rows are the
backward; in the ``fast-paddle`` variant the recomputing backward of FastAttnProcessor's
query blocks runs plain ops, listed under their forward names) and their share, then the same time grouped by kind.

    python benchmarks/profile_step.py                        # 32x32 U-Net, stock attention
    python benchmarks/profile_step.py --variant fast --threads 2 --top 20
    python benchmarks/profile_step.py --variant fast --mode sample

The Chrome trace (open in chrome://tracing or Perfetto) is written under --trace-dir.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("GLOG_minloglevel", "2")

# What each operator counts as in the grouped table: keys are matched in the lower-cased name
# without underscores (group_norm dygraph, Global_GroupNormGradNode); first match wins.
KINDS = (
    ("attention: softmax, score scaling, fused or C++ attention",
     ("softmax", "scale dygraph", "scalegradnode", "flash", "sdpa", "cpuattention")),
    ("convolution", ("conv2d", "depthwise")),
    ("matmul (attention products and linear layers)", ("matmul", "linear", "fc")),
    ("normalisation", ("groupnorm", "layernorm")),
    ("optimizer (AdamW)", ("adam",)),
    ("layout copies (transpose, reshape, concat, split, slice)",
     ("transpose", "reshape", "concat", "split", "slice", "flatten", "stack", "squeeze", "tile", "expand")),
)


# Paddle's profiler records a custom C++ operator's backward node but not its forward call, so
# the calls are wrapped in events of these names (user-defined events, added to the table).
FORWARD_EVENTS = {name: f"ernie_vilg2_{name} forward"
                  for name in ("cpu_attention", "cpu_conv2d", "cpu_layer_norm", "cpu_group_norm", "cpu_geglu")}


def record_operator_forwards(profiler):
    """Wrap the models' calls of the C++ operators (when built) in profiler events."""
    from ernie_vilg2.models import attention_processor, fast_layers

    def recorded(call, name):
        def wrapper(*args, **kwargs):
            with profiler.RecordEvent(name):
                return call(*args, **kwargs)
        return wrapper

    for function, event in FORWARD_EVENTS.items():
        module = attention_processor if function == "cpu_attention" else fast_layers
        setattr(module, function, recorded(getattr(module, function), event))


def parse_args(argv=None):
    from peer_worker import PADDLE_VARIANTS
    from vs_pytorch import CONFIGS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="32x32", choices=sorted(n for n, c in CONFIGS.items() if "pipeline" not in c),
                   help="a U-Net config of benchmarks/vs_pytorch.py")
    p.add_argument("--variant", default="stock", choices=list(PADDLE_VARIANTS),
                   help="as in benchmarks/vs_pytorch.py: PPDiffusers as it comes (stock) ... the project's (fast)")
    p.add_argument("--mode", default="train", choices=("train", "sample"),
                   help="a training step, or a sampling step with classifier-free guidance")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=2, help="profiled steps (after --warmup)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--top", type=int, default=15, help="operator rows to print")
    p.add_argument("--trace-dir", default=os.path.join("output", "profile_step"),
                   help="where the Chrome trace goes (git-ignored output/ by default)")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 1 or args.top < 1 or args.threads < 1:
        p.error("--steps, --warmup, --top and --threads must be >= 1")
    return args


def kind_of(name: str) -> str:
    low = name.lower().replace("_", "")
    for kind, keys in KINDS:
        if any(k in low for k in keys):
            return kind
    return "other (elementwise, activations, casts, ...)"


def main(argv=None):
    args = parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
    import numpy as np
    import paddle.profiler as profiler
    from paddle.profiler.profiler_statistic import StatisticData

    import peer_worker
    from flop_count import gflops_line
    from vs_pytorch import CONFIGS, init_config

    from ernie_vilg2.utils import cpu_report

    with tempfile.TemporaryDirectory(prefix="profile_step_") as out:
        spec_path, spec, n_params = init_config(args.config, CONFIGS[args.config], out,
                                                argparse.Namespace(warmup=args.warmup))
        model = peer_worker.PaddleSide(spec, args.variant)
        with np.load(spec["weights"]) as w:
            model.load_numpy({k: w[k] for k in w.files})
        with np.load(spec["inputs"]) as f:
            inputs = {k: model.tensor(f[k]) for k in f.files}
    if args.mode == "train":
        model.setup_train(spec["lr"], spec["weight_decay"])

        def step():
            model.train_step(inputs["noisy"], inputs["t"], inputs["context"], inputs["target"])
    else:
        model.unet.eval()
        model.scheduler.set_timesteps(spec["sample_steps"])
        t = model.scheduler.timesteps[0]

        def step():
            model.sample_step(inputs["latents"], t, inputs["sample_context"], spec["guidance"])
    for _ in range(args.warmup):
        step()
    record_operator_forwards(profiler)

    # Without on_trace_ready Paddle writes its trace to ./profiler_log/ of the working directory.
    prof = profiler.Profiler(targets=[profiler.ProfilerTarget.CPU], timer_only=False,
                             on_trace_ready=profiler.export_chrome_tracing(args.trace_dir))
    prof.start()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
        prof.step()
    wall = (time.perf_counter() - start) / args.steps * 1e3
    prof.stop()
    stats = StatisticData(prof.profiler_result.get_data(), prof.profiler_result.get_extra_info())
    # A PyLayer's backward node contains the ops it runs, which have their own rows: skip it.
    items = {name: it for name, it in stats.event_summary.items.items() if "PyLayer" not in name}
    user_events = stats.event_summary.userdefined_items
    items.update({name: it for name, it in user_events.items() if name in FORWARD_EVENTS.values()})
    per_step = {name: (it.cpu_time / args.steps / 1e6, it.call / args.steps) for name, it in items.items()}
    total = sum(ms for ms, _ in per_step.values())

    what = f"batch {spec['batch']}, training step" if args.mode == "train" else \
        f"batch {spec['sample_batch']} (x2 with guidance), sampling step"
    print(cpu_report.machine_report())
    print(f"{args.config} U-Net ({n_params:,} parameters), {what}, "
          f"{args.threads} thread(s), {args.variant}: {wall:,.0f} ms per profiled step, "
          f"{total:,.0f} ms of it in recorded operators, {wall - total:,.0f} ms elsewhere (Python, dynamic graph)")
    if spec.get("flops"):  # counted from the layer shapes by the init (flop_count.py)
        step_name = "training step (3x the forward)" if args.mode == "train" else "sampling step"
        print(gflops_line(step_name, spec["flops"][args.mode], wall / 1e3, args.threads, cpu_report.core_peak_gflops()))
    print()
    print("| operator | calls/step | ms/step | share |")
    print("|---|---:|---:|---:|")
    for name, (ms, calls) in sorted(per_step.items(), key=lambda kv: -kv[1][0])[:args.top]:
        print(f"| {name} | {calls:g} | {ms:,.1f} | {ms / total:.1%} |")
    grouped = {}
    for name, (ms, _) in per_step.items():
        grouped[kind_of(name)] = grouped.get(kind_of(name), 0.0) + ms
    print()
    print("| kind (forward + backward) | ms/step | share |")
    print("|---|---:|---:|")
    for kind, ms in sorted(grouped.items(), key=lambda kv: -kv[1]):
        print(f"| {kind} | {ms:,.0f} | {ms / total:.1%} |")
    print(json.dumps({"total_op_ms_per_step": round(total, 1)}), file=sys.stderr)


if __name__ == "__main__":
    main()
