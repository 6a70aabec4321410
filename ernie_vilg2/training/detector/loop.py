"""Train the shipped detector on composed scenes (plus single-emoji images) and score it.

No pretrained detector can be downloaded here, so the project trains its own on the
two-emoji scenes whose true boxes the data builder records (:mod:`.data`), with augmented
batches (:mod:`.augment`), and scores it on held-out data (:mod:`.evaluate`).
``tools/train_detector.py`` is the command-line face.

The pieces are the main trainer's: AdamW with the warm-up of :mod:`..schedule` (then a
cosine decay to ``max_steps``), checkpoints of :mod:`..checkpoint` in ``OUT/checkpoints/``
(``step-XXXXXX/`` folders: the model with its batch-norm statistics, the optimizer state
keyed by structured parameter names, and in ``state.json`` the step, the random state and
the history), written every ``checkpoint_every`` steps and at the end. A new run with the
same ``out_dir`` continues from the newest intact one; a run of an earlier version
(``OUT/checkpoint.safetensors``) is not resumed. The final weights go to
``OUT/detector.safetensors`` (loadable by :class:`~ernie_vilg2.knowledge.visual.detector.Detector`)
and the numbers to ``OUT/metrics.json``.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import paddle

from ...knowledge.visual.detector import Detector
from ...utils.io import atomic_write_text
from ..checkpoint import find_resume_checkpoint, load_checkpoint, save_checkpoint, set_aside_damaged
from ..loop import portable_optimizer_state, restore_optimizer_state
from ..schedule import lr_schedule
from .augment import SceneBatcher
from .config import DetectorTrainConfig
from .data import build_single_emoji_sets, dataset_resolutions, read_datasets
from .evaluate import evaluate_all, summary_line

CHECKPOINTS_DIR = "checkpoints"
EARLIER_CHECKPOINT = "checkpoint.safetensors"  # the single-file format of earlier versions
WEIGHTS_NAME = "detector.safetensors"
METRICS_NAME = "metrics.json"
START_OVER = "move it away or pass --no-resume to start over"
LOG_EVERY = 50


def detector_losses(model: paddle.nn.Layer, batch: Dict[str, np.ndarray], epoch_id: int) -> Dict[str, paddle.Tensor]:
    """One training forward: ppdet's loss dict (``loss`` is the total)."""
    model.train()
    inputs = {k: paddle.to_tensor(v) for k, v in batch.items()}
    inputs["epoch_id"] = int(epoch_id)
    return model(inputs)


def resume_detector_training(out_dir: str, detector: Detector, opt, schedule) -> Optional[Tuple[str, dict]]:
    """Load the newest intact checkpoint of ``OUT/checkpoints/`` into the detector, the
    optimizer and the schedule (damaged newer ones are set aside with a warning); return
    (its path, its state.json) or None when there is none. A checkpoint of an earlier
    version alone is refused in one line."""
    folder = os.path.join(out_dir, CHECKPOINTS_DIR)
    path, damaged = find_resume_checkpoint(folder, hint=START_OVER)
    if path is None:
        earlier = os.path.join(out_dir, EARLIER_CHECKPOINT)
        if os.path.isfile(earlier):
            raise ValueError(f"{earlier}: a checkpoint of an earlier version of the detector trainer, which this "
                             f"one cannot resume; {START_OVER}")
        return None
    set_aside_damaged(damaged, path)
    ckpt = load_checkpoint(path, checksum=False)  # verified by find_resume_checkpoint
    detector.load_state_numpy({k: v.numpy() for k, v in ckpt["model"].items()}, source=path)
    params = dict(detector.model.named_parameters())
    opt.set_state_dict(restore_optimizer_state(ckpt["optimizer"], params))
    schedule.last_lr = schedule.get_lr()  # of the restored step under this run's max_steps
    return path, ckpt["meta"]


def save_detector_checkpoint(out_dir: str, detector: Detector, opt, meta: dict, keep: int) -> str:
    params = dict(detector.model.named_parameters())
    return save_checkpoint(os.path.join(out_dir, CHECKPOINTS_DIR), meta["step"], detector.model.state_dict(),
                           portable_optimizer_state(opt.state_dict(), params),
                           meta={k: v for k, v in meta.items() if k != "step"}, keep=keep)


