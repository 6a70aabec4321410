"""Object detector: a PaddleDetection 2.6 architecture built from a YAML file we ship.

The paddledet wheel ships no configs and its model zoo cannot download here, so the
architecture comes from a PaddleDetection-style YAML (``configs/detector/``) built with
``ppdet.core.workspace.create``. The YAML is read with ``yaml.safe_load`` (ppdet's own
``load_config`` uses the full, object-constructing loader) and merged into ppdet's global
registry only while the model is built, then the registry is restored, so two detectors
built from different files in one process do not leak settings into each other.

Inference preprocessing follows the YAML's ``TestReader.sample_transforms`` (a
``Resize`` with ``keep_ratio: False`` and a ``NormalizeImage``): every image is resized
to the input size, whatever its own size, and boxes are mapped back to its pixels.

Weights: ``.safetensors`` (what :meth:`Detector.save_weights` writes; the class names are
stored in its metadata and checked on load) or a Paddle ``.pdparams`` state dict (read
with ``paddle.load``, which unpickles: pass only files you trust).
"""
from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import paddle
import yaml

from ernie_vilg2.config import merge
from ernie_vilg2.utils.integrity import DamagedFileError, check_safetensors
from ernie_vilg2.utils.io import atomic_file

from .labels import LabelMap

WEIGHTS_FORMAT = "ernie_vilg2.detector/1"
_BASE_KEY = "_BASE_"


