"""Tiny webdataset shards for the tests: written by our writer in img2dataset's layout, or built
by hand with tarfile the way another writer might, and damaged on purpose."""
from __future__ import annotations

import io
import json
import os
import tarfile

import numpy as np
from PIL import Image


def image_bytes(value: int, size=(20, 16), fmt: str = "PNG") -> bytes:
    """A flat image of grey ``value`` (distinct values: distinct images)."""
    out = io.BytesIO()
    Image.fromarray(np.full((size[1], size[0], 3), value % 256, np.uint8)).save(out, format=fmt)
    return out.getvalue()


def sample_image(i: int) -> bytes:
    return image_bytes(i * 7, fmt="JPEG" if i % 2 else "PNG")


def write_shards(folder, num_samples: int, shard_size: int, start: int = 0):
    """Samples ``{i:09d}`` with caption "sample i" (zh every third one; JPEG images for odd i, PNG
    for even ones), written by ShardWriter."""
    from ernie_vilg2.data.shard_writer import ShardWriter

    os.makedirs(folder, exist_ok=True)
    writer = ShardWriter(str(folder), shard_size)
    for i in range(start, start + num_samples):
        zh = i % 3 == 0
        writer.write(f"{i:09d}", sample_image(i), f"样本 {i}" if zh else f"sample {i}",
                     {"lang": "zh" if zh else "en", "boxes": [[2, 2, 12, 10]], "labels": [f"thing {i}"]})
    return writer.close()


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.uname = len(data), 1_700_000_000, "someone"
    tar.addfile(info, io.BytesIO(data))


def write_tar(path, members) -> str:
    """A shard of ``members`` [(name, bytes)] in that order (GNU format, as GNU tar writes)."""
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            add_member(tar, name, data)
    return str(path)


def member_offsets(path):
    """{member name: (header offset, data offset, size)}."""
    with tarfile.open(path) as tar:
        return {m.name: (m.offset, m.offset_data, m.size) for m in tar.getmembers()}


def truncate(path, size: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)


def write_sidecar(shard_path, records, torn_tail: str = "") -> str:
    path = str(shard_path)[:-len(".tar")] + ".knowledge.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
        f.write(torn_tail)
    return path
