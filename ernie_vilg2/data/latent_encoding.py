"""Encode a data set once with a frozen VAE into latent shards (:mod:`.latent_shards`).

The work is cut into output shards. Shard ``i`` of a shard source is its source shard ``i``:
the same samples in the same order, so training streams the latents in the order it would
stream the images (:mod:`.stream_order`). Indexed sources (JSON lines, COCO, the built-in data)
are written ``shard_size`` records a shard, in ``default_rng(0).permutation`` order (as
``tools/prepare_data.py --shards`` writes them) or in their own (``keep_order``). Every sample
goes through :func:`~.samples.decode_sample` with the data settings, as training decodes it,
and the VAE encodes whole batches of it (``encode``: uint8 pixels [B, R, R, 3] -> posterior
mean and std, float32 [B, C, h, w]).

A shard is written to a temporary file and renamed into place when whole (after its stats and
knowledge sidecar), so a shard that exists is complete. An interrupted encoding continues with
the shards it has not written when run again with the same arguments; the manifest is marked
complete at the end, and training refuses latents whose encoding did not finish. A sample whose
image cannot be read is skipped (not replaced), warned of once and counted in the shard's stats
and the manifest.
"""
from __future__ import annotations

import glob
import io
import json
import os
import shutil
import tarfile
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np

from ..utils.io import atomic_file, atomic_write_text, disk_full_as_error
from .jsonl import DatasetError
from .latent_shards import FORMAT, LATENT_EXTENSION, MANIFEST, VERSION, LatentSpec, manifest_path, read_manifest
from .problems import MISSING_IMAGE, UNREADABLE_SIDECAR, DataReport, Problem
from .samples import OVERSIZED_IMAGE, UNDECODABLE_IMAGE, SampleError, decode_sample
from .shard_writer import MTIME
from .shards import ShardReader, read_sidecar, sidecar_path
from .sources import LatentShardSet, ShardSet

Encode = Callable[[np.ndarray], Tuple[np.ndarray, np.ndarray]]


class _Job:
    """One output shard: where its records come from."""

    def __init__(self, name: str, source: str, records: Callable[[List[Problem]], Iterator[dict]],
                 sidecar: Optional[str] = None):
        self.name, self.source, self.records, self.sidecar = name, source, records, sidecar


def _jobs(source, shard_size: int, keep_order: bool) -> Tuple[List[_Job], dict]:
    """The output shards of ``source`` (a ShardSet or MapDataset) and the manifest's description
    of the source (an interrupted encoding continues only with the same one)."""
    if isinstance(source, ShardSet):
        digits = max(5, len(str(len(source.shards) - 1)))

        def shard_records(path: str):
            def read(problems: List[Problem]) -> Iterator[dict]:
                reader = ShardReader(source.caption_field, source.languages, source.max_image_pixels, problems.append)
                return reader.iter_shard(path)
            return read

        jobs = [_Job(f"{i:0{digits}d}", path, shard_records(path), sidecar_path(path))
                for i, path in enumerate(source.shards)]
        return jobs, {"root": os.path.abspath(source.spec), "format": "webdataset", "shards": len(source.shards)}
    n = len(source)
    order = np.arange(n) if keep_order else np.random.default_rng(0).permutation(n)
    num = (n + shard_size - 1) // shard_size
    digits = max(5, len(str(num - 1)))

    def indexed_records(start: int, stop: int):  # the records of positions [start, stop) of the order
        return lambda problems: (source.record(int(i)) for i in order[start:stop])

    jobs = [_Job(f"{j:0{digits}d}", f"records {j * shard_size}-{min(n, (j + 1) * shard_size) - 1}",
                 indexed_records(j * shard_size, (j + 1) * shard_size)) for j in range(num)]
    description = {"root": os.path.abspath(source.records.path), "format": "indexed", "records": n,
                   "shard_size": shard_size, "order": "source" if keep_order else "seed 0"}
    return jobs, description


