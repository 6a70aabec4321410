"""Encode a data set once with a run's frozen VAE into latent shards, which training then streams
instead of the images: no image is decoded and no VAE runs while training (docs/data.md,
"Latents on disk").

    python tools/encode_latents.py -c configs/tiny.yaml -o data.root=data/emoji-shards --vae output/emoji --out data/emoji-latents
    python tools/train.py -c configs/tiny.yaml -o data.root=data/emoji-latents -o train.output_dir=output/emoji --resume --allow-config-change

The config's data: section names the source (any format: shards, JSON lines, COCO, the built-in
data) and how its images are prepared (resolution, image_fit, languages, caption_field,
max_image_pixels), exactly as training would prepare them. --vae is a run folder (its vae/), a
pipeline folder (its vae/) or a VAE folder. Each sample's posterior mean and standard deviation
are stored, so training draws from them as it does from images. Shards are written whole or not
at all: an interrupted encoding continues when run again with the same arguments.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

os.environ.setdefault("GLOG_minloglevel", "2")

from ernie_vilg2.cli_utils import fail, quiet_third_party_logs  # noqa: E402
from ernie_vilg2.errors import ErnieViLG2Error  # noqa: E402
from ernie_vilg2.utils.cpu_tuning import tune_cpu_process  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", "-c", required=True, help="experiment YAML; its data: section names the source")
    p.add_argument("-o", "--opt", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. -o data.root=data/emoji-shards (repeatable)")
    p.add_argument("--vae", required=True, help="the frozen VAE: a run folder, a pipeline folder or a VAE folder")
    p.add_argument("--out", required=True, help="folder of the latent shards (new, or an interrupted encoding's)")
    p.add_argument("--batch-size", type=int, default=64, help="images the VAE encodes at once (default 64)")
    p.add_argument("--shard-size", type=int, default=10000,
                   help="samples per shard for JSON lines, COCO and the built-in data (default 10000); "
                        "shards are encoded shard for shard")
    p.add_argument("--keep-order", action="store_true",
                   help="JSON lines, COCO, built-in: write the records in the source's order (default: shuffled "
                        "with seed 0, as tools/prepare_data.py --shards does)")
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32",
                   help="of the stored latents: float32 (default) trains exactly as from the images; float16 "
                        "halves the disk and rounds them to about 3 significant digits")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def vae_folder(path: str) -> str:
    """The VAE folder --vae names: itself, or its vae/ (a run or pipeline folder)."""
    for folder in (path, os.path.join(path, "vae")):
        config = os.path.join(folder, "config.json")
        if os.path.isfile(config):
            try:
                with open(config, encoding="utf-8") as f:
                    if json.load(f).get("_class_name") == "AutoencoderKL":
                        return folder
            except (OSError, ValueError, AttributeError):
                continue
    fail(f"--vae {path}: no VAE there (a run folder or pipeline folder with vae/, or a VAE folder with "
         "config.json of an AutoencoderKL)")


def main(argv=None) -> int:
    tune_cpu_process()
    args = parse_args(argv)
    for flag, value in (("--batch-size", args.batch_size), ("--shard-size", args.shard_size)):
        if value < 1:
            fail(f"{flag} must be >= 1")
    quiet_third_party_logs()
    logging.getLogger("ernie_vilg2").setLevel(logging.INFO)
    from ernie_vilg2.training.config import load_config

    try:
        cfg = load_config(args.config, args.opt)
    except (ErnieViLG2Error, OSError) as exc:
        fail(str(exc))
    folder = vae_folder(args.vae)
    start = time.perf_counter()
    try:
        manifest = encode(args, cfg.data, folder)
    except (ErnieViLG2Error, OSError) as exc:  # DatasetError, DamagedFileError, DiskFullError, a missing file
        fail(str(exc))
    size = sum(os.path.getsize(os.path.join(args.out, name)) for name in manifest["shards"])
    skipped = sum(manifest["skipped"].values())
    print(f"{os.path.abspath(args.out)}: {len(manifest['shards']):,} shards ({manifest['written']:,} written now), "
          f"{manifest['samples']:,} samples{f', {skipped:,} skipped' if skipped else ''}, {manifest['dtype']} "
          f"latents {manifest['latent_shape']}, {size / max(1, manifest['samples']) / 1024:.1f} KiB a sample "
          f"({time.perf_counter() - start:.1f} s)")
    return 0


def encode(args, data_cfg, folder: str) -> dict:
    import numpy as np
    from ppdiffusers import AutoencoderKL

    from ernie_vilg2.data.latent_encoding import encode_latent_shards
    from ernie_vilg2.data.latent_shards import LatentSpec, vae_fingerprint
    from ernie_vilg2.data.problems import DataReport
    from ernie_vilg2.data.samples import batch_pixel_values
    from ernie_vilg2.data.sources import open_source
    from ernie_vilg2.training.batches import encode_images
    from ernie_vilg2.utils.integrity import check_model_folder

    source = open_source(data_cfg)  # a wrong source fails before the VAE loads
    check_model_folder(folder)
    vae = AutoencoderKL.from_pretrained(folder)
    vae.eval()

    def encode_pixels(pixels):
        return encode_images(vae, batch_pixel_values(pixels), args.batch_size)

    r = data_cfg.resolution
    shape = list(encode_pixels(np.zeros((1, r, r, 3), np.uint8))[0].shape[1:])
    spec = LatentSpec(vae_sha256=vae_fingerprint(vae.state_dict()), scaling_factor=float(vae.config.scaling_factor),
                      resolution=r, image_fit=data_cfg.image_fit, caption_field=data_cfg.caption_field,
                      languages=list(data_cfg.languages), latent_shape=[2] + shape, dtype=args.dtype)
    report = DataReport("encode latents")
    manifest = encode_latent_shards(source, args.out, spec, encode_pixels, os.path.abspath(folder),
                                    batch_size=args.batch_size, shard_size=args.shard_size,
                                    keep_order=args.keep_order, progress=not args.no_progress, report=report)
    if report.num_problems:
        logging.getLogger("encode_latents").warning("%s", report.summary)
    return manifest


if __name__ == "__main__":
    sys.exit(main())
