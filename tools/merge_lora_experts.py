"""Merge a pipeline's LoRA experts into full experts (base U-Net + each expert's adapter).

    python tools/merge_lora_experts.py --model output/tiny_lora/experts --out output/tiny_lora/merged

The result is an ordinary pipeline folder of N full U-Net experts, which tools/export_model.py,
both deployment runners and expert offload take; the VAE, text encoder, tokenizer and scheduler
are saved unchanged. The folder is written beside --out and renamed when complete.
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
    p.add_argument("--model", required=True, help="saved pipeline folder with LoRA experts (model.expert_type: lora)")
    p.add_argument("--out", required=True, help="pipeline folder to write, with full experts")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    return p.parse_args(argv)


def main(argv=None) -> int:
    tune_cpu_process()
    args = parse_args(argv)
    check_model_and_out(args)

    quiet_third_party_logs()
    from ernie_vilg2.pipelines import merge_lora_folder

    try:
        merge_lora_folder(args.model, args.out, overwrite=args.overwrite)
    except DiskFullError as exc:
        fail(f"--out: {exc}")
    except (FileNotFoundError, ErnieViLG2Error, ValueError) as exc:  # a damaged folder names its file
        fail(f"--model: {exc}")
    print(f"wrote the merged pipeline (full experts) to {os.path.abspath(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
