"""Fréchet Inception Distance with the standard TF Inception network (see :mod:`.inception`).

    extractor = FeatureExtractor()                      # loads the network once
    mu1, sigma1 = statistics(extractor.features(images))   # PIL images or uint8 arrays
    mu2, sigma2 = reference_statistics("data/real", extractor, cache=cache_dir)   # or a .npz
    fid = frechet_distance(mu1, sigma1, mu2, sigma2)

Images are read like the reference implementation reads them (``PIL.Image.convert("RGB")``)
and resized to 299x299 by :func:`.inception.preprocess`.
"""
from __future__ import annotations

import hashlib
import itertools
import os
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from ..errors import ErnieViLG2Error
from ..utils.integrity import sha256_file
from ..utils.io import atomic_file

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
# Changes whenever features of the same image could change (network, resize, reading).
FEATURES_VERSION = "tf-inception-2015-12-05/pool3/tf-bilinear-299/v1"
CACHE_EVERY = 512  # images between rewrites of a features cache


class StatisticsError(ErnieViLG2Error, ValueError):
    """A statistics file or a set of features is unusable; ``str()`` names the file."""


def _as_rgb_array(image) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"images must be PIL images or uint8 arrays, got an array of {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 4):  # grey or RGBA: as PIL converts them
        return np.asarray(Image.fromarray(array).convert("RGB"))
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected an [H, W, 3] image array, got shape {list(array.shape)}")
    return array


def read_image(path: str) -> np.ndarray:
    """An image file as a uint8 ``[H, W, 3]`` array; an unreadable file is a ValueError naming it."""
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ValueError(f"{path}: cannot read image ({exc})") from None


def list_images(folder: str) -> List[str]:
    """Image files under ``folder`` (recursively, by extension), sorted."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [os.path.join(root, f) for f in files
                  if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".")]
    return sorted(found)


class _ImageFiles:
    """Image files read one at a time as they are iterated (a sized iterable: the progress
    bar knows the total), each passed through ``prepare`` if given."""

    def __init__(self, paths: Sequence[str], prepare: Optional[Callable[[np.ndarray], np.ndarray]] = None):
        self.paths = paths
        self.prepare = prepare

    def __len__(self) -> int:
        return len(self.paths)

    def __iter__(self):
        images = (read_image(p) for p in self.paths)
        return images if self.prepare is None else (self.prepare(image) for image in images)


class FeatureExtractor:
    """Pool3 features of images with the FID network, ``batch_size`` images per forward."""

    def __init__(self, model=None, batch_size: int = 32):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if model is None:
            from .inception import load_fid_inception  # deferred here and below: paddle

            model = load_fid_inception()
        self.model = model
        self.batch_size = batch_size

    def features(self, images: Iterable, progress: bool = False) -> np.ndarray:
        """``[N, 2048]`` float64 features of ``images``: PIL images or uint8 ``[H, W, 3]``
        arrays of any size (resized to 299x299 as the reference does)."""
        from tqdm import tqdm

        total = len(images) if hasattr(images, "__len__") else None
        with tqdm(total=total, desc="FID features", unit="img", disable=not progress) as bar:
            return self._features(images, bar)

    def _features(self, images: Iterable, bar) -> np.ndarray:
        import paddle

        from .inception import FEATURE_DIM, preprocess

        out = []
        iterator = iter(images)
        with paddle.no_grad():
            while True:
                batch = [_as_rgb_array(im) for im in itertools.islice(iterator, self.batch_size)]
                if not batch:
                    break
                out.append(self.model(preprocess(batch)).numpy().astype(np.float64))
                bar.update(len(batch))
        return np.concatenate(out) if out else np.zeros((0, FEATURE_DIM))

    def file_features(self, paths: Sequence[str], cache: Optional[str] = None, progress: bool = False,
                      prepare=None) -> np.ndarray:
        """Features of image files. ``cache``: a .npz of features keyed by the files' SHA-256,
        read first and rewritten every ``CACHE_EVERY`` new images, so an interrupted or repeated
        run computes only the images it has not seen. ``prepare``: a function applied to each
        decoded uint8 ``[H, W, 3]`` array first (e.g. a resize), with a ``name`` attribute that
        says what it does: it is part of the cache's keys."""
        from tqdm import tqdm

        digests = [sha256_file(p) for p in paths]
        if prepare is not None:
            digests = [f"{d}/{prepare.name}" for d in digests]
        known = _read_feature_cache(cache) if cache else {}
        todo = [i for i, d in enumerate(digests) if d not in known]
        with tqdm(total=len(todo), desc="FID features", unit="img", disable=not (progress and todo)) as bar:
            for start in range(0, len(todo), CACHE_EVERY):
                part = todo[start : start + CACHE_EVERY]
                new = self._features(_ImageFiles([paths[i] for i in part], prepare), bar)
                known.update({digests[i]: f for i, f in zip(part, new)})
                if cache:  # this set's features only: entries of files gone from it are dropped
                    _write_feature_cache(cache, {d: known[d] for d in digests if d in known})
        return np.stack([known[d] for d in digests]) if paths else self.features([])


