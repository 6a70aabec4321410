"""Helpers for the command-line tools (tools/*.py, deploy/python/infer.py): one-line errors,
quieter third-party logging, and the prompt/sampling arguments that tools/generate.py,
tools/compare.py and the Paddle Inference runner share (so all take and check the same flags
the same way).

Importing this module imports neither Paddle, PPDiffusers nor PaddleNLP.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import warnings
from typing import Dict, List, NoReturn, Optional, Sequence

from .pipelines.checks import check_seed, expert_guidance_scales
from .pipelines.generation import generate_images, save_generation
from .text.tokenizer import lone_surrogate
from .utils.io import DiskFullError
from .utils.prompts import PromptColumnError, read_prompts


def fail(message: str) -> NoReturn:
    """One line ``error: ...`` on stderr and exit status 2 (as argparse does for a bad argument)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def quiet_third_party_logs(level: str = "WARNING") -> None:
    """Keep tool output readable: PaddleNLP/PPDiffusers INFO lines and import-time
    deprecation warnings of their dependencies hide the lines a user needs."""
    logging.basicConfig(level=getattr(logging, level), format="%(levelname)s %(name)s: %(message)s")
    for category in (DeprecationWarning, UserWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category)
    from paddlenlp.utils.log import logger as nlp_logger
    from ppdiffusers.utils import logging as diffusers_logging

    nlp_logger.set_level(level)
    diffusers_logging.set_verbosity(getattr(logging, level))
    diffusers_logging.disable_progress_bar()  # "Loading pipeline components..." on every load


def one_line_warnings() -> None:
    """Show warnings as ``warning: MESSAGE`` (the runners' fallbacks, e.g. from the C++ CPU
    operators), as the C++ runner prints them."""
    warnings.formatwarning = lambda message, category, filename, lineno, line=None: f"warning: {message}\n"


# -- the generation arguments of tools/generate.py, tools/compare.py and deploy/python/infer.py ----
def check_model_and_out(args: argparse.Namespace) -> None:
    """The folder tools (export, merge, branch): --model an existing folder, --out new unless --overwrite."""
    if not os.path.isdir(args.model):
        fail(f"--model: model folder not found: {args.model}")
    if os.path.exists(args.out) and not args.overwrite:
        fail(f"--out: {args.out} already exists (pass --overwrite to replace it)")


def add_guidance_argument(p) -> None:
    """``--guidance G[,G...]`` (also tools/evaluate.py's); :func:`check_seed_and_guidance` parses it."""
    p.add_argument("--guidance", default=2.1, metavar="G[,G...]",
                   help="classifier-free guidance scale (1 = off), or one per expert separated by commas "
                        "(3,3,2,...: expert 0, the least noisy, first)")


def add_sampling_arguments(p: argparse.ArgumentParser, size_help: str = "default: the model's resolution") -> None:
    """The sampler settings every generating tool takes (tools/generate.py, tools/compare.py,
    deploy/python/infer.py): negative prompt, seed, steps, guidance, sampler, size, batch size."""
    p.add_argument("--negative-prompt", default=None, help="negative prompt for all images (default: empty)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial noise (>= 0)")
    p.add_argument("--steps", type=int, default=25,
                   help="sampling steps (at most 999 for dpm, 1000 for ddim with the usual T = 1000)")
    add_guidance_argument(p)
    p.add_argument("--sampler", choices=("ddim", "dpm"), default="dpm", help="ddim or dpm (DPM-Solver++)")
    p.add_argument("--height", type=int, help=f"image height ({size_help})")
    p.add_argument("--width", type=int, help=f"image width ({size_help})")
    p.add_argument("--batch-size", type=int, default=4, help="prompts per pipeline call")


