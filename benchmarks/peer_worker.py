"""One timed U-Net (or whole model) in its own process, for benchmarks/vs_pytorch.py (not run by hand).

The same file runs under the project's venv (``--framework paddle``: PPDiffusers) and
under the peer venv (``--framework torch``: diffusers), so it imports nothing of either at
module level and nothing of ernie_vilg2 unless a project processor is asked for. A spec
with a ``pipeline`` entry times the whole model instead (peer_pipeline.py).

    python peer_worker.py init SPEC.json         # paddle: build the model, write weights + inputs
    python peer_worker.py run SPEC.json --framework F --mode train|sample --variant V --out DIR

``run`` builds the model from ``weights.npz`` (torch layout: Linear weights [out, in]; the
Paddle side of a pipeline spec loads the saved pipeline folder instead), saves its check
output to ``DIR/check-<framework>-<variant>-<mode>.npy``, runs the warm-up steps, prints
``READY {json}`` and then answers stdin lines: ``run K`` times K steps and prints
``TIMES [seconds, ...]``; ``quit`` prints ``DONE {"peak_rss_mib": ...}`` and exits.
"""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

# Paddle variants: (attention processor and layers, MKL's AVX2 path on AMD, the project's C++
# CPU ops, glibc malloc: its defaults, "keep" (freed memory kept, as the project's entry points
# set it) or "lean" (each tensor of 128 KiB or more mapped from the OS and handed back when
# freed, as a user sets it with MALLOC_MMAP_THRESHOLD_: least memory, page faults)). "stock" is
# PPDiffusers as it comes; "fast" what every expert of the project runs.
PADDLE_VARIANTS = {"stock": ("stock", False, False, "defaults"), "stock-avx2": ("stock", True, False, "defaults"),
                   "fast-paddle": ("fast", True, False, "keep"), "fast": ("fast", True, True, "keep"),
                   "fast-lean": ("fast", True, True, "lean"), "fast-program": ("fast", True, True, "keep")}
# Variants that sample through the exported program (Paddle Inference with the C++ operators, as
# the deployment runners); they train as the dynamic graph ("fast"), which is all there is to train.
PROGRAM_VARIANTS = {"fast-program"}
# glibc reads these at process start, so the benchmark starts the variant's process with them.
MALLOC_ENVIRONMENT = {"lean": {"MALLOC_MMAP_THRESHOLD_": "131072"}}


def variant_environment(variant: str) -> dict:
    """Environment variables a Paddle variant's process must start with."""
    return MALLOC_ENVIRONMENT.get(PADDLE_VARIANTS[variant][3], {})


def rss_mib(field: str) -> float:
    """VmHWM (peak) or VmRSS (now) of this process, MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def read_spec(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def linear_weights(layer) -> set:
    """Names of a Paddle layer's parameters stored [in, out] there and [out, in] in torch."""
    import paddle

    return {f"{n}.weight" for n, m in layer.named_sublayers() if isinstance(m, paddle.nn.Linear)}


def torch_layout(layer) -> dict:
    """A Paddle layer's state as NumPy arrays named and shaped as in torch."""
    linear = linear_weights(layer)
    return {k: (v.numpy().T if k in linear else v.numpy()) for k, v in layer.state_dict().items()}


def paddle_process(variant: str) -> None:
    """The process-wide settings of ``variant``, before Paddle's first MKL call (MKL reads its
    dispatch variable then) and before PaddleNLP's import (the fast variants import it as the
    project's entry points do, stock ones whole)."""
    if variant not in PADDLE_VARIANTS:
        raise SystemExit(f"error: --variant must be one of {sorted(PADDLE_VARIANTS)}, got {variant!r}")
    missing = {k: v for k, v in variant_environment(variant).items() if os.environ.get(k) != v}
    if missing:
        raise SystemExit(f"error: variant {variant} needs its process started with {missing}")
    processor, avx2, cpu_ops, malloc = PADDLE_VARIANTS[variant]
    os.environ.pop("MKL_DEBUG_CPU_TYPE", None)
    os.environ["ERNIE_VILG2_MKL_AVX2"] = "1" if avx2 else "0"
    os.environ["ERNIE_VILG2_CPU_OPS"] = "1" if cpu_ops else "0"
    os.environ["ERNIE_VILG2_MALLOC_TUNING"] = "1" if malloc == "keep" else "0"
    os.environ["ERNIE_VILG2_LEAN_IMPORT"] = "1" if processor == "fast" else "0"
    if avx2 or malloc == "keep":  # every fast variant; stock without the project's settings
        from ernie_vilg2.utils.cpu_tuning import tune_cpu_process

        tune_cpu_process()  # each setting as the variables above allow it


