"""Train the shipped detector on the built-in composed scenes and measure mAP@0.5.

No pretrained detector can be downloaded here, so the project trains its own on the
two-emoji scenes whose true boxes the data builder records (single-emoji records carry
no boxes and are skipped). ``tools/train_detector.py`` is the command-line face.

Resumable: ``OUT/checkpoint.safetensors`` holds the model, the optimizer moments, the
step, the random state and the history, and is replaced atomically every
``checkpoint_every`` steps and at the end; a new run with the same ``out_dir`` continues
from it. The final weights go to ``OUT/detector.safetensors`` (loadable by
:class:`~.detector.Detector`) and the numbers to ``OUT/metrics.json``.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import paddle

from .detector import Detector, _atomic_save_safetensors, load_image_rgb
from .labels import LabelMap
from .metrics import voc_map

CHECKPOINT_NAME = "checkpoint.safetensors"
WEIGHTS_NAME = "detector.safetensors"
METRICS_NAME = "metrics.json"


# ---------------------------------------------------------------------------- data
@dataclass
class SceneAnnotation:
    image: str  # path of the image file
    boxes: np.ndarray  # float32 [K, 4] pixels (x0, y0, x1, y1)
    class_ids: np.ndarray  # int64 [K]


def read_scene_annotations(jsonl_path: str, label_map: LabelMap) -> List[SceneAnnotation]:
    """Records with boxes from a dataset .jsonl, one per image (each scene image appears
    twice, with a zh and an en caption). Image paths are relative to the .jsonl's folder."""
    if not os.path.isfile(jsonl_path):
        raise FileNotFoundError(f"dataset file not found: {jsonl_path}")
    root = os.path.dirname(os.path.abspath(jsonl_path))
    scenes: Dict[str, SceneAnnotation] = {}
    with open(jsonl_path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{jsonl_path}:{line_no}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: invalid JSON: {exc}") from None
            boxes = rec.get("boxes") or []
            if not boxes:
                continue
            labels = rec.get("labels") or []
            if len(labels) != len(boxes):
                raise ValueError(f"{where}: 'labels' must be parallel to 'boxes' ({len(labels)} vs {len(boxes)})")
            ids = label_map.ids_of(labels)
            if any(i is None for i in ids):
                unknown = [n for n, i in zip(labels, ids) if i is None]
                raise ValueError(f"{where}: labels {unknown} are not in {label_map.source}")
            path = os.path.normpath(os.path.join(root, rec["image"]))
            arr = np.asarray(boxes, np.float32).reshape(-1, 4)
            if path not in scenes:
                scenes[path] = SceneAnnotation(path, arr, np.asarray(ids, np.int64))
    return list(scenes.values())


class SceneBatcher:
    """Random augmented training batches in the detector's input format.

    Augmentation (scenes are emoji on white, so the canvas is refilled with white):
    random zoom by a factor in ``zoom`` with a random shift (boxes that keep less than
    half their area are dropped; a sample losing all boxes is used unaugmented), then a
    horizontal flip with probability 0.5.
    """

    def __init__(self, scenes: Sequence[SceneAnnotation], preprocess, rng: np.random.Generator,
                 augment: bool = True, zoom=(0.7, 1.3)):
        if not scenes:
            raise ValueError("no scene records with boxes to train the detector on")
        self.scenes = list(scenes)
        self.images = [load_image_rgb(s.image) for s in self.scenes]
        self.preprocess = preprocess
        self.rng = rng
        self.augment = augment
        self.zoom = zoom

    def _augment(self, image: np.ndarray, boxes: np.ndarray, ids: np.ndarray):
        import cv2

        h, w = image.shape[:2]
        s = self.rng.uniform(*self.zoom)
        nh, nw = max(1, round(h * s)), max(1, round(w * s))
        dx = self.rng.uniform(min(0, w - nw), max(0, w - nw))
        dy = self.rng.uniform(min(0, h - nh), max(0, h - nh))
        m = np.float32([[nw / w, 0, dx], [0, nh / h, dy]])
        out = cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderValue=(255, 255, 255))
        moved = boxes * np.float32([nw / w, nh / h, nw / w, nh / h]) + np.float32([dx, dy, dx, dy])
        clipped = moved.copy()
        clipped[:, [0, 2]] = np.clip(clipped[:, [0, 2]], 0, w)
        clipped[:, [1, 3]] = np.clip(clipped[:, [1, 3]], 0, h)
        area = lambda b: np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
        keep = area(clipped) >= 0.5 * np.maximum(area(moved), 1e-6)
        if not keep.any():
            return image, boxes, ids
        out, boxes, ids = out, clipped[keep], ids[keep]
        if self.rng.random() < 0.5:
            out = np.ascontiguousarray(out[:, ::-1])
            boxes = np.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], axis=1)
        return out, boxes, ids

    def sample(self, batch_size: int) -> Dict[str, np.ndarray]:
        picks = self.rng.integers(0, len(self.scenes), size=batch_size)
        return self.collate([self._item(int(i)) for i in picks], picks)

    def _item(self, i: int):
        image, boxes, ids = self.images[i], self.scenes[i].boxes, self.scenes[i].class_ids
        if self.augment:
            image, boxes, ids = self._augment(image, boxes, ids)
        h, w = image.shape[:2]
        sx, sy = self.preprocess.width / w, self.preprocess.height / h
        return self.preprocess(image), boxes * np.float32([sx, sy, sx, sy]), ids

    def collate(self, items, im_ids) -> Dict[str, np.ndarray]:
        """Pad the boxes to the batch maximum; ``pad_gt_mask`` marks the real ones.

        ``gt_class`` is int64 (ppdet's assigners fail on int32) and ``im_id`` is present
        (PicoDet's loss reads the batch size from it)."""
        n = len(items)
        k = max(1, max(len(b) for _, b, _ in items))
        gt_bbox = np.zeros((n, k, 4), np.float32)
        gt_class = np.zeros((n, k, 1), np.int64)
        pad = np.zeros((n, k, 1), np.float32)
        for j, (_, boxes, ids) in enumerate(items):
            gt_bbox[j, : len(boxes)] = boxes
            gt_class[j, : len(ids), 0] = ids
            pad[j, : len(boxes)] = 1.0
        h, w = self.preprocess.height, self.preprocess.width
        return {
            "image": np.stack([im for im, _, _ in items]).astype(np.float32),
            "gt_bbox": gt_bbox,
            "gt_class": gt_class,
            "pad_gt_mask": pad,
            "im_id": np.asarray(im_ids, np.int64).reshape(n, 1),
            "im_shape": np.tile(np.float32([[h, w]]), (n, 1)),
            "scale_factor": np.ones((n, 2), np.float32),
        }