# ---------------------------------------------------------------------------- config
def read_detector_yaml(path: str) -> dict:
    """The YAML as a dict, with ``_BASE_`` files merged in (PaddleDetection convention:
    paths relative to the including file; keys in the including file win)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"detector config not found: {path}")
    with open(path, encoding="utf-8") as f:
        try:
            cfg = yaml.safe_load(f) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: invalid YAML: {exc}") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: the top level must be a mapping")
    bases = cfg.pop(_BASE_KEY, None) or []
    merged: dict = {}
    for base in bases:
        base_path = os.path.expanduser(base)
        if not os.path.isabs(base_path):
            base_path = os.path.join(os.path.dirname(path), base_path)
        merged = merge(merged, read_detector_yaml(base_path))
    return merge(merged, cfg)


@dataclass(frozen=True)
class Preprocess:
    """What the YAML's TestReader asks for: resize to (height, width), then normalise."""

    height: int
    width: int
    interp: int = cv2.INTER_LINEAR
    mean: Tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: Tuple[float, float, float] = (0.229, 0.224, 0.225)
    is_scale: bool = True

    @classmethod
    def from_yaml(cls, cfg: dict, path: str) -> "Preprocess":
        reader = cfg.get("TestReader") or cfg.get("EvalReader") or {}
        size, interp, norm = None, cv2.INTER_LINEAR, {}
        for item in reader.get("sample_transforms") or []:
            if not isinstance(item, dict):
                continue
            if "Resize" in item:
                resize = item["Resize"] or {}
                if resize.get("keep_ratio", True):
                    raise ValueError(f"{path}: TestReader Resize must set keep_ratio: False "
                                     "(the wrapper batches images at one fixed size)")
                size = resize.get("target_size")
                interp = int(resize.get("interp", cv2.INTER_LINEAR))
            if "NormalizeImage" in item:
                norm = item["NormalizeImage"] or {}
        if size is None:
            shape = (reader.get("inputs_def") or {}).get("image_shape")
            size = shape[1:] if isinstance(shape, (list, tuple)) and len(shape) == 3 else None
        if isinstance(size, int):
            size = [size, size]
        if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(int(s) > 0 for s in size)):
            raise ValueError(f"{path}: no input size: add TestReader.sample_transforms "
                             "[{Resize: {target_size: [H, W], keep_ratio: False}}]")
        return cls(
            height=int(size[0]),
            width=int(size[1]),
            interp=interp,
            mean=tuple(float(v) for v in norm.get("mean", cls.mean)),
            std=tuple(float(v) for v in norm.get("std", cls.std)),
            is_scale=bool(norm.get("is_scale", True)),
        )

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """uint8 RGB [H, W, 3] -> normalised float32 [3, height, width]."""
        out = cv2.resize(image, (self.width, self.height), interpolation=self.interp).astype(np.float32)
        if self.is_scale:
            out *= 1.0 / 255.0
        out = (out - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(out.transpose(2, 0, 1))


def _import_ppdet() -> None:
    """``import ppdet`` (registers the architectures) without its process-wide side effect:
    ppdet.engine sets Pillow's ``ImageFile.LOAD_TRUNCATED_IMAGES = True``, which would make
    every later decode of a truncated training image silently succeed half grey."""
    from PIL import ImageFile

    before = ImageFile.LOAD_TRUNCATED_IMAGES
    try:
        import ppdet  # noqa: F401
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = before


def build_detector_model(config_path: str, num_classes: int) -> Tuple[paddle.nn.Layer, dict]:
    """Create ``cfg["architecture"]`` from a PaddleDetection YAML with ``num_classes``.

    Returns (model, yaml dict). Random initialisation (no ``pretrain_weights`` download).
    """
    _import_ppdet()
    from ppdet.core import workspace
    from ppdet.core.config.schema import SchemaDict

    cfg = read_detector_yaml(config_path)
    arch = cfg.get("architecture")
    if not isinstance(arch, str):
        raise ValueError(f"{config_path}: missing 'architecture: <name>' (e.g. PicoDet, YOLOv3)")
    if arch not in workspace.global_config:
        raise ValueError(f"{config_path}: architecture {arch!r} is not registered in ppdet")
    cfg = dict(cfg, num_classes=int(num_classes))
    # Build against a copy of the registry state, then restore it (see module docstring).
    saved = {k: _snapshot(v, SchemaDict) for k, v in workspace.global_config.items()}
    try:
        workspace.merge_config(cfg)
        model = workspace.create(arch)
    except (KeyError, TypeError, ValueError, AssertionError) as exc:
        raise ValueError(f"{config_path}: cannot build {arch}: {exc}") from exc
    finally:
        workspace.global_config.clear()
        workspace.global_config.update({k: _snapshot(v, SchemaDict) for k, v in saved.items()})
    return model, cfg


def _snapshot(value, schema_dict_type):
    """A copy of one registry entry that later merges cannot alter."""
    if not isinstance(value, schema_dict_type):
        return value
    out = value.copy()
    for key in list(out.keys()):
        try:
            dict.__setitem__(out, key, copy.deepcopy(dict.__getitem__(out, key)))
        except Exception:  # an injected object that cannot be copied: share it
            pass
    return out


# ---------------------------------------------------------------------------- images
def load_image_rgb(path: str) -> np.ndarray:
    """Decode an image file to uint8 RGB [H, W, 3]; transparency is composited on white.

    Raises ValueError when the file cannot be decoded.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            return to_rgb_array(img)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ValueError(f"cannot decode image {path}: {exc}") from None


def to_rgb_array(image) -> np.ndarray:
    """PIL image or array ([H, W], [H, W, 3|4]) -> uint8 RGB [H, W, 3]."""
    from PIL import Image

    if isinstance(image, Image.Image):
        if image.mode in ("RGBA", "LA", "P", "PA"):
            image = image.convert("RGBA")
            canvas = Image.new("RGBA", image.size, (255, 255, 255, 255))
            image = Image.alpha_composite(canvas, image)
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4) or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"image: expected [H, W], [H, W, 3] or [H, W, 4], got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise ValueError(f"image: expected uint8 pixels, got {arr.dtype}")
    if arr.shape[2] == 4:
        alpha = arr[:, :, 3:].astype(np.float32) / 255.0
        arr = (arr[:, :, :3] * alpha + 255.0 * (1.0 - alpha) + 0.5).astype(np.uint8)
    return np.ascontiguousarray(arr)


# ---------------------------------------------------------------------------- weights
def _atomic_save_safetensors(tensors: Dict[str, np.ndarray], path: str, metadata: Dict[str, str]) -> None:
    from safetensors.numpy import save_file

    arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    with atomic_file(path, needed=sum(a.nbytes for a in arrays.values())) as tmp:
        save_file(arrays, str(tmp), metadata=metadata)


def read_weights(path: str) -> Tuple[Dict[str, np.ndarray], Dict[str, str]]:
    """(state dict of numpy arrays, metadata) from .safetensors or .pdparams."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"detector weights not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        check_safetensors(path)  # a damaged file: one line naming it, not the library's traceback
        with safe_open(path, framework="np") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    if path.endswith(".pdparams"):
        try:
            state = paddle.load(path)
        except Exception as exc:  # truncated pickle: EOFError, UnpicklingError, ...
            raise DamagedFileError(path, f"cannot read the Paddle state dict ({type(exc).__name__}: {exc})") from None
        if not isinstance(state, dict):
            raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
        return {k: (v.numpy() if hasattr(v, "numpy") else np.asarray(v)) for k, v in state.items()}, {}
    raise ValueError(f"{path}: detector weights must be .safetensors or .pdparams")


# ---------------------------------------------------------------------------- detector
@dataclass
class Detections:
    """One image's detections, best score first; boxes in pixels of that image."""

    boxes: np.ndarray  # float32 [K, 4] (x0, y0, x1, y1)
    class_ids: np.ndarray  # int64 [K]
    scores: np.ndarray  # float32 [K]
    labels: List[str]  # English names
    labels_zh: List[str]  # Chinese names

    def __len__(self) -> int:
        return len(self.scores)


class Detector:
    """A PaddleDetection detector with a bilingual label map, for batched inference.

    Args:
        config_path: PaddleDetection YAML (e.g. configs/detector/picodet_lcnet_tiny.yml).
        labels: LabelMap, path to labels.json or its list; its size sets num_classes.
        weights: optional .safetensors / .pdparams; without it the model is random.
    """

    def __init__(self, config_path: str, labels, weights: Optional[str] = None):
        self.config_path = config_path
        self.label_map = LabelMap.coerce(labels)
        self.model, self.yaml = build_detector_model(config_path, len(self.label_map))
        self.preprocess = Preprocess.from_yaml(self.yaml, config_path)
        self.model.eval()
        if weights is not None:
            self.load_weights(weights)

    @property
    def num_classes(self) -> int:
        return len(self.label_map)

    @property
    def input_size(self) -> Tuple[int, int]:
        return self.preprocess.height, self.preprocess.width

    # -- weights
    def state_dict_numpy(self) -> Dict[str, np.ndarray]:
        return {k: v.numpy() for k, v in self.model.state_dict().items()}

    def save_weights(self, path: str, extra_metadata: Optional[Dict[str, str]] = None) -> None:
        """Write the weights as safetensors, atomically, with the class names in metadata."""
        metadata = {
            "format": WEIGHTS_FORMAT,
            "architecture": str(self.yaml.get("architecture")),
            "num_classes": str(self.num_classes),
            "labels_en": json.dumps(self.label_map.en, ensure_ascii=False),
        }
        metadata.update(extra_metadata or {})
        _atomic_save_safetensors(self.state_dict_numpy(), path, metadata)

    def load_weights(self, path: str) -> None:
        """Load a state dict; any missing, extra or mis-shaped entry is an error."""
        state, metadata = read_weights(path)
        stored = metadata.get("labels_en")
        if stored is not None and json.loads(stored) != self.label_map.en:
            raise ValueError(f"{path}: trained for classes {json.loads(stored)[:5]}... "
                             f"({metadata.get('num_classes')}), which differ from {self.label_map.source}")
        self.load_state_numpy(state, source=path)

    def load_state_numpy(self, state: Dict[str, np.ndarray], source: str = "state dict") -> None:
        own = self.model.state_dict()
        missing = sorted(set(own) - set(state))
        extra = sorted(set(state) - set(own))
        if missing or extra:
            raise ValueError(f"{source}: does not fit {self.yaml.get('architecture')} from {self.config_path}: "
                             f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
                             f"unexpected {extra[:3]}{'...' if len(extra) > 3 else ''}")
        for key, value in own.items():
            if tuple(value.shape) != tuple(state[key].shape):
                raise ValueError(f"{source}: {key} has shape {tuple(state[key].shape)}, the model needs "
                                 f"{tuple(value.shape)} (different config or number of classes?)")
        self.model.set_state_dict({k: paddle.to_tensor(np.asarray(v, dtype=own[k].numpy().dtype)) for k, v in state.items()})

    # -- inference
    def _forward(self, batch: np.ndarray, sizes: np.ndarray) -> List[np.ndarray]:
        h, w = self.input_size
        scale = np.stack([h / sizes[:, 0], w / sizes[:, 1]], axis=1).astype(np.float32)
        inputs = {
            "image": paddle.to_tensor(batch),
            "im_shape": paddle.to_tensor(np.tile(np.float32([[h, w]]), (len(batch), 1))),
            "scale_factor": paddle.to_tensor(scale),
        }
        with paddle.no_grad():
            out = self.model(inputs)
        rows = out["bbox"].numpy().reshape(-1, 6)
        counts = out["bbox_num"].numpy().reshape(-1).astype(np.int64)
        splits = np.split(rows, np.cumsum(counts)[:-1]) if len(counts) else []
        return splits

    def predict(self, images: Sequence, batch_size: int = 16) -> List[Detections]:
        """Detect objects in images (uint8 RGB arrays, RGBA/grey arrays or PIL images) of
        any sizes; returns one :class:`Detections` per image, boxes in its pixels."""
        if batch_size <= 0:
            raise ValueError(f"batch_size: must be positive, got {batch_size}")
        self.model.eval()
        arrays = [to_rgb_array(im) for im in images]
        results: List[Detections] = []
        for start in range(0, len(arrays), batch_size):
            chunk = arrays[start : start + batch_size]
            batch = np.stack([self.preprocess(a) for a in chunk])
            sizes = np.array([a.shape[:2] for a in chunk], dtype=np.float32)
            for rows, (ih, iw) in zip(self._forward(batch, sizes), sizes):
                results.append(self._to_detections(rows, ih, iw))
        return results

    def _to_detections(self, rows: np.ndarray, ih: float, iw: float) -> Detections:
        # NMS pads "no detection" with class -1 rows on some paths: drop them.
        rows = rows[(rows[:, 0] >= 0) & (rows[:, 0] < self.num_classes)]
        rows = rows[np.argsort(-rows[:, 1], kind="stable")]
        boxes = rows[:, 2:6].astype(np.float32).copy()
        boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, iw)
        boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, ih)
        ids = rows[:, 0].astype(np.int64)
        return Detections(
            boxes=boxes,
            class_ids=ids,
            scores=rows[:, 1].astype(np.float32),
            labels=[self.label_map.en[i] for i in ids],
            labels_zh=[self.label_map.zh[i] for i in ids],
        )
