"""Generate images from a saved ERNIE-ViLG 2.0 pipeline.

    python tools/generate.py --model output/tiny/pipeline --prompt 红苹果 --prompt "a blue heart" \
        --steps 25 --sampler dpm --seed 0 --out samples/grid.png
    python tools/generate.py --model DIR --prompt-file ../shared/data/ViLG-300.csv --limit 8 --out g.png

Writes the grid to --out, the single images beside it (<stem>_000.png, ...; as many
digits as the image count has, at least 3) and <stem>.json mapping each file to its prompt.
"""
from __future__ import annotations

import argparse
import os
import re
import sys

os.environ.setdefault("GLOG_minloglevel", "2")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", required=True, help="saved pipeline folder (with model_index.json)")
    src = p.add_argument_group("prompts (give --prompt and/or --prompt-file)")
    src.add_argument("--prompt", action="append", default=[], help="a prompt; repeat for several")
    src.add_argument("--prompt-file", help="a .csv or .tsv/.tab file (with a header row), "
                                           "else a text file with one prompt per line")
    src.add_argument("--column", help="CSV/TSV column with the prompts (default: 文本 if present, else Prompt)")
    src.add_argument("--limit", type=int, help="use only the first N prompts of --prompt-file")
    p.add_argument("--negative-prompt", default=None, help="negative prompt for all images (default: empty)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial noise (>= 0)")
    p.add_argument("--steps", type=int, default=25,
                   help="sampling steps (at most 999 for dpm, 1000 for ddim with the usual T = 1000)")
    p.add_argument("--guidance", type=float, default=2.1, help="classifier-free guidance scale (1 = off)")
    p.add_argument("--sampler", choices=("ddim", "dpm"), default="dpm", help="ddim or dpm (DPM-Solver++)")
    p.add_argument("--num-images-per-prompt", type=int, default=1)
    p.add_argument("--height", type=int, help="image height (default: the model's resolution)")
    p.add_argument("--width", type=int, help="image width (default: the model's resolution)")
    p.add_argument("--batch-size", type=int, default=4, help="prompts per pipeline call")
    p.add_argument("--cols", type=int, help="grid columns (default: --num-images-per-prompt if > 1, else square)")
    p.add_argument("--out", default="samples/grid.png", help="grid PNG path; singles go beside it")
    p.add_argument("--keyword-emphasis", type=float, metavar="W_T",
                   help="textual knowledge at sampling: scale cross-attention scores of key words by 1 + W_T "
                        "(key words from LAC / the English tagger; off by default, as in the paper)")
    p.add_argument("--user-dict", help="user dictionary for --keyword-emphasis (forced words/tags)")
    return p.parse_args(argv)


def collect_prompts(args: argparse.Namespace):
    from ernie_vilg2.utils.prompts import PromptColumnError, read_prompts

    prompts = list(args.prompt)
    if args.prompt_file:
        try:
            prompts += read_prompts(args.prompt_file, column=args.column, limit=args.limit)
        except FileNotFoundError as exc:
            raise SystemExit(f"error: --prompt-file: {exc}") from None
        except PromptColumnError as exc:
            raise SystemExit(f"error: --column: {exc}") from None
        except ValueError as exc:
            raise SystemExit(f"error: --prompt-file: {exc}") from None
    elif args.column or args.limit:
        raise SystemExit("error: --column/--limit need --prompt-file")
    if not prompts:
        raise SystemExit("error: no prompt given: use --prompt TEXT or --prompt-file FILE")
    return prompts


def check_numbers(args: argparse.Namespace) -> None:
    for flag, value in (("--steps", args.steps), ("--num-images-per-prompt", args.num_images_per_prompt),
                        ("--batch-size", args.batch_size), ("--limit", args.limit), ("--cols", args.cols)):
        if value is not None and value < 1:
            raise SystemExit(f"error: {flag} must be >= 1, got {value}")
    if args.seed < 0:
        raise SystemExit(f"error: --seed must be >= 0, got {args.seed}")
    if args.guidance < 0:
        raise SystemExit(f"error: --guidance must be >= 0, got {args.guidance}")
    if args.keyword_emphasis is not None and args.keyword_emphasis < 0:
        raise SystemExit(f"error: --keyword-emphasis must be >= 0, got {args.keyword_emphasis}")
    if args.user_dict and args.keyword_emphasis is None:
        raise SystemExit("error: --user-dict needs --keyword-emphasis")
    if args.user_dict and not os.path.isfile(args.user_dict):
        raise SystemExit(f"error: --user-dict: file not found: {args.user_dict}")
    if not args.out.lower().endswith(".png"):
        raise SystemExit(f"error: --out must be a .png file name, got {args.out}")