def paddle_variant(variant: str):
    """Set this process up for ``variant`` (:func:`paddle_process`) and return
    ``set_variant(unet)``, which installs the variant's attention processor and layers (stock:
    PPDiffusers' own, also on a loaded project model; fast: what ``apply_speedups`` gives every
    expert)."""
    paddle_process(variant)
    processor = PADDLE_VARIANTS[variant][0]
    if processor == "fast":
        from ernie_vilg2.models.speedups import apply_speedups

        return apply_speedups
    import paddle
    from ppdiffusers.models.activations import GEGLU
    from ppdiffusers.models.attention_processor import AttnProcessor
    from ppdiffusers.models.lora import LoRACompatibleConv, LoRACompatibleLinear

    def set_stock(unet):
        unet.set_attn_processor(AttnProcessor())
        for layer in unet.sublayers():
            # Most derived first: LoRACompatibleConv is a Conv2D.
            for base in (LoRACompatibleLinear, LoRACompatibleConv, GEGLU, paddle.nn.Conv2D):
                if isinstance(layer, base):
                    layer.__class__ = base
                    break
    return set_stock


# -- Paddle ------------------------------------------------------------------------------------
class PaddleSide:
    name = "paddle"

    def __init__(self, spec: dict, variant: str):
        set_variant = paddle_variant(variant)
        import paddle
        from ppdiffusers import DDIMScheduler, UNet2DConditionModel

        self.paddle = paddle
        paddle.seed(spec["seed"])
        self.unet = UNet2DConditionModel(**spec["unet"])
        set_variant(self.unet)
        self.scheduler = DDIMScheduler(**spec["scheduler"])
        self.optimizer = None

    def load_numpy(self, arrays: dict) -> None:
        linear = linear_weights(self.unet)
        state = {k: (np.ascontiguousarray(arrays[k].T) if k in linear else arrays[k]) for k in arrays}
        missing, unexpected = self.unet.set_state_dict({k: self.paddle.to_tensor(v) for k, v in state.items()})
        if missing or unexpected:
            raise SystemExit(f"error: weights do not fit: missing {missing}, unexpected {unexpected}")

    def tensor(self, a):
        return self.paddle.to_tensor(a)

    def setup_train(self, lr, weight_decay):
        self.unet.train()
        self.optimizer = self.paddle.optimizer.AdamW(learning_rate=lr, parameters=self.unet.parameters(),
                                                     weight_decay=weight_decay)

    def train_step(self, noisy, t, context, target):
        import paddle.nn.functional as F

        pred = self.unet(noisy, t, context).sample
        loss = F.mse_loss(pred, target)
        loss.backward()
        self.optimizer.step()
        self.optimizer.clear_grad(set_to_zero=False)
        return float(loss)

    def forward(self, x, t, context):
        self.unet.eval()
        with self.paddle.no_grad():
            return self.unet(x, t, context).sample.numpy()

    def export_unet(self, folder: str, num_train_timesteps: int, text_length: int) -> None:
        """Sample through the U-Net's exported program from now on: traced with the C++ operators
        as the exporter traces an expert (ernie_vilg2.deploy.export), run by a Paddle Inference
        predictor as the deployment runners run it."""
        from paddle.static import InputSpec

        from ernie_vilg2.deploy.cpu_ops import program_files
        from ernie_vilg2.deploy.predictor import PredictorSettings, Program
        from ernie_vilg2.deploy.program_writer import program_layers, save_program, static_program
        from ernie_vilg2.deploy.rewrites import rewrite_for_export

        unet = rewrite_for_export(self.unet, num_train_timesteps)
        cfg = unet.config
        spec = [InputSpec([None, cfg.in_channels, cfg.sample_size, cfg.sample_size], "float32", "sample"),
                InputSpec([1], "float32", "timestep"),
                InputSpec([None, text_length, cfg.cross_attention_dim], "float32", "encoder_hidden_states")]
        _, expert_program, _ = program_layers()
        entry = save_program(static_program(expert_program(unet), spec), folder, "unet",
                             static_program(expert_program(unet), spec))
        model, params = program_files(entry, with_operators=True)
        threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
        self.program = Program(os.path.join(folder, model), os.path.join(folder, params),
                               [(s.name, "float32", s.shape) for s in spec], PredictorSettings(threads=threads), "unet")

    def sample_step(self, x, t, context, guidance):
        with self.paddle.no_grad():
            if getattr(self, "program", None) is None:
                eps = self.unet(self.paddle.concat([x, x]), t, context).sample
            else:
                timestep = np.asarray([float(t)], dtype="float32")
                eps = self.paddle.to_tensor(self.program(np.concatenate([x.numpy()] * 2), timestep, context.numpy()))
            uncond, cond = eps.chunk(2)
            eps = uncond + guidance * (cond - uncond)
            return self.scheduler.step(eps, t, x).prev_sample