def _decode(record: dict, source, problems: List[Problem]) -> Optional[dict]:
    """``record`` as training decodes it, or None (the problem reported)."""
    image = record["image"]
    where = f"{record['shard']}:{record['member']}" if "shard" in record else str(image)
    if isinstance(image, str) and not os.path.isfile(image):
        problems.append(Problem(MISSING_IMAGE, where, f"{MISSING_IMAGE}: not found or not a regular file: {image}; "
                                                      "sample skipped"))
        return None
    try:
        return decode_sample(record, source.resolution, source.image_fit, source.max_image_pixels)
    except (SampleError, OSError) as exc:
        reason = str(exc)
        kind = OVERSIZED_IMAGE if reason.startswith(OVERSIZED_IMAGE) else UNDECODABLE_IMAGE
        problems.append(Problem(kind, where, f"{reason}; sample skipped"))
        return None


def _sidecar(path: Optional[str], problems: List[Problem]) -> Dict[str, dict]:
    if path is None or not os.path.isfile(path):
        return {}
    try:
        return read_sidecar(path)
    except (OSError, DatasetError) as exc:
        problems.append(Problem(UNREADABLE_SIDECAR, path, f"{exc}; its samples are encoded without it"))
        return {}


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), MTIME, 0o444
    tar.addfile(info, io.BytesIO(data))


def _npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array, allow_pickle=False)
    return out.getvalue()


class _ShardOut:
    """The members of one latent shard, written as batches are encoded."""

    def __init__(self, tar: tarfile.TarFile, dtype: str):
        self.tar, self.dtype = tar, dtype
        self.count = 0
        self.knowledge: List[dict] = []

    def write(self, samples: List[dict], mean: np.ndarray, std: np.ndarray) -> None:
        for sample, m, s in zip(samples, mean, std):
            key = sample["key"]
            meta = {"key": key, "caption": sample["caption"], "lang": sample["lang"],
                    "boxes": [[float(v) for v in box] for box in sample["boxes"]], "labels": sample["labels"],
                    "synthetic_caption": sample.get("synthetic_caption")}
            _add(self.tar, f"{key}.json", json.dumps(meta, ensure_ascii=False).encode("utf-8"))
            _add(self.tar, f"{key}.{LATENT_EXTENSION}", _npy(np.stack([m, s]).astype(self.dtype)))
            _add(self.tar, f"{key}.txt", sample["caption"].encode("utf-8"))
            if sample.get("knowledge") is not None:
                self.knowledge.append({**sample["knowledge"], "key": key})
            self.count += 1


def _write_shard(job: _Job, out_dir: str, source, encode: Encode, batch_size: int, dtype: str,
                 report: DataReport) -> dict:
    """Encode and write one shard (atomically) with its stats: {"count", "skipped": {kind: n}}."""
    problems: List[Problem] = []
    skipped: Dict[str, str] = {}  # where -> kind (a problem met twice counts once)

    def flush() -> None:
        skipped.update((p.where, p.kind) for p in problems)
        report.add(problems)
        problems.clear()

    knowledge = _sidecar(job.sidecar, problems)
    path = os.path.join(out_dir, f"{job.name}.tar")
    with atomic_file(path) as tmp:
        with tarfile.open(tmp, "w") as tar:
            shard = _ShardOut(tar, dtype)
            pending: List[dict] = []
            for record in job.records(problems):
                if "key" in record and record["key"] in knowledge:
                    record = {**record, "knowledge": knowledge[record["key"]]}
                sample = _decode(record, source, problems)
                if sample is not None:
                    pending.append(sample)
                if len(pending) == batch_size:
                    shard.write(pending, *encode(np.stack([s["pixels"] for s in pending])))
                    pending = []
                flush()
            if pending:
                shard.write(pending, *encode(np.stack([s["pixels"] for s in pending])))
            flush()
        if shard.knowledge:
            lines = "".join(json.dumps(k, ensure_ascii=False) + "\n" for k in shard.knowledge)
            atomic_write_text(sidecar_path(path), lines)
        kinds = list(skipped.values())
        stats = {"count": shard.count, "skipped": {k: kinds.count(k) for k in sorted(set(kinds))}, "source": job.source}
        atomic_write_text(os.path.join(out_dir, f"{job.name}_stats.json"), json.dumps(stats, ensure_ascii=False))
    report.samples += shard.count
    return stats


