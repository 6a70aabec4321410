"""Generate images from an export folder with Paddle Inference (no PPDiffusers, no PaddleNLP).

    python deploy/python/infer.py --model output/tiny/export --prompt 红苹果 --prompt "a blue heart" \
        --steps 25 --sampler dpm --seed 0 --out samples/grid.png
    python deploy/python/infer.py --model DIR --prompt-file ../shared/data/ViLG-300.csv --limit 8 --out g.png

The arguments and outputs are those of tools/generate.py (the grid at --out, the single
images beside it, <stem>.json mapping each file to its prompt); the same seed gives the
same images. --model is an export folder made by tools/export_model.py. --save-noise
writes the initial noise (float32 [images, C, h, w], prompt-major) for the C++ runner's
--noise.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings

os.environ.setdefault("GLOG_minloglevel", "2")

from ernie_vilg2.cli_utils import (  # noqa: E402
    add_generation_arguments, check_generation_arguments, check_pipeline_inputs, collect_prompts, fail,
    generate_and_save, one_line_warnings,
)
from ernie_vilg2.deploy.predictor import ENGINES  # noqa: E402  (NumPy only: cheap)
from ernie_vilg2.errors import ErnieViLG2Error  # noqa: E402
from ernie_vilg2.utils.cpu_tuning import tune_cpu_process  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", required=True, help="export folder (with manifest.json) from tools/export_model.py")
    add_generation_arguments(p, size_help="must be the exported size; default: it")
    run = p.add_argument_group("Paddle Inference")
    run.add_argument("--device", choices=("cpu", "gpu"), default="cpu", help="gpu needs paddlepaddle-gpu")
    run.add_argument("--threads", type=int, help="CPU math library threads per predictor (default: Paddle's, 1)")
    run.add_argument("--engine", choices=ENGINES, default="paddle",
                     help="paddle (native kernels, bit-identical to the dynamic graph), onednn (CPU, fastest, "
                          "about 1e-6 off), openvino (CPU) or tensorrt (GPU, optional)")
    run.add_argument("--verify", choices=("sha256", "size"), default="sha256",
                     help="check the export's files by SHA-256 (default) or by size only (fast, large exports)")
    run.add_argument("--expert-offload", choices=("disk",),
                     help="create an expert's predictor only when its timesteps come and drop the previous one "
                          "(memory of one expert; the same images)")
    run.add_argument("--save-noise", metavar="FILE.npy", help="write the initial noise (for the C++ runner's --noise)")
    return p.parse_args(argv)


def check_arguments(args: argparse.Namespace) -> None:
    check_generation_arguments(args)
    if args.threads is not None and args.threads < 1:
        fail(f"--threads must be >= 1, got {args.threads}")
    if args.save_noise and not args.save_noise.lower().endswith(".npy"):
        fail(f"--save-noise must be a .npy file name, got {args.save_noise}")


def initial_noise(pipe, n_images: int, seed: int):
    """The noise generate_images draws: one generator seeded once, rows in prompt-major order."""
    import numpy as np

    lat = pipe.manifest["latent"]
    shape = [n_images, lat["channels"], lat["height"], lat["width"]]
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


def save_npy(array, path: str) -> None:
    """``numpy.save`` to a temporary file beside ``path``, renamed into place."""
    import numpy as np

    from ernie_vilg2.utils.io import atomic_file

    with atomic_file(path, needed=array.nbytes) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def main(argv=None) -> int:
    tune_cpu_process()
    one_line_warnings()
    args = parse_args(argv)
    check_arguments(args)
    prompts = collect_prompts(args)
    if not os.path.isdir(args.model):
        fail(f"--model: export folder not found: {args.model}")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", message="No ccache found")  # paddle's import-time notice

    from ernie_vilg2.deploy import InferencePipeline

    try:
        pipe = InferencePipeline.from_export(args.model, sampler=args.sampler, verify=args.verify,
                                             device=args.device, threads=args.threads, engine=args.engine,
                                             expert_offload=args.expert_offload)
    except FileNotFoundError as exc:
        fail(f"--model: {exc}")
    except (ErnieViLG2Error, ValueError) as exc:  # ours name the file or field; ValueError: the settings
        fail(str(exc))
    check_pipeline_inputs(pipe, args)
    images = generate_and_save(pipe, prompts, args, {"runner": "paddle-inference (python)"})
    if args.save_noise:
        from ernie_vilg2.utils.io import DiskFullError

        try:
            save_npy(initial_noise(pipe, len(images), args.seed), args.save_noise)
        except DiskFullError as exc:
            fail(f"--save-noise: {exc}")
        print(f"wrote noise {os.path.abspath(args.save_noise)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