# -- PyTorch (diffusers) -------------------------------------------------------------------------
class TorchSide:
    name = "torch"

    def __init__(self, spec: dict, variant: str):
        import torch
        from diffusers import DDIMScheduler, UNet2DConditionModel

        self.torch = torch
        self.unet = UNet2DConditionModel(**spec["unet"])
        self.scheduler = DDIMScheduler(**spec["scheduler"])
        self.optimizer = None

    def load_numpy(self, arrays: dict) -> None:
        state = {k: self.torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
        self.unet.load_state_dict(state, strict=True)

    def tensor(self, a):
        return self.torch.from_numpy(np.ascontiguousarray(a))

    def setup_train(self, lr, weight_decay):
        self.unet.train()
        self.optimizer = self.torch.optim.AdamW(self.unet.parameters(), lr=lr, weight_decay=weight_decay)

    def train_step(self, noisy, t, context, target):
        pred = self.unet(noisy, t, context).sample
        loss = self.torch.nn.functional.mse_loss(pred, target)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss)

    def forward(self, x, t, context):
        self.unet.eval()
        with self.torch.no_grad():
            return self.unet(x, t, context).sample.numpy()

    def sample_step(self, x, t, context, guidance):
        with self.torch.no_grad():
            eps = self.unet(self.torch.cat([x, x]), t, context).sample
            uncond, cond = eps.chunk(2)
            eps = uncond + guidance * (cond - uncond)
            return self.scheduler.step(eps, t, x).prev_sample


def side(framework: str, spec: dict, variant: str):
    return {"paddle": PaddleSide, "torch": TorchSide}[framework](spec, variant)


# -- commands ----------------------------------------------------------------------------------
def init(spec_path: str) -> None:
    """Build the model once (Paddle, seeded) and write its weights and the inputs."""
    spec = read_spec(spec_path)
    if "pipeline" in spec:
        import peer_pipeline

        spec.update(peer_pipeline.init(spec, torch_layout))
        with open(spec_path, "w") as f:  # the sizes and settings the workers build from
            json.dump(spec, f)
        return
    model = PaddleSide(spec, "stock")
    np.savez(spec["weights"], **torch_layout(model.unet))
    rng = np.random.default_rng(spec["seed"])
    b, s, c = spec["batch"], spec["unet"]["sample_size"], spec["unet"]["in_channels"]
    ctx = (spec["text_length"], spec["unet"]["cross_attention_dim"])
    np.savez(
        spec["inputs"],
        noisy=rng.standard_normal((b, c, s, s)).astype("float32"),
        target=rng.standard_normal((b, c, s, s)).astype("float32"),
        t=rng.integers(0, spec["scheduler"]["num_train_timesteps"], b).astype("int64"),
        context=rng.standard_normal((b,) + ctx).astype("float32"),
        latents=rng.standard_normal((spec["sample_batch"], c, s, s)).astype("float32"),
        sample_context=rng.standard_normal((2 * spec["sample_batch"],) + ctx).astype("float32"),
    )
    spec["flops"] = unet_step_flops(model, spec)
    with open(spec_path, "w") as f:
        json.dump(spec, f)


def unet_step_flops(model, spec: dict) -> dict:
    """Flops of a training step (3x the forward on the training batch) and of a sampling step
    (the forward on the doubled sampling batch), counted on the stock U-Net (flop_count.py)."""
    from flop_count import count_flops

    paddle, unet = model.paddle, model.unet
    s, c = spec["unet"]["sample_size"], spec["unet"]["in_channels"]
    ctx = [spec["text_length"], spec["unet"]["cross_attention_dim"]]

    def forward(batch):
        return sum(count_flops(unet, lambda: unet(paddle.zeros([batch, c, s, s]), paddle.zeros([batch], "int64"),
                                                  paddle.zeros([batch] + ctx))).values())

    return {"train": 3 * forward(spec["batch"]), "sample": forward(2 * spec["sample_batch"])}