def detector_losses(model: paddle.nn.Layer, batch: Dict[str, np.ndarray], epoch_id: int) -> Dict[str, paddle.Tensor]:
    """One training forward: ppdet's loss dict (``loss`` is the total)."""
    model.train()
    inputs = {k: paddle.to_tensor(v) for k, v in batch.items()}
    inputs["epoch_id"] = int(epoch_id)
    return model(inputs)


def evaluate_detector(detector: Detector, scenes: Sequence[SceneAnnotation], batch_size: int = 32,
                      groups: Optional[Dict[str, Sequence[int]]] = None) -> Dict:
    """VOC mAP@0.5 of ``detector`` on ``scenes`` (all its NMS outputs, no threshold).

    ``groups`` optionally names subsets (indices into ``scenes``) to score separately
    from the same predictions; their mAPs go to ``result["groups"]``.
    """
    images = [load_image_rgb(s.image) for s in scenes]
    dets = detector.predict(images, batch_size=batch_size)
    preds = [(d.boxes, d.class_ids, d.scores) for d in dets]
    gts = [(s.boxes, s.class_ids) for s in scenes]
    mean_ap, per_class = voc_map(preds, gts, detector.num_classes)
    result = {"map50": mean_ap, "ap50": {detector.label_map.en[c]: round(v, 4) for c, v in per_class.items()},
              "num_images": len(scenes)}
    if groups:
        result["groups"] = {name: voc_map([preds[i] for i in idx], [gts[i] for i in idx], detector.num_classes)[0]
                            for name, idx in groups.items()}
    return result