# The pipeline's input errors start with the argument's name; the user typed the flag.
FLAGS = {"num_inference_steps": "--steps", "guidance_scale": "--guidance", "seed": "--seed",
         "num_images_per_prompt": "--num-images-per-prompt", "height": "--height", "width": "--width"}


def flag_error(exc: Exception) -> str:
    """``error: ...`` with a leading pipeline argument name replaced by its flag."""
    message = str(exc)
    name = re.match(r"\w+", message)
    if name and name.group() in FLAGS:
        message = FLAGS[name.group()] + message[name.end():]
    return f"error: {message}"


def keyword_emphasis(pipe, prompts, args):
    """Install the key-word emphasis processor in every expert; return the prompts' masks."""
    import numpy as np

    from ernie_vilg2.knowledge.textual import TextualKnowledgeConfig, build_text_inputs
    from ernie_vilg2.models.attention_processor import KnowledgeAttnProcessor

    cfg = TextualKnowledgeConfig(enabled=True, pos_tokens=False, w_t=args.keyword_emphasis,
                                 user_dict=args.user_dict, apply_at_sampling=True)
    inputs = build_text_inputs(prompts, pipe.tokenizer, pipe.max_length, cfg, np.random.default_rng(0),
                               training=False)
    pipe.unet.set_attn_processor(KnowledgeAttnProcessor(args.keyword_emphasis))
    return inputs["key_token_mask"]


def main(argv=None) -> int:
    args = parse_args(argv)
    check_numbers(args)
    prompts = collect_prompts(args)
    if not os.path.isdir(args.model):
        raise SystemExit(f"error: --model: model folder not found: {args.model}")

    from ernie_vilg2.cli_utils import quiet_third_party_logs

    quiet_third_party_logs()
    from ernie_vilg2.pipelines import generate_images, load_pipeline, save_generation

    try:
        pipe = load_pipeline(args.model, sampler=args.sampler)
    except (FileNotFoundError, ValueError) as exc:  # ValueError: a damaged file, named in one line
        raise SystemExit(f"error: --model: {exc}") from None
    pipe.set_progress_bar_config(disable=True)
    try:  # before any work (the sampler's step limit is known once the pipeline is loaded)
        pipe.check_inputs(num_inference_steps=args.steps, guidance_scale=args.guidance, height=args.height,
                          width=args.width, num_images_per_prompt=args.num_images_per_prompt, seed=args.seed)
    except ValueError as exc:
        raise SystemExit(flag_error(exc)) from None
    key_token_mask = keyword_emphasis(pipe, prompts, args) if args.keyword_emphasis is not None else None
    try:
        images = generate_images(
            pipe, prompts, batch_size=args.batch_size, seed=args.seed,
            num_images_per_prompt=args.num_images_per_prompt, negative_prompt=args.negative_prompt,
            num_inference_steps=args.steps, guidance_scale=args.guidance, height=args.height, width=args.width,
            key_token_mask=key_token_mask,
        )
    except (ValueError, TypeError) as exc:  # the pipeline's input checks name the field
        raise SystemExit(flag_error(exc)) from None
    captions = [p for p in prompts for _ in range(args.num_images_per_prompt)]
    cols = args.cols or (args.num_images_per_prompt if args.num_images_per_prompt > 1 else None)
    meta = {"model": os.path.abspath(args.model), "sampler": args.sampler, "steps": args.steps,
            "guidance": args.guidance, "seed": args.seed, "negative_prompt": args.negative_prompt}
    written = save_generation(images, captions, args.out, cols=cols, metadata=meta)
    print(f"wrote grid {written['grid']}")
    print(f"wrote {len(written['images'])} images to {os.path.dirname(written['grid'])} "
          f"({os.path.basename(written['images'][0])} ...)")
    print(f"wrote captions {written['captions']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
