"""Side-by-side comparison sheet of two saved pipelines (the paper's ViLG-300 protocol).

    python tools/compare.py --model-a output/tiny/experts --model-b output/tiny/base \
        --prompts ../shared/data/ViLG-300.csv --limit 20 --out output/compare/experts-vs-base

Generates the same prompts with the same seeds with both models and writes --out/index.html:
one self-contained page (images embedded, no network) where a rater sees each prompt's two
image sets in a random left/right order, votes left better / tie / right better, and exports
the votes as JSON. Also writes the images (--out/images/A, --out/images/B) and --out/sheet.json.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("GLOG_minloglevel", "2")

from ernie_vilg2.cli_utils import (  # noqa: E402
    add_sampling_arguments, check_pipeline_inputs, check_sampling_arguments, fail, generate_with_flags,
    quiet_third_party_logs,
)
from ernie_vilg2.errors import ErnieViLG2Error  # noqa: E402
from ernie_vilg2.utils.cpu_tuning import tune_cpu_process  # noqa: E402
from ernie_vilg2.utils.io import DiskFullError  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model-a", required=True, help="saved pipeline folder of model A")
    p.add_argument("--model-b", required=True, help="saved pipeline folder of model B")
    p.add_argument("--name-a", help="model A's name on the page (default: its folder name)")
    p.add_argument("--name-b", help="model B's name on the page (default: its folder name)")
    p.add_argument("--prompts", required=True,
                   help="a .csv or .tsv/.tab table with a header row (ViLG-300: Prompt, 文本, 类别, 来源), "
                        "else a text file with one prompt per line")
    p.add_argument("--lang", choices=("zh", "en", "both"),
                   help="table column: zh = 文本, en = Prompt, both = each row in Chinese then English "
                        "(default: 文本 if present, else Prompt)")
    p.add_argument("--column", help="read the prompts from this table column instead of --lang's")
    p.add_argument("--limit", type=int, help="use only the first N rows of --prompts")
    p.add_argument("--images-per-prompt", "--num-images-per-prompt", dest="num_images_per_prompt", type=int,
                   default=1, help="images of each model per prompt (default 1)")
    add_sampling_arguments(p)
    p.add_argument("--out", required=True, help="output folder (index.html, sheet.json, images/)")
    return p.parse_args(argv)


def model_names(args: argparse.Namespace):
    """--name-a/--name-b, else the folder names; the same name twice gets the parent folder,
    then " (A)"/" (B)", so the page never shows two models under one name."""
    def tail(path, parts):
        return "/".join(os.path.abspath(path).split(os.sep)[-parts:])

    name_a, name_b = args.name_a or tail(args.model_a, 1), args.name_b or tail(args.model_b, 1)
    if name_a != name_b:
        return name_a, name_b
    if not (args.name_a or args.name_b) and tail(args.model_a, 2) != tail(args.model_b, 2):
        return tail(args.model_a, 2), tail(args.model_b, 2)
    return f"{name_a} (A)", f"{name_b} (B)"


def read_prompts(args: argparse.Namespace):
    from ernie_vilg2.evaluation.prompt_sets import read_prompt_set
    from ernie_vilg2.utils.prompts import PromptColumnError

    if args.lang and args.column:
        fail("--lang and --column choose the same thing: give one")
    try:
        return read_prompt_set(args.prompts, lang=args.lang, column=args.column, limit=args.limit)
    except PromptColumnError as exc:
        fail(f"{'--column' if args.column else '--lang' if args.lang else '--prompts'}: {exc}")
    except (FileNotFoundError, ValueError) as exc:
        fail(f"--prompts: {exc}")


def main(argv=None) -> int:
    tune_cpu_process()
    args = parse_args(argv)
    check_sampling_arguments(args)
    for flag, value in (("--images-per-prompt", args.num_images_per_prompt), ("--limit", args.limit)):
        if value is not None and value < 1:
            fail(f"{flag} must be >= 1, got {value}")
    prompts = read_prompts(args)
    for flag, folder in (("--model-a", args.model_a), ("--model-b", args.model_b)):
        if not os.path.isdir(folder):
            fail(f"{flag}: model folder not found: {folder}")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        fail(f"--out: not a folder: {args.out}")
    name_a, name_b = model_names(args)

    quiet_third_party_logs()
    from ernie_vilg2.evaluation.sheet import SheetItem, write_sheet
    from ernie_vilg2.pipelines import load_pipeline

    pipes = []
    for flag, folder in (("--model-a", args.model_a), ("--model-b", args.model_b)):
        try:
            pipe = load_pipeline(folder, sampler=args.sampler)
        except (FileNotFoundError, ErnieViLG2Error, ValueError) as exc:  # ours name the file; PPDiffusers' too
            fail(f"{flag}: {exc}")
        pipe.set_progress_bar_config(disable=True)
        check_pipeline_inputs(pipe, args)  # both models, before any image is made
        pipes.append(pipe)

    k = args.num_images_per_prompt
    texts = [p.text for p in prompts]
    images = []
    for name, pipe in zip((name_a, name_b), pipes):
        print(f"generating {len(texts) * k} images with {name} ...", flush=True)
        start = time.perf_counter()
        images.append(generate_with_flags(pipe, texts, args))
        print(f"  done in {time.perf_counter() - start:.1f} s", flush=True)

    items = [SheetItem(p.text, images[0][i * k:(i + 1) * k], images[1][i * k:(i + 1) * k], p.category, p.lang)
             for i, p in enumerate(prompts)]
    settings = {"sampler": args.sampler, "steps": args.steps, "guidance": args.guidance, "seed": args.seed,
                "images per prompt": k}
    if args.negative_prompt:
        settings["negative prompt"] = args.negative_prompt
    paths = {"A": os.path.abspath(args.model_a), "B": os.path.abspath(args.model_b)}
    try:
        written = write_sheet(items, args.out, name_a, name_b, seed=args.seed, settings=settings,
                              metadata={"model_paths": paths})
    except DiskFullError as exc:
        fail(f"--out: {exc}")
    print(f"wrote sheet {written['html']} ({len(items)} prompts, {name_a} vs {name_b}; sheet id {written['id']})")
    print(f"wrote images to {os.path.join(args.out, 'images')} and the record {written['json']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