# ---------------------------------------------------------------------------- checkpoints
def _optimizer_state(opt, model) -> Dict[str, np.ndarray]:
    """Optimizer tensors keyed by structured parameter name: Paddle's own keys use
    generated names (``conv2d_12.w_0``) that depend on creation order in the process."""
    by_name = {p.name: n for n, p in model.named_parameters()}
    out = {}
    for key, value in opt.state_dict().items():
        if not hasattr(value, "numpy"):
            continue
        prefix = max((p for p in by_name if key.startswith(p + "_")), key=len, default=None)
        if prefix is not None:
            out[by_name[prefix] + "::" + key[len(prefix) + 1 :]] = value.numpy()
    return out


def _restore_optimizer(opt, model, state: Dict[str, np.ndarray]) -> None:
    by_struct = {n: p.name for n, p in model.named_parameters()}
    restored = {}
    for key, value in state.items():
        struct, suffix = key.split("::", 1)
        if struct not in by_struct:
            raise ValueError(f"checkpoint optimizer state for unknown parameter {struct}")
        restored[f"{by_struct[struct]}_{suffix}"] = paddle.to_tensor(value)
    opt.set_state_dict(restored)


def save_checkpoint(path: str, detector: Detector, opt, meta: dict) -> None:
    tensors = {f"model/{k}": v for k, v in detector.state_dict_numpy().items()}
    tensors.update({f"optim/{k}": v for k, v in _optimizer_state(opt, detector.model).items()})
    _atomic_save_safetensors(tensors, path, {"meta": json.dumps(meta)})


def load_checkpoint(path: str, detector: Detector, opt) -> dict:
    from safetensors import safe_open

    with safe_open(path, framework="np") as f:
        meta = json.loads((f.metadata() or {})["meta"])
        model_state = {k[len("model/") :]: f.get_tensor(k) for k in f.keys() if k.startswith("model/")}
        optim_state = {k[len("optim/") :]: f.get_tensor(k) for k in f.keys() if k.startswith("optim/")}
    detector.load_state_numpy(model_state, source=path)
    _restore_optimizer(opt, detector.model, optim_state)
    return meta


