"""Stage 2 initialisation: copy a stage-1 pipeline's U-Net into N denoising experts.

    python tools/branch_experts.py --model output/stage1/pipeline --num-experts 10 --out output/stage2_init
    python tools/branch_experts.py --model output/stage1/pipeline --num-experts 2 --boundaries snr --out output/snr
    python tools/branch_experts.py --model output/stage1/pipeline --num-experts 10 --lora-rank 4 --out output/lora
    python tools/branch_experts.py --model tests/fixtures/pretrained/tiny-sd --config configs/tiny_pretrained.yaml \
        --num-experts 10 --out output/branched

With --lora-rank the experts are LoRA experts: the U-Net once, frozen, and a low-rank adapter
set per expert (model.expert_type: lora). The VAE, text encoder, tokenizer and scheduler are saved unchanged. --model may also be a
pretrained U-Net folder or a pipeline folder with unet/ (diffusers or PPDiffusers format, e.g.
Stable Diffusion's): its U-Net is branched, and --config (an experiment config) gives the
rest: the VAE, the text encoder, the noise schedule (its model.unet.pretrained is --model).
The output folder is written atomically (temporary folder beside --out, renamed when complete).
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("GLOG_minloglevel", "2")

from ernie_vilg2.cli_utils import check_model_and_out, fail, quiet_third_party_logs  # noqa: E402
from ernie_vilg2.errors import ErnieViLG2Error  # noqa: E402
from ernie_vilg2.utils.cpu_tuning import tune_cpu_process  # noqa: E402
from ernie_vilg2.utils.integrity import DamagedFileError, read_json_file  # noqa: E402
from ernie_vilg2.utils.io import DiskFullError  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="stage-1 pipeline folder (1 expert), or a pretrained U-Net or "
                                                  "pipeline folder (with --config)")
    p.add_argument("--config", help="experiment config (YAML) for a pretrained --model: VAE, text encoder, schedule")
    p.add_argument("-o", "--opt", action="append", default=[], help="config override section.key=value (repeatable)")
    p.add_argument("--num-experts", type=int, required=True,
                   help="number of experts N (with --boundaries uniform it must divide T)")
    p.add_argument("--boundaries", default="uniform", metavar="uniform|snr|T1,T2,...",
                   help="where the experts switch: uniform (the paper), snr (equal shares of log-SNR over the "
                        "model's noise schedule) or N-1 increasing timesteps (model.expert_boundaries)")
    p.add_argument("--lora-rank", type=int, metavar="R",
                   help="LoRA experts of rank R over one shared U-Net instead of full copies (model.lora.rank)")
    p.add_argument("--lora-alpha", type=float, help="with --lora-rank: scale the update by alpha / R (model.lora.alpha)")
    p.add_argument("--lora-targets", metavar="NAME,NAME",
                   help="with --lora-rank: linear layers to adapt (model.lora.targets; default to_q,to_k,to_v,to_out.0)")
    p.add_argument("--out", required=True, help="output pipeline folder")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    return p.parse_args(argv)


def parse_boundaries(text: str):
    """``--boundaries``: ``uniform``, ``snr`` or comma-separated timesteps (a list)."""
    if text in ("uniform", "snr"):
        return text
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        fail(f"--boundaries: expected uniform, snr or increasing timesteps separated by commas, got {text!r}")


def precheck(model_dir: str, num_experts: int, boundaries) -> None:
    """Fail in a second, before the heavy imports, on what the denoiser config already tells."""
    path = os.path.join(model_dir, "unet", "config.json")
    if not os.path.isfile(path):
        return  # branch_pipeline_folder reports a malformed folder
    try:
        config = read_json_file(path)
    except DamagedFileError as exc:
        fail(f"--model: {exc}")
    if config.get("num_experts", 1) != 1:
        fail(f"--model: {model_dir} is not a stage-1 model: its unet has {config['num_experts']} experts, "
             "branching needs 1 expert")
    steps = config.get("num_train_timesteps", 1000)
    if boundaries == "uniform" and steps % num_experts:
        fail(f"--num-experts: {num_experts} does not divide num_train_timesteps ({steps})")


def is_ernie_vilg2_pipeline(model_dir: str) -> bool:
    path = os.path.join(model_dir, "model_index.json")
    if not os.path.isfile(path):
        return False
    try:
        index = read_json_file(path)
    except DamagedFileError as exc:
        fail(f"--model: {exc}")
    return isinstance(index, dict) and index.get("_class_name") == "ErnieViLG2Pipeline"


def lora_settings(args):
    """LoRAExperts' keyword arguments from --lora-*, or None (full experts)."""
    if args.lora_rank is None:
        if args.lora_alpha is not None or args.lora_targets is not None:
            fail("--lora-alpha/--lora-targets: only with --lora-rank")
        return None
    if args.lora_rank < 1:
        fail(f"--lora-rank must be >= 1, got {args.lora_rank}")
    if args.lora_alpha is not None and not args.lora_alpha > 0:
        fail(f"--lora-alpha must be positive, got {args.lora_alpha}")
    targets = None if args.lora_targets is None else [t.strip() for t in args.lora_targets.split(",")]
    if targets is not None and not all(targets):
        fail(f"--lora-targets: expected layer names separated by commas, got {args.lora_targets!r}")
    settings = {"lora_rank": args.lora_rank, "lora_alpha": args.lora_alpha}
    return settings if targets is None else {**settings, "lora_targets": targets}