def _start(out_dir: str, spec: LatentSpec, description: dict, vae: str) -> Optional[dict]:
    """Create ``out_dir`` with an incomplete manifest, or check the one there (same spec and
    source: the encoding continues). Returns a complete manifest found there, else None."""
    path = manifest_path(out_dir)
    if os.path.isfile(path):
        manifest = read_manifest(path)
        ours = {**spec.as_dict(), "source": description}
        for name, value in ours.items():
            if manifest.get(name) != value:
                raise DatasetError(f"--out {out_dir} holds latents of another encoding ({name}: "
                                   f"{json.dumps(manifest.get(name))} there, {json.dumps(value)} now): "
                                   "choose a new --out, or remove that folder")
        return manifest if manifest.get("complete") else None
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise DatasetError(f"--out {out_dir}: a folder that is not empty and has no {MANIFEST}: choose a new folder")
    os.makedirs(out_dir, exist_ok=True)
    manifest = {"format": FORMAT, "version": VERSION, "complete": False, **spec.as_dict(), "vae": vae,
                "source": description}
    atomic_write_text(path, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return None


def encode_latent_shards(source, out_dir: str, spec: LatentSpec, encode: Encode, vae: str, batch_size: int = 64,
                         shard_size: int = 10000, keep_order: bool = False, progress: bool = False,
                         report: Optional[DataReport] = None) -> dict:
    """Encode ``source`` (what :func:`~.sources.open_source` opened) into latent shards in
    ``out_dir``; ``vae`` is the VAE's folder (recorded). Returns the complete manifest, with
    ``written``: the shards this call wrote."""
    from tqdm import tqdm

    if isinstance(source, LatentShardSet):
        raise DatasetError(f"data.root {source.spec}: these already are latent shards")
    report = report or DataReport("encode latents")
    jobs, description = _jobs(source, shard_size, keep_order)
    done = _start(out_dir, spec, description, vae)
    if done is not None:
        return {**done, "written": 0}
    for leftover in glob.glob(os.path.join(out_dir, ".*.tmp")):  # an interrupted encoding's partial files
        os.remove(leftover)
    todo = [job for job in jobs if not os.path.isfile(os.path.join(out_dir, f"{job.name}.tar"))]
    with disk_full_as_error(out_dir):
        for job in tqdm(todo, desc="encode latents", unit="shard", disable=not progress):
            _write_shard(job, out_dir, source, encode, batch_size, spec.dtype, report)
        counts, skipped = {}, {}
        for job in jobs:
            with open(os.path.join(out_dir, f"{job.name}_stats.json"), encoding="utf-8") as f:
                stats = json.load(f)
            counts[f"{job.name}.tar"] = stats["count"]
            for kind, n in stats["skipped"].items():
                skipped[kind] = skipped.get(kind, 0) + n
        labels = os.path.join(_source_folder(source), "labels.json")
        if os.path.isfile(labels):
            with atomic_file(os.path.join(out_dir, "labels.json")) as tmp:
                shutil.copyfile(labels, tmp)
        manifest = read_manifest(manifest_path(out_dir))
        manifest.update(complete=True, samples=sum(counts.values()), skipped=skipped, shards=counts)
        atomic_write_text(manifest_path(out_dir), json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return {**manifest, "written": len(todo)}


def _source_folder(source) -> str:
    if isinstance(source, ShardSet):
        return os.path.dirname(source.shards[0])
    return os.path.dirname(source.records.path)
