"""Export a saved ERNIE-ViLG 2.0 pipeline folder to Paddle Inference programs.

    python tools/export_model.py --model output/tiny/experts --out output/tiny/export
    python tools/export_model.py --model DIR --out DIR --height 64 --width 64 --overwrite

Writes the text encoder, every expert U-Net and the VAE decoder as PIR programs
(inference.json + inference.pdiparams), the tokenizer vocab and manifest.json with the
router, the resolved sampler settings, sizes and a SHA-256 of every file (layout:
deploy/README.md). The folder is written beside --out and renamed when complete; experts are
exported one at a time. Run the result with deploy/python/infer.py or the C++ runner.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("GLOG_minloglevel", "2")

from ernie_vilg2.cli_utils import check_model_and_out, fail, quiet_third_party_logs  # noqa: E402
from ernie_vilg2.errors import ErnieViLG2Error  # noqa: E402
from ernie_vilg2.utils.cpu_tuning import tune_cpu_process  # noqa: E402
from ernie_vilg2.utils.process_memory import peak_rss_mib  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", required=True, help="saved pipeline folder (with model_index.json)")
    p.add_argument("--out", required=True, help="export folder to write")
    p.add_argument("--height", type=int, help="image height the programs are fixed to (default: the model's)")
    p.add_argument("--width", type=int, help="image width the programs are fixed to (default: the model's)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.add_argument("--no-cpu-ops", dest="cpu_ops", action="store_false", default=None,
                   help="export no programs with the C++ CPU operators (default: also those, where they are built)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    tune_cpu_process()
    args = parse_args(argv)
    check_model_and_out(args)

    quiet_third_party_logs()
    from ernie_vilg2.deploy.export import export_pipeline

    started = time.time()
    try:
        manifest = export_pipeline(args.model, args.out, height=args.height, width=args.width,
                                   overwrite=args.overwrite, cpu_ops=args.cpu_ops)
    except (ErnieViLG2Error, ValueError) as exc:  # ours name the file or field; ValueError: N not dividing T
        fail(str(exc))
    except FileNotFoundError as exc:
        fail(f"--model: {exc}")
    except FileExistsError as exc:
        fail(f"--out: {exc}")
    size = sum(record["size"] for record in manifest["files"].values())
    peak = peak_rss_mib()
    image = manifest["image"]
    n = manifest["router"]["num_experts"]
    with_ops = "; the experts and the VAE decoder also with the C++ CPU operators" if "cpu_ops" in manifest else ""
    print(f"wrote {args.out}: text encoder, {n} expert{'s' if n > 1 else ''}, VAE decoder "
          f"({image['height']}x{image['width']} px, dynamic batch; {size / 2**20:.1f} MiB) "
          f"in {time.time() - started:.1f} s, peak RSS {peak:.0f} MiB{with_ops}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