def train_detector(cfg: DetectorTrainConfig, log: Callable[[str], None] = print) -> dict:
    """Train as ``cfg`` says; report VOC mAP@0.5 on each ``DIR/val.jsonl`` and on their union
    (``map50``) and, with ``cfg.singles`` (classes must be emoji names, as in the built-in
    labels.json), the held-out single-emoji numbers (see :func:`~.evaluate.evaluate_all`).
    Returns the metrics dict also written to ``OUT/metrics.json`` (``train_seconds``: the
    wall time of the training loop, summed over resumed runs)."""
    singles = cfg.singles
    label_map, train, val_sets = read_datasets(cfg.data_dirs)
    val = [s for scenes in val_sets.values() for s in scenes]
    sets = build_single_emoji_sets(singles, label_map, dataset_resolutions(val_sets)) if singles else None
    os.makedirs(cfg.out_dir, exist_ok=True)

    paddle.seed(cfg.seed)
    detector = Detector(cfg.detector_config, label_map)
    model = detector.model
    schedule = lr_schedule(cfg.lr, cfg.warmup_steps, decay_steps=cfg.max_steps)
    opt = paddle.optimizer.AdamW(learning_rate=schedule, parameters=model.parameters(), weight_decay=cfg.weight_decay,
                                 grad_clip=paddle.nn.ClipGradByGlobalNorm(cfg.max_grad_norm))
    rng = np.random.default_rng(cfg.seed)
    meta = {"step": 0, "train_seconds": 0.0, "history": []}
    resumed = resume_detector_training(cfg.out_dir, detector, opt, schedule) if cfg.resume else None
    if resumed is not None:
        path, state = resumed
        meta = {k: state[k] for k in ("step", "train_seconds", "history")}
        rng.bit_generator.state = state["rng"]
        log(f"resumed from {path} at step {meta['step']} ({meta['train_seconds']:.0f} s trained)")
    if sets is not None:
        batcher = SceneBatcher(train, detector.preprocess, rng, singles=sets.train_singles,
                               negatives=sets.train_negatives, single_fraction=singles.single_fraction,
                               negative_fraction=singles.negative_fraction)
        log(f"{len(sets.train_singles)} training singles, {len(sets.train_negatives)} training negatives; "
            f"held out: {sum(map(len, sets.val_singles.values()))} singles, "
            f"{sum(map(len, sets.val_negatives.values()))} negatives")
    else:
        batcher = SceneBatcher(train, detector.preprocess, rng)
    log(f"{len(train)} training scenes, {len(val)} validation scenes, {len(label_map)} classes, "
        f"input {detector.input_size}, {sum(int(p.size) for p in model.parameters())} parameters")
    record = {"config": os.path.abspath(cfg.detector_config), "data_dirs": [os.path.abspath(d) for d in cfg.data_dirs],
              "singles": asdict(singles) if singles else None}

    def checkpoint():
        meta.update(rng=rng.bit_generator.state, max_steps=cfg.max_steps, **record)
        save_detector_checkpoint(cfg.out_dir, detector, opt, meta, cfg.keep_checkpoints)

    start = time.time()
    base_seconds = meta["train_seconds"]
    step = meta["step"]
    stopped_early = False
    window: List[float] = []
    while step < cfg.max_steps:
        if cfg.max_minutes is not None and base_seconds + time.time() - start >= cfg.max_minutes * 60:
            stopped_early = True
            break
        lr = schedule.last_lr
        epoch = step * cfg.batch_size // len(train)
        losses = detector_losses(model, batcher.sample(cfg.batch_size), epoch)
        losses["loss"].backward()
        opt.step()
        opt.clear_grad()
        schedule.step()
        step += 1
        window.append(float(losses["loss"]))
        meta["step"], meta["train_seconds"] = step, base_seconds + time.time() - start
        if step % LOG_EVERY == 0 or step == cfg.max_steps:
            log(f"step {step}/{cfg.max_steps} loss {np.mean(window):.4f} lr {lr:.2e} ({meta['train_seconds']:.0f} s)")
            window = []
        if step % cfg.eval_every == 0 and step < cfg.max_steps:
            result = evaluate_all(detector, val_sets, sets)
            meta["history"].append({"step": step, "train_seconds": round(meta["train_seconds"], 1),
                                    **{k: round(result[k], 4) for k in ("map50", "single_ap50", "negative_fp_rate")
                                       if k in result}})
            log(f"step {step}: {summary_line(result)}")
        if step % cfg.checkpoint_every == 0:
            checkpoint()
    checkpoint()

    result = evaluate_all(detector, val_sets, sets)
    weights_path = os.path.join(cfg.out_dir, WEIGHTS_NAME)
    detector.save_weights(weights_path, {"train_steps": str(step), "val_map50": f"{result['map50']:.4f}"})
    metrics = {
        **result,
        "train_images": len(train),
        "steps": step,
        "max_steps": cfg.max_steps,
        "finished": step >= cfg.max_steps and not stopped_early,
        "train_seconds": round(meta["train_seconds"], 1),
        "history": meta["history"],
        "weights": os.path.abspath(weights_path),
        "config": record["config"],
        "labels": os.path.abspath(label_map.source),
        "data_dirs": record["data_dirs"],
        "singles": record["singles"],
    }
    atomic_write_text(os.path.join(cfg.out_dir, METRICS_NAME), json.dumps(metrics, indent=2, ensure_ascii=False))
    log(f"{summary_line(result)} after {step} steps, {meta['train_seconds'] / 60:.1f} min; weights: {weights_path}")
    return metrics
