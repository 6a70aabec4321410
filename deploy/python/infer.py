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
import re
import sys
import warnings

os.environ.setdefault("GLOG_minloglevel", "2")

from ernie_vilg2.deploy.predictor import ENGINES  # noqa: E402  (NumPy only: cheap)


def fail(message: str) -> "NoReturn":
    """One line on stderr and exit status 2 (as argparse does for a bad argument)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", required=True, help="export folder (with manifest.json) from tools/export_model.py")
    src = p.add_argument_group("prompts (give --prompt and/or --prompt-file)")
    src.add_argument("--prompt", action="append", default=[], help="a prompt; repeat for several")
    src.add_argument("--prompt-file", help="text file with one prompt per line, or a .csv/.tsv file with a header row")
    src.add_argument("--column", help="CSV/TSV column with the prompts (default: 文本 if present, else Prompt)")
    src.add_argument("--limit", type=int, help="use only the first N prompts of --prompt-file")
    p.add_argument("--negative-prompt", default=None, help="negative prompt for all images (default: empty)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial noise (>= 0)")
    p.add_argument("--steps", type=int, default=25, help="sampling steps")
    p.add_argument("--guidance", type=float, default=2.1, help="classifier-free guidance scale (1 = off)")
    p.add_argument("--sampler", choices=("ddim", "dpm"), default="dpm", help="ddim or dpm (DPM-Solver++)")
    p.add_argument("--num-images-per-prompt", type=int, default=1)
    p.add_argument("--height", type=int, help="image height (must be the exported size; default: it)")
    p.add_argument("--width", type=int, help="image width (must be the exported size; default: it)")
    p.add_argument("--batch-size", type=int, default=4, help="prompts per pipeline call")
    p.add_argument("--cols", type=int, help="grid columns (default: --num-images-per-prompt if > 1, else square)")
    p.add_argument("--out", default="samples/grid.png", help="grid PNG path; singles go beside it")
    run = p.add_argument_group("Paddle Inference")
    run.add_argument("--device", choices=("cpu", "gpu"), default="cpu", help="gpu needs paddlepaddle-gpu")
    run.add_argument("--threads", type=int, help="CPU math library threads per predictor (default: Paddle's, 1)")
    run.add_argument("--engine", choices=ENGINES, default="paddle",
                     help="paddle (native kernels, bit-identical to the dynamic graph), onednn (CPU, fastest, "
                          "about 1e-6 off), openvino (CPU) or tensorrt (GPU, optional)")
    run.add_argument("--verify", choices=("sha256", "size"), default="sha256",
                     help="check the export's files by SHA-256 (default) or by size only (fast, large exports)")
    run.add_argument("--save-noise", metavar="FILE.npy", help="write the initial noise (for the C++ runner's --noise)")
    return p.parse_args(argv)


def collect_prompts(args: argparse.Namespace):
    from ernie_vilg2.utils.prompts import PromptColumnError, read_prompts

    prompts = list(args.prompt)
    if args.prompt_file:
        try:
            prompts += read_prompts(args.prompt_file, column=args.column, limit=args.limit)
        except FileNotFoundError as exc:
            fail(f"--prompt-file: {exc}")
        except PromptColumnError as exc:
            fail(f"--column: {exc}")
        except ValueError as exc:
            fail(f"--prompt-file: {exc}")
    elif args.column or args.limit:
        fail("--column/--limit need --prompt-file")
    if not prompts:
        fail("no prompt given: use --prompt TEXT or --prompt-file FILE")
    return prompts


def check_numbers(args: argparse.Namespace) -> None:
    for flag, value in (("--steps", args.steps), ("--num-images-per-prompt", args.num_images_per_prompt),
                        ("--batch-size", args.batch_size), ("--limit", args.limit), ("--cols", args.cols),
                        ("--threads", args.threads)):
        if value is not None and value < 1:
            fail(f"{flag} must be >= 1, got {value}")
    if args.seed < 0:
        fail(f"--seed must be >= 0, got {args.seed}")
    if args.guidance < 0:
        fail(f"--guidance must be >= 0, got {args.guidance}")
    if not args.out.lower().endswith(".png"):
        fail(f"--out must be a .png file name, got {args.out}")
    if args.save_noise and not args.save_noise.lower().endswith(".npy"):
        fail(f"--save-noise must be a .npy file name, got {args.save_noise}")


# The pipeline's input errors start with the argument's name; the user typed the flag.
FLAGS = {"num_inference_steps": "--steps", "guidance_scale": "--guidance", "seed": "--seed",
         "num_images_per_prompt": "--num-images-per-prompt", "height": "--height", "width": "--width"}


def flag_message(exc: Exception) -> str:
    """``exc``'s message with a leading pipeline argument name replaced by its flag."""
    message = str(exc)
    name = re.match(r"\w+", message)
    if name and name.group() in FLAGS:
        message = FLAGS[name.group()] + message[name.end():]
    return message


