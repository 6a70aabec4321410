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
import sys

os.environ.setdefault("GLOG_minloglevel", "2")

from ernie_vilg2.cli_utils import (  # noqa: E402
    add_generation_arguments, check_generation_arguments, check_pipeline_inputs, collect_prompts, fail,
    generate_and_save, quiet_third_party_logs,
)
from ernie_vilg2.errors import ErnieViLG2Error  # noqa: E402
from ernie_vilg2.utils.cpu_tuning import tune_cpu_process  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", required=True, help="saved pipeline folder (with model_index.json)")
    add_generation_arguments(p)
    p.add_argument("--keyword-emphasis", type=float, metavar="W_T",
                   help="textual knowledge at sampling: scale cross-attention scores of key words by 1 + W_T "
                        "(key words from LAC / the English tagger; off by default, as in the paper)")
    p.add_argument("--user-dict", help="user dictionary for --keyword-emphasis (forced words/tags)")
    p.add_argument("--expert-offload", choices=("cpu", "disk"),
                   help="keep one expert on the device: the others on the host (cpu) or read from the model "
                        "folder when their timesteps come (disk: host memory of one expert)")
    return p.parse_args(argv)


def check_arguments(args: argparse.Namespace) -> None:
    check_generation_arguments(args)
    if args.keyword_emphasis is not None and args.keyword_emphasis < 0:
        fail(f"--keyword-emphasis must be >= 0, got {args.keyword_emphasis}")
    if args.user_dict and args.keyword_emphasis is None:
        fail("--user-dict needs --keyword-emphasis")
    if args.user_dict and not os.path.isfile(args.user_dict):
        fail(f"--user-dict: file not found: {args.user_dict}")


def keyword_emphasis(pipe, prompts, args):
    """Install the key-word emphasis processor in every expert; return the prompts' masks."""
    import numpy as np

    from ernie_vilg2.knowledge.textual import TextualKnowledgeConfig, build_text_inputs
    from ernie_vilg2.models.attention_processor import FastAttnProcessor

    cfg = TextualKnowledgeConfig(enabled=True, pos_tokens=False, w_t=args.keyword_emphasis,
                                 user_dict=args.user_dict, apply_at_sampling=True)
    inputs = build_text_inputs(prompts, pipe.tokenizer, pipe.max_length, cfg, np.random.default_rng(0),
                               training=False)
    pipe.unet.set_attn_processor(FastAttnProcessor(args.keyword_emphasis))
    return inputs["key_token_mask"]


def main(argv=None) -> int:
    tune_cpu_process()
    args = parse_args(argv)
    check_arguments(args)
    prompts = collect_prompts(args)
    if not os.path.isdir(args.model):
        fail(f"--model: model folder not found: {args.model}")

    quiet_third_party_logs()
    from ernie_vilg2.pipelines import load_pipeline

    try:
        pipe = load_pipeline(args.model, sampler=args.sampler, expert_offload=args.expert_offload)
    except (FileNotFoundError, ErnieViLG2Error, ValueError) as exc:  # ours name the file; PPDiffusers' too
        fail(f"--model: {exc}")
    pipe.set_progress_bar_config(disable=True)
    check_pipeline_inputs(pipe, args)
    key_token_mask = keyword_emphasis(pipe, prompts, args) if args.keyword_emphasis is not None else None
    generate_and_save(pipe, prompts, args, {}, key_token_mask=key_token_mask)
    return 0


if __name__ == "__main__":
    sys.exit(main())