def add_generation_arguments(p: argparse.ArgumentParser, size_help: str = "default: the model's resolution") -> None:
    """Prompts, sampling settings and outputs (``--model`` and runner options are the tool's)."""
    src = p.add_argument_group("prompts (give --prompt and/or --prompt-file)")
    src.add_argument("--prompt", action="append", default=[], help="a prompt; repeat for several")
    src.add_argument("--prompt-file", help="a .csv or .tsv/.tab file (with a header row), "
                                           "else a text file with one prompt per line")
    src.add_argument("--column", help="CSV/TSV column with the prompts (default: 文本 if present, else Prompt)")
    src.add_argument("--limit", type=int, help="use only the first N prompts of --prompt-file")
    add_sampling_arguments(p, size_help)
    p.add_argument("--num-images-per-prompt", type=int, default=1)
    p.add_argument("--cols", type=int, help="grid columns (default: --num-images-per-prompt if > 1, else square)")
    p.add_argument("--out", default="samples/grid.png", help="grid PNG path; singles go beside it")


def utf8_error(raw: bytes, with_line: bool = False) -> Optional[str]:
    """None if ``raw`` is valid UTF-8, else where it is not (and on which line)."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        where = f"byte 0x{raw[exc.start]:02x} at offset {exc.start}"
        if with_line:
            where += ", line %d" % (raw.count(b"\n", 0, exc.start) + 1)
        return f"not valid UTF-8 ({where})"
    return None


def argument_text_error(text: str) -> Optional[str]:
    """None if the command-line value ``text`` is valid text, else why not. Python keeps
    argument bytes that are not UTF-8 as lone surrogates (surrogateescape): images would be
    made, then writing the prompt to the captions JSON would fail."""
    try:
        raw = text.encode("utf-8", "surrogateescape")  # the bytes as typed
    except UnicodeEncodeError:  # a surrogate that stands for no byte
        return f"not valid Unicode text ({lone_surrogate(text)})"
    return utf8_error(raw)


def check_sampling_arguments(args: argparse.Namespace) -> None:
    """Refuse impossible values of :func:`add_sampling_arguments`' flags, naming the flag:
    the pipelines' own rules (:mod:`ernie_vilg2.pipelines.checks`), checked before loading."""
    for flag, value in (("--steps", args.steps), ("--batch-size", args.batch_size)):
        if value < 1:
            fail(f"{flag} must be >= 1, got {value}")
    check_seed_and_guidance(args)
    problem = argument_text_error(args.negative_prompt or "")
    if problem:
        fail(f"--negative-prompt: {problem}")


def check_seed_and_guidance(args: argparse.Namespace) -> None:
    """``--seed`` and ``--guidance`` by the pipelines' rules; ``args.guidance`` becomes a number or
    a list (its length is checked against the model's experts once the model is loaded)."""
    args.guidance = parse_guidance(args.guidance)
    try:
        check_seed(args.seed)
        expert_guidance_scales(args.guidance, len(args.guidance) if isinstance(args.guidance, list) else 1)
    except ValueError as exc:
        fail(flag_message(exc))


def parse_guidance(value):
    """``--guidance``: a number, or one number per expert separated by commas (a list)."""
    if not isinstance(value, str):
        return value
    try:
        scales = [float(part) for part in value.split(",")]
    except ValueError:
        fail(f"--guidance: expected a number or one number per expert separated by commas (e.g. 3,3,2), got {value!r}")
    return scales[0] if len(scales) == 1 else scales


def check_generation_arguments(args: argparse.Namespace) -> None:
    """Refuse impossible values of :func:`add_generation_arguments`' flags, naming the flag."""
    check_sampling_arguments(args)
    for flag, value in (("--num-images-per-prompt", args.num_images_per_prompt), ("--limit", args.limit),
                        ("--cols", args.cols)):
        if value is not None and value < 1:
            fail(f"{flag} must be >= 1, got {value}")
    if not args.out.lower().endswith(".png"):
        fail(f"--out must be a .png file name, got {args.out}")
    for flag, path in (("--out", args.out), ("--model", getattr(args, "model", None))):
        problem = path and argument_text_error(path)  # both are written to the captions JSON
        if problem:
            fail(f"{flag}: {problem}")


