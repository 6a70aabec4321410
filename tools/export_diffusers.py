"""Write a saved ERNIE-ViLG 2.0 pipeline's experts as diffusers-format U-Net folders (PyTorch).

    python tools/export_diffusers.py --model output/tiny_pretrained/experts --out output/tiny_pretrained/diffusers

Each expert becomes OUT/expert-XX/ (config.json + diffusion_pytorch_model.safetensors), which
diffusers' UNet2DConditionModel.from_pretrained loads; OUT/experts.json says which timesteps each
expert owns (LoRA experts are merged into full ones first); the VAE and the scheduler are
written beside them (vae/, scheduler/). The text encoder (ERNIE, PaddleNLP) is not. The folder is written beside --out and renamed when complete.
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("GLOG_minloglevel", "2")

from ernie_vilg2.cli_utils import check_model_and_out, fail, quiet_third_party_logs  # noqa: E402
from ernie_vilg2.errors import ErnieViLG2Error  # noqa: E402
from ernie_vilg2.utils.cpu_tuning import tune_cpu_process  # noqa: E402
from ernie_vilg2.utils.io import DiskFullError  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="saved pipeline folder (with model_index.json)")
    p.add_argument("--out", required=True, help="folder to write")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    return p.parse_args(argv)


def main(argv=None) -> int:
    tune_cpu_process()
    args = parse_args(argv)
    check_model_and_out(args)

    quiet_third_party_logs()
    from ernie_vilg2.models.diffusers_export import export_to_diffusers
    from ernie_vilg2.pipelines import load_pipeline, merge_lora_pipeline

    try:
        pipe = merge_lora_pipeline(load_pipeline(args.model))  # LoRA experts are written as full U-Nets
        record = export_to_diffusers(pipe.unet, args.out, vae=pipe.vae, scheduler=pipe.scheduler,
                                     overwrite=args.overwrite)
    except DiskFullError as exc:
        fail(f"--out: {exc}")
    except (FileNotFoundError, ErnieViLG2Error) as exc:
        fail(f"--model: {exc}")
    n = record["num_experts"]
    print(f"wrote {n} expert{'s' if n > 1 else ''} (diffusers UNet2DConditionModel), vae/ and scheduler/ "
          f"to {os.path.abspath(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