def _read_feature_cache(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["version"]) != FEATURES_VERSION:
                return {}
            return dict(zip((str(d) for d in data["sha256"]), data["features"].astype(np.float64)))
    except (OSError, ValueError, KeyError):
        return {}  # a damaged cache is only lost time: compute again


def _write_feature_cache(path: str, features: dict) -> None:
    _atomic_savez(path, version=np.array(FEATURES_VERSION), sha256=np.array(list(features)),
                  features=np.stack(list(features.values())).astype(np.float32))


def _atomic_savez(path: str, **arrays) -> None:
    """``np.savez`` to a temporary file beside ``path``, renamed into place."""
    with atomic_file(path, needed=sum(np.asarray(a).nbytes for a in arrays.values())) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def statistics(features: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """``(mu, sigma)``: mean ``[D]`` and covariance ``[D, D]`` (unbiased, as pytorch-fid) of ``[N, D]`` features."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise StatisticsError(f"need at least 2 feature rows [N, D], got shape {list(features.shape)}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def save_statistics(path: str, mu: np.ndarray, sigma: np.ndarray) -> None:
    """Write ``mu`` and ``sigma`` to the .npz ``path`` (atomically)."""
    _check_statistics(mu, sigma, path)
    _atomic_savez(path, mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64))


def load_statistics(path: str) -> Tuple[np.ndarray, np.ndarray]:
    """``(mu, sigma)`` from a .npz with arrays ``mu`` [D] and ``sigma`` [D, D] (pytorch-fid's format)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"statistics file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name].astype(np.float64) for name in data.files if name in ("mu", "sigma")}
            names = sorted(data.files)
    except (OSError, ValueError, EOFError) as exc:
        raise StatisticsError(f"{path}: not a readable .npz file ({exc})") from None
    if len(arrays) != 2:
        raise StatisticsError(f"{path}: not FID statistics (needs arrays mu and sigma, "
                              f"has {', '.join(names) or 'none'})")
    mu, sigma = arrays["mu"], arrays["sigma"]
    _check_statistics(mu, sigma, path)
    return mu, sigma


def _check_statistics(mu, sigma, name: str) -> None:
    mu, sigma = np.asarray(mu), np.asarray(sigma)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise StatisticsError(f"{name}: mu must be [D] and sigma [D, D], got {list(mu.shape)} and {list(sigma.shape)}")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise StatisticsError(f"{name}: mu or sigma holds NaN or inf")


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """``|mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2))``.

    pytorch-fid takes the trace of ``scipy.linalg.sqrtm(sigma1 @ sigma2)``. The same trace
    is the sum of the square roots of the eigenvalues of ``sigma1 sigma2``, which (with
    ``sigma1 = B B^T``) are those of the symmetric ``B^T sigma2 B``. ``B`` comes from a
    pivoted Cholesky factorisation that stops at the numerical rank, so a covariance of
    N < 2048 images costs an N x N eigenproblem: about 0.5 s instead of sqrtm's minute
    here, with the same value to about 1e-7 relative (tests/evaluation/test_fid.py).
    """
    from scipy.linalg import lapack

    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    _check_statistics(mu1, sigma1, "statistics 1")
    _check_statistics(mu2, sigma2, "statistics 2")
    if mu1.shape != mu2.shape:
        raise StatisticsError(f"statistics of different dimensions: {mu1.shape[0]} and {mu2.shape[0]}")
    # sigma1 = P L L^T P^T with L of the numerical rank (LAPACK's default tolerance).
    factor, pivots, rank, info = lapack.dpstrf((sigma1 + sigma1.T) / 2, lower=1)
    if info < 0:
        raise StatisticsError(f"sigma1: pivoted Cholesky failed (LAPACK info {info})")
    b = np.empty((mu1.shape[0], rank))
    b[pivots - 1] = np.tril(factor)[:, :rank]
    inner = b.T @ sigma2 @ b
    eigenvalues = np.linalg.eigvalsh((inner + inner.T) / 2)
    trace_sqrt = np.sqrt(np.clip(eigenvalues, 0, None)).sum()  # round-off can go below zero
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)


def _folder_key(paths: Sequence[str], folder: str) -> str:
    """SHA-256 of the features version and every image's relative path and content."""
    h = hashlib.sha256(FEATURES_VERSION.encode())
    for p in paths:
        h.update(os.path.relpath(p, folder).encode("utf-8") + b"\0" + sha256_file(p).encode() + b"\n")
    return h.hexdigest()


def reference_images(path: str) -> List[str]:
    """The image files of a reference: a folder (recursively) or a JSON-lines dataset (its
    records' images, each once). Errors name ``path``."""
    if os.path.isdir(path):
        paths = list_images(path)
        if not paths:
            raise StatisticsError(f"{path}: no images ({', '.join(IMAGE_EXTENSIONS)}) in the folder")
        return paths
    if path.lower().endswith(".jsonl") and os.path.isfile(path):
        from ..data.jsonl import read_jsonl_records  # deferred: imports paddle

        records, _ = read_jsonl_records(path)
        return list(dict.fromkeys(r["image_path"] for r in records))
    if not os.path.exists(path):
        raise FileNotFoundError(f"reference not found: {path}")
    raise StatisticsError(f"{path}: expected a folder of images, a .jsonl dataset or a .npz of statistics")


def reference_cache() -> str:
    """The folder where :func:`reference_statistics` keeps statistics of image sets by default."""
    from .inception import cache_dir

    return os.path.join(cache_dir(), "fid", "stats")


def reference_statistics(path: str, extractor: Optional[FeatureExtractor], cache: Optional[str] = None,
                         progress: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """``(mu, sigma)`` of a reference: a ``.npz`` of statistics, a folder of images
    (recursively) or a ``.jsonl`` dataset (its images). ``cache``: a folder where the
    statistics of image sets are kept as ``fid_stats_<key>.npz``, the key a hash of the
    images' names and contents (a changed folder is computed again)."""
    if path.lower().endswith(".npz") and not os.path.isdir(path):
        return load_statistics(path)
    paths = reference_images(path)
    if len(paths) < 2:
        raise StatisticsError(f"{path}: FID needs at least 2 reference images, found {len(paths)}")
    cached = None
    if cache:
        base = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
        cached = os.path.join(cache, f"fid_stats_{_folder_key(paths, base)[:20]}.npz")
        if os.path.isfile(cached):
            try:
                return load_statistics(cached)
            except StatisticsError:
                pass  # damaged: compute again
    if extractor is None:
        extractor = FeatureExtractor()
    mu, sigma = statistics(extractor.file_features(paths, progress=progress))
    if cached:
        save_statistics(cached, mu, sigma)
    return mu, sigma