def collect_prompts(args: argparse.Namespace) -> List[str]:
    """``--prompt`` values, then those of ``--prompt-file``; errors name the flag."""
    prompts = list(args.prompt)
    for number, prompt in enumerate(prompts, 1):
        problem = argument_text_error(prompt)
        if problem:
            fail(f"--prompt #{number}: {problem}")
    if args.prompt_file:
        try:
            prompts += read_prompts(args.prompt_file, column=args.column, limit=args.limit)
        except PromptColumnError as exc:
            fail(f"--column: {exc}")
        except UnicodeDecodeError:  # its position is within a read buffer: find it in the file
            with open(args.prompt_file, "rb") as f:
                fail(f"--prompt-file: {args.prompt_file}: {utf8_error(f.read(), with_line=True)}")
        except (FileNotFoundError, ValueError) as exc:
            fail(f"--prompt-file: {exc}")
    elif args.column or args.limit:
        fail("--column/--limit need --prompt-file")
    if not prompts:
        fail("no prompt given: use --prompt TEXT or --prompt-file FILE")
    return prompts


# The pipelines' input errors start with the argument's name; the user typed the flag.
PIPELINE_FLAGS = {"num_inference_steps": "--steps", "guidance_scale": "--guidance", "seed": "--seed",
                  "num_images_per_prompt": "--num-images-per-prompt", "height": "--height", "width": "--width"}


def flag_message(exc: Exception) -> str:
    """``exc``'s message with a leading pipeline argument name replaced by its flag."""
    message = str(exc)
    name = re.match(r"\w+", message)
    if name and name.group() in PIPELINE_FLAGS:
        message = PIPELINE_FLAGS[name.group()] + message[name.end():]
    return message


def check_pipeline_inputs(pipe, args: argparse.Namespace) -> None:
    """``pipe.check_inputs`` with the flags' values, before any work (the sampler's step
    limit and the model's size are known once it is loaded)."""
    try:
        pipe.check_inputs(num_inference_steps=args.steps, guidance_scale=args.guidance, height=args.height,
                          width=args.width, num_images_per_prompt=args.num_images_per_prompt, seed=args.seed)
    except ValueError as exc:
        fail(flag_message(exc))


def generate_with_flags(pipe, prompts: Sequence[str], args: argparse.Namespace, **call_kwargs) -> List:
    """``generate_images`` with the flags' sampling settings; an input error names the flag."""
    try:
        return generate_images(
            pipe, prompts, batch_size=args.batch_size, seed=args.seed,
            num_images_per_prompt=args.num_images_per_prompt, negative_prompt=args.negative_prompt,
            num_inference_steps=args.steps, guidance_scale=args.guidance, height=args.height, width=args.width,
            **call_kwargs,
        )
    except (ValueError, TypeError) as exc:  # the pipeline's input checks name the argument
        fail(flag_message(exc))


def generate_and_save(pipe, prompts: Sequence[str], args: argparse.Namespace, metadata: Dict, **call_kwargs) -> List:
    """``generate_images`` with the flags' settings, then the grid, the single images and the
    captions JSON at ``--out`` (reported on stdout); a full disk ends here in one line. Returns the images."""
    images = generate_with_flags(pipe, prompts, args, **call_kwargs)
    captions = [p for p in prompts for _ in range(args.num_images_per_prompt)]
    cols = args.cols or (args.num_images_per_prompt if args.num_images_per_prompt > 1 else None)
    meta = {"model": os.path.abspath(args.model), **metadata, "sampler": args.sampler, "steps": args.steps,
            "guidance": args.guidance, "seed": args.seed, "negative_prompt": args.negative_prompt}
    try:
        written = save_generation(images, captions, args.out, cols=cols, metadata=meta)
    except DiskFullError as exc:
        fail(f"--out: {exc}")
    print(f"wrote grid {written['grid']}")
    count = len(written["images"])
    print(f"wrote {count} image{'s' if count != 1 else ''} to {os.path.dirname(written['grid'])} "
          f"({os.path.basename(written['images'][0])} ...)")
    print(f"wrote captions {written['captions']}")
    return images