def _atomic_write_json(path: str, data) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------- training
def learning_rate(step: int, base_lr: float, max_steps: int, warmup_steps: int, min_ratio: float = 0.05) -> float:
    """Linear warm-up, then cosine decay to ``min_ratio * base_lr`` at ``max_steps``."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    t = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return base_lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def _read_datasets(data_dirs: Sequence[str]):
    """(label map, train scenes, {data_dir: val scenes}); every folder must share labels.json."""
    label_map, train, val = None, [], {}
    for data_dir in data_dirs:
        labels = LabelMap.from_file(os.path.join(data_dir, "labels.json"))
        if label_map is None:
            label_map = labels
        elif (labels.en, labels.zh) != (label_map.en, label_map.zh):
            raise ValueError(f"{data_dir}/labels.json differs from {label_map.source}: "
                             "datasets trained together must share their classes")
        train += read_scene_annotations(os.path.join(data_dir, "train.jsonl"), labels)
        val[data_dir] = read_scene_annotations(os.path.join(data_dir, "val.jsonl"), labels)
        if not val[data_dir]:
            raise ValueError(f"{data_dir}/val.jsonl has no scene records with boxes to evaluate on")
    return label_map, train, val


def train_detector(
    config_path: str,
    data_dirs: Union[str, Sequence[str]],
    out_dir: str,
    *,
    max_steps: int = 1000,
    batch_size: int = 16,
    lr: float = 4e-3,
    weight_decay: float = 1e-4,
    warmup_steps: int = 100,
    eval_every: int = 500,
    checkpoint_every: int = 100,
    max_minutes: Optional[float] = None,
    seed: int = 0,
    resume: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Train on the scenes of ``DIR/train.jsonl`` for each DIR in ``data_dirs`` (e.g. the
    built-in dataset at 32 and 64 px, sharing labels.json); report VOC mAP@0.5 on each
    ``DIR/val.jsonl`` and on their union (``map50``).

    ``max_steps`` sets the learning-rate schedule and the end; ``max_minutes`` (wall time
    of the training loop including its periodic evaluations, summed over resumed runs)
    stops early with a checkpoint so a later run can go on. Returns the metrics dict also
    written to ``OUT/metrics.json`` (``train_seconds`` is that same wall time).
    """
    data_dirs = [data_dirs] if isinstance(data_dirs, str) else list(data_dirs)
    if not data_dirs:
        raise ValueError("data_dirs: give at least one dataset folder")
    label_map, train, val_sets = _read_datasets(data_dirs)
    val = [s for scenes in val_sets.values() for s in scenes]
    os.makedirs(out_dir, exist_ok=True)
    ckpt_path = os.path.join(out_dir, CHECKPOINT_NAME)

    paddle.seed(seed)
    detector = Detector(config_path, label_map)
    model = detector.model
    opt = paddle.optimizer.AdamW(learning_rate=lr, parameters=model.parameters(), weight_decay=weight_decay,
                                 grad_clip=paddle.nn.ClipGradByGlobalNorm(10.0))
    rng = np.random.default_rng(seed)
    meta = {"step": 0, "train_seconds": 0.0, "history": []}
    if resume and os.path.isfile(ckpt_path):
        meta = load_checkpoint(ckpt_path, detector, opt)
        rng.bit_generator.state = meta["rng"]
        log(f"resumed from {ckpt_path} at step {meta['step']} ({meta['train_seconds']:.0f} s trained)")
    batcher = SceneBatcher(train, detector.preprocess, rng)
    log(f"{len(train)} training scenes, {len(val)} validation scenes, {len(label_map)} classes, "
        f"input {detector.input_size}, {sum(int(p.size) for p in model.parameters())} parameters")

    def checkpoint():
        meta["rng"] = rng.bit_generator.state
        meta.update(config=os.path.abspath(config_path), data_dirs=[os.path.abspath(d) for d in data_dirs],
                    max_steps=max_steps)
        save_checkpoint(ckpt_path, detector, opt, meta)

    start = time.time()
    base_seconds = meta["train_seconds"]
    step = meta["step"]
    stopped_early = False
    window: List[float] = []
    while step < max_steps:
        if max_minutes is not None and base_seconds + time.time() - start >= max_minutes * 60:
            stopped_early = True
            break
        opt.set_lr(learning_rate(step, lr, max_steps, warmup_steps))
        epoch = step * batch_size // len(train)
        losses = detector_losses(model, batcher.sample(batch_size), epoch)
        losses["loss"].backward()
        opt.step()
        opt.clear_grad()
        step += 1
        window.append(float(losses["loss"]))
        meta["step"], meta["train_seconds"] = step, base_seconds + time.time() - start
        if step % 50 == 0 or step == max_steps:
            log(f"step {step}/{max_steps} loss {np.mean(window):.4f} lr {opt.get_lr():.2e} "
                f"({meta['train_seconds']:.0f} s)")
            window = []
        if step % eval_every == 0 and step < max_steps:
            result = evaluate_detector(detector, val)
            meta["history"].append({"step": step, "train_seconds": round(meta["train_seconds"], 1),
                                    "map50": round(result["map50"], 4)})
            log(f"step {step}: val mAP@0.5 = {result['map50']:.4f}")
        if step % checkpoint_every == 0:
            checkpoint()
    checkpoint()

    bounds = np.cumsum([0] + [len(v) for v in val_sets.values()])
    groups = {d: range(bounds[i], bounds[i + 1]) for i, d in enumerate(val_sets)}
    result = evaluate_detector(detector, val, groups=groups)
    per_dataset = {d: round(v, 4) for d, v in result["groups"].items()}
    weights_path = os.path.join(out_dir, WEIGHTS_NAME)
    detector.save_weights(weights_path, {"train_steps": str(step), "val_map50": f"{result['map50']:.4f}"})
    metrics = {
        "map50": result["map50"],
        "ap50": result["ap50"],
        "map50_per_dataset": per_dataset,
        "val_images": len(val),
        "train_images": len(train),
        "steps": step,
        "max_steps": max_steps,
        "finished": step >= max_steps and not stopped_early,
        "train_seconds": round(meta["train_seconds"], 1),
        "history": meta["history"],
        "weights": os.path.abspath(weights_path),
        "config": os.path.abspath(config_path),
        "labels": os.path.abspath(label_map.source),
        "data_dirs": [os.path.abspath(d) for d in data_dirs],
    }
    _atomic_write_json(os.path.join(out_dir, METRICS_NAME), metrics)
    log(f"val mAP@0.5 = {result['map50']:.4f} {per_dataset} after {step} steps, {meta['train_seconds'] / 60:.1f} min; "
        f"weights: {weights_path}")
    return metrics
