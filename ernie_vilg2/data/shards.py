"""webdataset shards in img2dataset's layout: listing them, reading their samples, and the
knowledge sidecars beside them.

Layout (what img2dataset writes with ``output_format: webdataset``; :mod:`.shard_writer`
writes the same)::

    shards/00000.tar          {key}.jpg|png|webp  the image
                              {key}.txt           the caption (UTF-8)
                              {key}.json          {"key", "caption"?, "lang"?, "boxes"?, "labels"?,
                                                   "synthetic_caption"?, url, width, height, status, ...}
    shards/00000_stats.json   img2dataset's counts of the shard (read by no one here)
    shards/00000.parquet      img2dataset's table of the shard (read by no one here)
    shards/00000.knowledge.jsonl  optional: stored knowledge, one {"key", "caption", "keywords",
                                  "objects"?} line per sample (:func:`read_sidecar`)

The members of a sample follow each other; its key is the member name up to the first dot of
its file name (webdataset's rule). The caption is the ``.txt`` member, or ``data.caption_field``
of the ``.json`` when set (the ``.json``'s ``caption`` when there is no ``.txt``); ``lang`` is
detected when the ``.json`` has none; boxes, labels and synthetic caption are the ``.json``'s,
validated as JSON-lines records are (:func:`~.jsonl.parse_fields`).

Why a reader of our own over the standard library's ``tarfile`` rather than the ``webdataset``
package: the loader has to decide per sample, identically in a run and in its resumed replay,
what is skipped, and to skip without decoding (:mod:`.stream_order` replays a stream reading
only headers and captions). Here a damaged shard is a reported event, never an exception:
a truncated file or a corrupt header ends the shard's samples (``tarfile`` reads a cut header
as the end of the archive, so the end is checked for tar's zero block); a sample without an
image or caption, a caption that is not UTF-8, a ``.json`` that is not an object, an image
whose header Pillow cannot read or that has more than ``data.max_image_pixels`` pixels is
skipped. Each becomes a :class:`~.problems.Problem` naming the shard and member. Shards are
read as seekable files (``tarfile`` mode ``r:``), so member data that is not needed is
seeked over, not read; compressed archives (.tar.gz) are not supported.
"""
from __future__ import annotations

import json
import os
import posixpath
import re
import tarfile
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from .config import MAX_IMAGE_PIXELS
from .jsonl import DatasetError, parse_fields
from .problems import CORRUPT_SHARD, INVALID_SAMPLE, Problem
from .samples import OVERSIZED_IMAGE, UNDECODABLE_IMAGE, image_header_error

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
SHARD_SUFFIX = ".tar"
SIDECAR_SUFFIX = ".knowledge.jsonl"
MAX_TEXT_MEMBER = 1 << 20  # a .txt or .json member larger than this is not a caption or its metadata
_BRACES = re.compile(r"\{([^{}]*)\}")


class ShardError(DatasetError):
    """The shards named by data.root cannot be listed, or one is missing; the message names it."""


# -- listing ---------------------------------------------------------------------------------------
def expand_braces(pattern: str) -> List[str]:
    """``a/{00000..00002}.tar`` -> a/00000.tar, a/00001.tar, a/00002.tar; ``{x,y}`` alternatives."""
    match = _BRACES.search(pattern)
    if not match:
        return [pattern]
    body = match.group(1)
    if "," in body or ".." not in body:
        values = body.split(",")
    else:
        low, high = body.split("..", 1)
        if not (low.isdigit() and high.isdigit()):
            raise ShardError(f"{pattern}: a range must be {{FIRST..LAST}} with digits, got {{{body}}}")
        width = max(len(low), len(high)) if low.startswith("0") or high.startswith("0") else 0
        step = 1 if int(high) >= int(low) else -1
        values = [str(i).zfill(width) for i in range(int(low), int(high) + step, step)]
    head, tail = pattern[:match.start()], pattern[match.end():]
    return [path for value in values for path in expand_braces(head + value + tail)]