def lora_overrides(args):
    """--lora-* as config overrides (model.expert_type, model.lora.*)."""
    settings = lora_settings(args)
    if settings is None:
        return []
    opts = ["model.expert_type=lora", f"model.lora.rank={settings['lora_rank']}"]
    if settings["lora_alpha"] is not None:
        opts.append(f"model.lora.alpha={settings['lora_alpha']}")
    if "lora_targets" in settings:
        opts.append("model.lora.targets=[" + ", ".join(settings["lora_targets"]) + "]")
    return opts


def branch_pretrained(args, boundaries) -> None:
    """A pipeline of --config whose experts are copies of --model's U-Net, switching at
    ``boundaries`` (--boundaries), saved to --out."""
    from ernie_vilg2.pipelines.building import build_pipeline
    from ernie_vilg2.training.config import load_config
    from ernie_vilg2.utils.io import atomic_directory

    try:
        rule = boundaries if isinstance(boundaries, str) else "[" + ", ".join(map(str, boundaries)) + "]"
        cfg = load_config(args.config, list(args.opt) + [f"model.unet.pretrained={args.model}",
                                                         f"model.num_experts={args.num_experts}",
                                                         f"model.expert_boundaries={rule}"] + lora_overrides(args))
        if boundaries == "uniform" and cfg.model.num_train_timesteps % args.num_experts:
            fail(f"--num-experts: {args.num_experts} does not divide model.num_train_timesteps "
                 f"({cfg.model.num_train_timesteps})")
        pipe = build_pipeline(cfg.model, cfg.data.resolution, num_experts=args.num_experts,
                              sampler=cfg.sample.sampler, expert_type=cfg.model.expert_type)
        with atomic_directory(args.out, overwrite=args.overwrite) as tmp:
            pipe.save_pretrained(str(tmp))
    except DiskFullError as exc:
        fail(f"--out: {exc}")
    except (OSError, ErnieViLG2Error) as exc:  # a config error names its field, a damaged folder its file
        fail(str(exc))


def main(argv=None) -> int:
    tune_cpu_process()
    args = parse_args(argv)
    if args.num_experts < 1:
        fail(f"--num-experts must be >= 1, got {args.num_experts}")
    check_model_and_out(args)
    boundaries = parse_boundaries(args.boundaries)
    lora = lora_settings(args)
    if not is_ernie_vilg2_pipeline(args.model):
        if not args.config:
            fail(f"--config: --model {args.model} is not an ERNIE-ViLG 2.0 pipeline; branching a pretrained U-Net "
                 "needs an experiment config for the VAE, the text encoder and the noise schedule")
        quiet_third_party_logs()
        branch_pretrained(args, boundaries)
        print(f"wrote {args.num_experts}-expert pipeline to {os.path.abspath(args.out)}")
        return 0
    if args.config or args.opt:
        fail("--config/-o: only for a pretrained --model (an ERNIE-ViLG 2.0 pipeline carries its own)")
    precheck(args.model, args.num_experts, boundaries)

    quiet_third_party_logs()
    from ernie_vilg2.pipelines import branch_pipeline_folder

    try:
        branch_pipeline_folder(args.model, args.num_experts, args.out, overwrite=args.overwrite,
                               expert_boundaries=boundaries, lora=lora)
    except DiskFullError as exc:
        fail(f"--out: {exc}")
    except (FileNotFoundError, ErnieViLG2Error) as exc:
        fail(f"--model: {exc}")
    except ValueError as exc:  # 'unet: ... has N experts', N not dividing T or bad boundaries
        message = str(exc)
        if message.startswith("targets: "):
            fail(f"--lora-targets: {message[len('targets: '):]}")
        if message.startswith("expert_boundaries: "):
            fail(f"--boundaries: {message[len('expert_boundaries: '):]}")
        flag = "--num-experts" if "num_experts" in message else "--model"
        fail(f"{flag}: {exc}")
    print(f"wrote {args.num_experts}-expert pipeline to {os.path.abspath(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