def initial_noise(pipe, n_images: int, seed: int):
    """The noise generate_images draws: one generator seeded once, rows in prompt-major order."""
    import numpy as np

    lat = pipe.manifest["latent"]
    shape = [n_images, lat["channels"], lat["height"], lat["width"]]
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


def save_npy(array, path: str) -> None:
    """``numpy.save`` to a temporary file beside ``path``, renamed into place."""
    import numpy as np

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def main(argv=None) -> int:
    args = parse_args(argv)
    check_numbers(args)
    prompts = collect_prompts(args)
    if not os.path.isdir(args.model):
        fail(f"--model: export folder not found: {args.model}")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", message="No ccache found")  # paddle's import-time notice

    from ernie_vilg2.deploy import InferencePipeline
    from ernie_vilg2.pipelines.generation import generate_images, save_generation

    try:
        pipe = InferencePipeline.from_export(args.model, sampler=args.sampler, verify=args.verify,
                                             device=args.device, threads=args.threads, engine=args.engine)
    except FileNotFoundError as exc:
        fail(f"--model: {exc}")
    except ValueError as exc:  # ManifestError, DamagedFileError, settings: they name the file or field
        fail(str(exc))
    try:  # before any work: the sampler's step limit and the exported size are known now
        pipe.check_inputs(num_inference_steps=args.steps, guidance_scale=args.guidance, height=args.height,
                          width=args.width, num_images_per_prompt=args.num_images_per_prompt, seed=args.seed)
    except ValueError as exc:
        fail(flag_message(exc))
    try:
        images = generate_images(
            pipe, prompts, batch_size=args.batch_size, seed=args.seed,
            num_images_per_prompt=args.num_images_per_prompt, negative_prompt=args.negative_prompt,
            num_inference_steps=args.steps, guidance_scale=args.guidance, height=args.height, width=args.width,
        )
    except (ValueError, TypeError) as exc:  # the pipeline's input checks name the field
        fail(flag_message(exc))
    captions = [p for p in prompts for _ in range(args.num_images_per_prompt)]
    cols = args.cols or (args.num_images_per_prompt if args.num_images_per_prompt > 1 else None)
    meta = {"model": os.path.abspath(args.model), "runner": "paddle-inference (python)", "sampler": args.sampler,
            "steps": args.steps, "guidance": args.guidance, "seed": args.seed,
            "negative_prompt": args.negative_prompt}
    written = save_generation(images, captions, args.out, cols=cols, metadata=meta)
    print(f"wrote grid {written['grid']}")
    print(f"wrote {len(written['images'])} images to {os.path.dirname(written['grid'])} "
          f"({os.path.basename(written['images'][0])} ...)")
    print(f"wrote captions {written['captions']}")
    if args.save_noise:
        save_npy(initial_noise(pipe, len(images), args.seed), args.save_noise)
        print(f"wrote noise {os.path.abspath(args.save_noise)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