def prepare_unet(framework: str, mode: str, spec: dict, arrays: dict, inputs: dict, variant: str, out: str):
    """(check output, step function): the U-Net's output and a training step for train, one
    CFG + DDIM step and a step of a sampling run for sample."""
    model = side(framework, spec, variant)
    model.load_numpy(arrays)
    T = model.tensor
    if mode == "train":
        noisy, t, context, target = T(inputs["noisy"]), T(inputs["t"]), T(inputs["context"]), T(inputs["target"])
        check = model.forward(noisy, t, context)
        model.setup_train(spec["lr"], spec["weight_decay"])

        def step():
            return model.train_step(noisy, t, context, target)
    elif mode == "sample":
        if variant in PROGRAM_VARIANTS:
            model.export_unet(os.path.join(out, f"program-{variant}-{os.getpid()}"),
                              spec["scheduler"]["num_train_timesteps"], spec["text_length"])
        x, context = T(inputs["latents"]), T(inputs["sample_context"])
        model.scheduler.set_timesteps(spec["sample_steps"])
        timesteps = list(model.scheduler.timesteps)
        check = model.sample_step(x, timesteps[0], context, spec["guidance"]).numpy()
        state = {"i": 0, "x": x}

        def step():
            # Walk the schedule like a sampler; restart from the same latents at its end.
            i = state["i"] % len(timesteps)
            state["x"] = model.sample_step(x if i == 0 else state["x"], timesteps[i], context, spec["guidance"])
            state["i"] += 1
    else:
        raise SystemExit(f"error: --mode must be train or sample, got {mode!r}")
    return check, step


def code_path(framework: str) -> str:
    """One line on the CPU code the framework's kernels run: the C++ operators' paths (Paddle)
    or ATen's CPU capability (PyTorch)."""
    if framework == "torch":
        import torch

        return f"ATen CPU capability {torch.backends.cpu.get_cpu_capability()}"
    from ernie_vilg2 import ops
    from ernie_vilg2.utils.cpu_report import ops_line

    return ops_line(ops.cpu_ops_config())


def run(spec_path: str, framework: str, mode: str, variant: str, out: str) -> None:
    spec = read_spec(spec_path)
    if framework == "paddle":
        paddle_process(variant)
        import paddle, ppdiffusers  # noqa: F401,E401
    else:
        import diffusers, torch  # noqa: F401,E401
        if "pipeline" in spec:
            import transformers  # noqa: F401
        if variant != "default":
            raise SystemExit(f"error: torch runs diffusers' default attention only (--variant default), "
                             f"got {variant!r}")
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    import_rss = rss_mib("VmRSS")
    arrays = {}
    if framework == "torch" or "pipeline" not in spec:  # Paddle's whole model loads its saved folder
        with np.load(spec["weights"]) as w:
            arrays = {k: w[k] for k in w.files}
    with np.load(spec["inputs"]) as f:
        inputs = {k: f[k] for k in f.files}
    if "pipeline" in spec:
        import peer_pipeline

        set_variant = paddle_variant(variant) if framework == "paddle" else None
        check, step = peer_pipeline.prepare(framework, mode, spec, arrays, inputs, set_variant)
    else:
        check, step = prepare_unet(framework, mode, spec, arrays, inputs, variant, out)
    arrays.clear()
    np.save(os.path.join(out, f"check-{framework}-{variant}-{mode}.npy"), check)
    first_loss = step() if mode == "train" else None
    for _ in range(spec["warmup"] - (mode == "train")):
        step()
    print("READY " + json.dumps({"first_loss": first_loss, "import_rss_mib": import_rss,
                                 "code_path": code_path(framework)}), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if cmd and cmd[0] == "run":
            times = []
            for _ in range(int(cmd[1])):
                start = time.perf_counter()
                step()
                times.append(time.perf_counter() - start)
            print("TIMES " + json.dumps(times), flush=True)
        elif cmd and cmd[0] == "quit":
            break
    print("DONE " + json.dumps({"peak_rss_mib": rss_mib("VmHWM")}), flush=True)


def main(argv=None) -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=("init", "run"))
    p.add_argument("spec")
    p.add_argument("--framework", choices=("paddle", "torch"), default="paddle")
    p.add_argument("--mode", default="train")
    p.add_argument("--variant", default="stock")
    p.add_argument("--out", default=".")
    a = p.parse_args(argv)
    if a.command == "init":
        init(a.spec)
    else:
        run(a.spec, a.framework, a.mode, a.variant, a.out)


if __name__ == "__main__":
    main()
