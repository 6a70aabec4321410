"""Write records as webdataset shards in img2dataset's layout (read by :mod:`.shards`).

``OUT/00000.tar`` holds ``shard_size`` samples, each as ``{key}.jpg|png|webp`` (the image file's
bytes as they are; other formats are re-encoded as PNG), ``{key}.json`` and ``{key}.txt``
(the caption), the members of a sample in the order of their extensions. Beside each shard
``00000_stats.json`` and ``00000.parquet`` hold what img2dataset writes there (counts; one row
a sample), so tools made for img2dataset's output take ours. The ``.json`` holds img2dataset's
fields (``url``: the record's image path, ``key``, ``status``, ``width``, ``height``, ...) and
the record's ``caption``, ``lang``, ``boxes``, ``labels`` and ``synthetic_caption``. Members get
a fixed time stamp, so the same records give the same bytes.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import time
from typing import Dict, Iterable, List, Optional

from PIL import Image

from ..utils.io import disk_full_as_error, umask_mode
from .jsonl import DatasetError

FORMAT_EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}
PARQUET_COLUMNS = ("url", "caption", "key", "status", "error_message", "width", "height", "original_width",
                   "original_height", "exif", "sha256")
MTIME = 1_600_000_000  # members' time stamp (fixed: reproducible shards)


def image_member(data: bytes):
    """(bytes, extension, width, height) of an image file's bytes: as they are for JPEG, PNG and
    WebP, re-encoded as PNG otherwise. Raises OSError/ValueError when Pillow cannot read it."""
    with Image.open(io.BytesIO(data)) as img:
        ext = FORMAT_EXTENSIONS.get(img.format)
        width, height = img.size
        if ext is None:
            out = io.BytesIO()
            img.save(out, format="PNG")
            data, ext = out.getvalue(), "png"
    return data, ext, width, height


class ShardWriter:
    """``write(key, image, caption, fields)`` appends a sample; a shard is closed (with its
    stats and parquet files) every ``shard_size`` samples and by :meth:`close`."""

    def __init__(self, out_dir: str, shard_size: int, digits: int = 5):
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self.out_dir = out_dir
        self.shard_size = shard_size
        self.digits = digits
        self.shards: List[str] = []
        self.samples = 0
        self._tar: Optional[tarfile.TarFile] = None
        self._rows: List[Dict] = []
        self._start = 0.0

    def _path(self, suffix: str) -> str:
        """A file of the shard being written (the last one started)."""
        return os.path.join(self.out_dir, f"{len(self.shards) - 1:0{self.digits}d}{suffix}")

    def _add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), MTIME, 0o444
        self._tar.addfile(info, io.BytesIO(data))

    def write(self, key: str, image: bytes, caption: str, fields: Optional[Dict] = None, url: Optional[str] = None):
        """One sample; ``fields`` go into its .json (lang, boxes, labels, synthetic_caption, ...)."""
        self.add(key, image_member(image), caption, fields, url)

    def add(self, key: str, member, caption: str, fields: Optional[Dict] = None, url: Optional[str] = None):
        """:meth:`write` with the image already read by :func:`image_member`."""
        if "." in key or "/" in key or not key:
            raise ValueError(f"sample key {key!r}: must be non-empty, without '.' or '/' (webdataset keys)")
        data, ext, width, height = member
        if self._tar is None:
            self.shards.append(os.path.join(self.out_dir, f"{len(self.shards):0{self.digits}d}.tar"))
            self._tar = tarfile.open(self.shards[-1], "w")
            self._rows, self._start = [], time.time()
        row = {"url": url, "caption": caption, "key": key, "status": "success", "error_message": None,
               "width": width, "height": height, "original_width": width, "original_height": height, "exif": None,
               "sha256": hashlib.sha256(data).hexdigest()}
        meta = {**row, **(fields or {})}
        members = {ext: data, "json": json.dumps(meta, ensure_ascii=False).encode("utf-8"),
                   "txt": caption.encode("utf-8")}
        for member_ext in sorted(members):
            self._add(f"{key}.{member_ext}", members[member_ext])
        self._rows.append(row)
        self.samples += 1
        if len(self._rows) == self.shard_size:
            self._finish_shard()

    def _finish_shard(self) -> None:
        import pyarrow as pa  # deferred: only writing shards needs it
        import pyarrow.parquet as pq

        self._tar.close()
        self._tar = None
        n, end = len(self._rows), time.time()
        stats = {"count": n, "successes": n, "failed_to_download": 0, "failed_to_resize": 0,
                 "duration": end - self._start, "start_time": self._start, "end_time": end,
                 "status_dict": {"success": n}}
        with open(self._path("_stats.json"), "w", encoding="utf-8") as f:
            json.dump(stats, f, indent=4)
        table = pa.table({c: [row[c] for row in self._rows] for c in PARQUET_COLUMNS})
        pq.write_table(table, self._path(".parquet"))

    def close(self) -> List[str]:
        """Finish the last shard; the paths of the shards written."""
        if self._tar is not None:
            self._finish_shard()
        return self.shards


def write_records(records: Iterable[dict], writer: ShardWriter, on_skip=None) -> int:
    """Write records of the project's form (``image`` a path or bytes, ``key``) through
    ``writer``; a record whose image cannot be read goes to ``on_skip(record, reason)``
    instead. Returns the number skipped."""
    skipped = 0
    for record in records:
        image = record["image"]
        try:
            if isinstance(image, str):
                with open(image, "rb") as f:
                    image = f.read()
            member = image_member(image)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:  # reading the source only
            skipped += 1
            if on_skip is not None:
                on_skip(record, f"{type(exc).__name__}: {exc}")
            continue
        fields = {k: record.get(k) for k in ("lang", "boxes", "labels", "synthetic_caption")}
        writer.add(record["key"], member, record["caption"], fields,
                   url=record["image"] if isinstance(record["image"], str) else None)
    return skipped


def export_shards(records, out_dir: str, shard_size: int, shuffle_seed: Optional[int] = 0,
                  extra_files: Iterable[str] = (), on_skip=None, progress: bool = False) -> Dict[str, int]:
    """Write indexed records (``len`` and ``record(i)``: a JsonlIndex, CocoRecords) as shards in
    the new folder ``out_dir``, in ``default_rng(shuffle_seed).permutation`` order (None: their
    own), with ``extra_files`` (e.g. labels.json) copied beside them. Written into a temporary
    folder renamed at the end: an interrupted export leaves no partial ``out_dir``; an existing
    one is refused (FileExistsError). Returns {"shards", "samples", "skipped"}."""
    import shutil
    import tempfile

    import numpy as np
    from tqdm import tqdm

    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir):
        raise FileExistsError(f"{out_dir} exists: shards are written into a new folder")
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(out_dir) + ".tmp-", dir=parent)
    try:
        n = len(records)
        order = range(n) if shuffle_seed is None else np.random.default_rng(shuffle_seed).permutation(n)
        writer = ShardWriter(tmp, shard_size, digits=max(5, len(str(max(0, n - 1) // shard_size))))
        bar = tqdm(total=n, desc="shards", unit="rec", disable=not progress)

        def records_in_order():
            for i in order:
                yield records.record(int(i))
                bar.update()

        with disk_full_as_error(out_dir):
            skipped = write_records(records_in_order(), writer, on_skip)
            shards = writer.close()
        bar.close()
        if not shards:
            raise DatasetError(f"no record could be written to {out_dir} ({skipped:,} skipped)")
        for path in extra_files:
            shutil.copy(path, tmp)
        os.chmod(tmp, umask_mode(directory=True))  # mkdtemp's folder is owner-only; shards are not private
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"shards": len(shards), "samples": writer.samples, "skipped": skipped}