def is_shard_spec(spec: str) -> bool:
    """Whether ``spec`` names shards by its form: a .tar, a brace pattern or a .txt list."""
    return spec.endswith((SHARD_SUFFIX, ".txt")) or bool(_BRACES.search(spec))


def list_shards(spec: str) -> List[str]:
    """The shard paths ``spec`` names: a folder (its .tar files, sorted), a .txt file (one path a
    line, relative to the file's folder; blank lines and # comments ignored), a brace pattern,
    or one .tar. A missing shard is a :class:`ShardError` naming it."""
    if os.path.isdir(spec):
        shards = sorted(os.path.join(spec, name) for name in os.listdir(spec) if name.endswith(SHARD_SUFFIX))
        if not shards:
            raise ShardError(f"{spec}: no .tar shards in this folder")
    elif spec.endswith(".txt"):
        try:
            with open(spec, encoding="utf-8") as f:
                lines = [line.strip() for line in f]
        except (OSError, UnicodeDecodeError) as exc:
            raise ShardError(f"shard list {spec}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None
        folder = os.path.dirname(spec)
        shards = [os.path.join(folder, line) for line in lines if line and not line.startswith("#")]
        if not shards:
            raise ShardError(f"shard list {spec}: names no shard")
    else:
        shards = expand_braces(spec)
    missing = [path for path in shards if not os.path.isfile(path)]
    if missing:
        more = f" (and {len(missing) - 1:,} more of the {len(shards):,})" if len(missing) > 1 else ""
        raise ShardError(f"shard not found: {missing[0]}{more}")
    return shards


def split_member_name(name: str):
    """``dir/000001.jpg`` -> (``dir/000001``, ``jpg``); None for a name without an extension."""
    folder, base = posixpath.split(name)
    if "." not in base.lstrip("."):
        return None
    dot = base.index(".", 1 if base.startswith(".") else 0)
    return posixpath.join(folder, base[:dot]), base[dot + 1:].lower()


# -- reading ---------------------------------------------------------------------------------------
class ShardReader:
    """Reads the samples of shards as records of the project's form (:mod:`.samples`).

    Each record has ``key``, ``shard``, ``image`` (the encoded bytes, or None while
    ``load_images`` is False), ``image_ref`` ((offset, size) in the shard: :func:`load_image`),
    ``member`` (the image's member name), ``image_name`` ("SHARD: KEY.jpg"), ``caption``,
    ``lang``, ``boxes``, ``labels`` and ``synthetic_caption``. Skipped samples and damaged shards go to ``on_problem``; samples
    whose language is not in ``languages`` are left out and counted in ``num_filtered``. A
    subclass reads another payload than the image (:class:`~.latent_shards.LatentShardReader`):
    :attr:`payload_extensions` and :meth:`_payload_error`.
    """

    payload_extensions = IMAGE_EXTENSIONS  # the member a sample needs (the first of these it has)
    payload_name = "image"

    def __init__(self, caption_field: Optional[str] = None, languages: Optional[Sequence[str]] = None,
                 max_image_pixels: Optional[int] = MAX_IMAGE_PIXELS,
                 on_problem: Optional[Callable[[Problem], None]] = None):
        self.caption_field = caption_field
        self.languages = None if languages is None else tuple(languages)
        self.max_image_pixels = max_image_pixels
        self.on_problem = on_problem or (lambda problem: None)
        self.load_images = True
        self.num_filtered = 0

    def _problem(self, kind: str, where: str, message: str) -> None:
        self.on_problem(Problem(kind, where, message))

    def _payload_error(self, member, name: str) -> Optional[Tuple[str, str]]:
        """(kind, reason) when the payload ``member`` (a binary file) cannot be used, judged by
        its header; None when it can."""
        reason = image_header_error(member, name, self.max_image_pixels)
        if reason is None:
            return None
        return (OVERSIZED_IMAGE if reason.startswith(OVERSIZED_IMAGE) else UNDECODABLE_IMAGE), reason

    def iter_shard(self, path: str) -> Iterator[dict]:
        """The valid samples of the shard at ``path``, in its order."""
        try:
            f = open(path, "rb")
        except OSError as exc:
            self._problem(CORRUPT_SHARD, path, f"{path}: cannot read the shard ({exc.strerror or exc}); skipped")
            return
        with f:
            size = os.fstat(f.fileno()).st_size
            try:
                tar = tarfile.open(fileobj=f, mode="r:")
            except (tarfile.TarError, OSError, EOFError) as exc:
                self._problem(CORRUPT_SHARD, path, f"{path}: not a tar file ({exc}); shard skipped")
                return
            key, group, last, broken = None, {}, None, None
            while True:
                try:
                    info = tar.next()
                except (tarfile.TarError, OSError, EOFError) as exc:
                    broken = str(exc)
                    break
                tar.members = []  # tarfile keeps every header it read; a shard can have millions
                if info is None:
                    if not _ends_with_zero_block(f, tar.offset):
                        broken = "a damaged header or no end-of-archive block"
                    break
                if info.offset_data + info.size > size:
                    broken = f"member {info.name} is cut short"
                    break
                name = split_member_name(info.name) if info.isfile() else None
                if name is None:
                    continue
                if name[0] != key:
                    if group:
                        yield from self._sample(tar, path, key, group)
                    key, group = name[0], {}
                group[name[1]] = info
                last = info.name
            if broken is None and group:
                yield from self._sample(tar, path, key, group)
            elif broken is not None:  # the pending sample may lack members: dropped with the rest
                after = f"member {last}" if last else "its start"
                self._problem(CORRUPT_SHARD, path, f"{path}: truncated or corrupt after {after} ({broken}); "
                                                   "the rest of the shard is skipped")

    def _read_text(self, tar, path: str, key: str, info) -> Optional[bytes]:
        if info.size > MAX_TEXT_MEMBER:
            self._problem(INVALID_SAMPLE, f"{path}:{info.name}",
                          f"{path}: {info.name} is larger than {MAX_TEXT_MEMBER:,} bytes; sample {key} skipped")
            return None
        return tar.extractfile(info).read()

    def _caption(self, tar, path: str, key: str, group: Dict, meta: dict) -> Optional[str]:
        def bad(member: str, what: str) -> None:
            self._problem(INVALID_SAMPLE, f"{path}:{member}", f"{path}: {member}: {what}; sample skipped")

        if self.caption_field is None and "txt" in group:
            raw = self._read_text(tar, path, key, group["txt"])
            if raw is None:
                return None
            try:
                caption = raw.decode("utf-8").strip()
            except UnicodeDecodeError as exc:
                bad(group["txt"].name, f"the caption is not UTF-8 (byte {exc.start})")
                return None
            if not caption:
                bad(group["txt"].name, "empty caption")
            return caption or None
        field = self.caption_field or "caption"
        caption = meta.get(field)
        if not isinstance(caption, str) or not caption.strip():
            where = group["json"].name if "json" in group else f"{key}.txt"
            bad(where, f"no caption ({'.txt member or ' if self.caption_field is None else ''}"
                       f"non-empty string in the .json's {field!r})")
            return None
        return caption.strip()

    def _sample(self, tar, path: str, key: str, group: Dict) -> Iterator[dict]:
        ext = next((e for e in self.payload_extensions if e in group), None)
        if ext is None:
            self._problem(INVALID_SAMPLE, f"{path}:{key}", f"{path}: {key}: the sample has no {self.payload_name} "
                                                           f"member (.{', .'.join(self.payload_extensions)}); skipped")
            return
        meta = {}
        if "json" in group:
            raw = self._read_text(tar, path, key, group["json"])
            if raw is None:
                return
            try:
                meta = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                meta = f"not valid JSON ({exc})"
            if not isinstance(meta, dict):
                reason = meta if isinstance(meta, str) else "not a JSON object"
                self._problem(INVALID_SAMPLE, f"{path}:{group['json'].name}",
                              f"{path}: {group['json'].name}: {reason}; sample skipped")
                return
        caption = self._caption(tar, path, key, group, meta)
        if caption is None:
            return
        fields, reason = parse_fields(meta, caption)
        if fields is None:
            self._problem(INVALID_SAMPLE, f"{path}:{key}.json", f"{path}: {key}.json: {reason}; sample skipped")
            return
        if self.languages is not None and fields["lang"] not in self.languages:
            self.num_filtered += 1
            return
        info = group[ext]
        image_name = f"{path}: {info.name}"
        error = self._payload_error(tar.extractfile(info), image_name)
        if error:
            self._problem(error[0], f"{path}:{info.name}", f"{error[1]}; sample skipped")
            return
        image = tar.extractfile(info).read() if self.load_images else None
        yield {"key": key, "shard": path, "image": image, "image_ref": (info.offset_data, info.size),
               "member": info.name, "image_name": image_name, "caption": caption, **fields}


def iter_shard(path: str, caption_field: Optional[str] = None, languages: Optional[Sequence[str]] = None,
               max_image_pixels: Optional[int] = MAX_IMAGE_PIXELS, load_images: bool = True,
               on_problem: Optional[Callable[[Problem], None]] = None) -> Iterator[dict]:
    """The valid samples of one shard as records with ``key`` (:class:`ShardReader`); what is
    skipped goes to ``on_problem``."""
    reader = ShardReader(caption_field, languages, max_image_pixels, on_problem)
    reader.load_images = load_images
    return reader.iter_shard(path)


def _ends_with_zero_block(f, offset: int) -> bool:
    """Whether a tar's end, where ``tarfile`` stopped at ``offset``, is tar's zero block."""
    f.seek(offset)
    return f.read(tarfile.BLOCKSIZE) == tarfile.NUL * tarfile.BLOCKSIZE


def load_image(record: dict) -> bytes:
    """The image bytes of a shard record read with ``load_images`` False."""
    offset, size = record["image_ref"]
    with open(record["shard"], "rb") as f:
        f.seek(offset)
        data = f.read(size)
    if len(data) != size:
        raise OSError(f"{record['image_name']}: the shard is shorter than when it was read")
    return data


# -- knowledge sidecars ----------------------------------------------------------------------------
def sidecar_path(shard: str) -> str:
    """NAME.knowledge.jsonl beside NAME.tar."""
    base = shard[:-len(SHARD_SUFFIX)] if shard.endswith(SHARD_SUFFIX) else shard
    return base + SIDECAR_SUFFIX


def check_sidecar_record(record, where: str) -> dict:
    if not isinstance(record, dict):
        raise DatasetError(f"{where}: expected a JSON object")
    if not isinstance(record.get("key"), str) or not isinstance(record.get("caption"), str):
        raise DatasetError(f"{where}: needs a string 'key' and 'caption'")
    if not isinstance(record.get("keywords", []), list):
        raise DatasetError(f"{where}: 'keywords' must be a list")
    objects = record.get("objects", [])
    if not isinstance(objects, list) or not all(
            isinstance(o, dict) and isinstance(o.get("label"), str) and isinstance(o.get("box"), list)
            and len(o["box"]) == 4 for o in objects):
        raise DatasetError(f"{where}: 'objects' must be a list of {{\"box\": [x0, y0, x1, y1], \"label\": ...}}")
    return record


def read_sidecar(path: str) -> Dict[str, dict]:
    """{key: knowledge record} of a sidecar; a last line cut short by a crash is ignored, any other
    bad line is a :class:`DatasetError` naming FILE:LINE."""
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    out: Dict[str, dict] = {}
    for lineno, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            if lineno == len(lines):  # no newline after it: an interrupted write
                break
            raise DatasetError(f"{path}:{lineno}: not valid JSON ({exc})") from None
        record = check_sidecar_record(record, f"{path}:{lineno}")
        out[record["key"]] = record
    return out
