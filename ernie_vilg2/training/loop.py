"""The stage-agnostic training loop: AdamW, clipping, EMA, checkpoints, resume, logging.

Every random draw of step ``k`` comes from ``numpy.random.default_rng([seed, stage, k])``
(noise, timesteps, caption dropout, knowledge choices) and the data order is a function of the
step too, so a resumed run replays exactly the steps an uninterrupted run would have taken;
only the parameters, optimizer and EMA state need to be checkpointed. A step function may
report ``data_wait_s`` (the time it waited for its batch): the progress bar shows it, VisualDL
gets its mean per step over each logging window.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import paddle
from tqdm import tqdm

from ..errors import ErnieViLG2Error
from .checkpoint import (
    CheckpointMismatch,
    find_resume_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    set_aside_damaged,
)
from .config import StageConfig
from .ema import ExponentialMovingAverage
from .schedule import lr_schedule

logger = logging.getLogger(__name__)

StepFn = Callable[[int, np.random.Generator], Tuple[paddle.Tensor, Dict[str, float]]]


class TrainingDiverged(ErnieViLG2Error, RuntimeError):
    """The loss became NaN or inf; the last good checkpoint is kept."""


@dataclass
class LoopSettings:
    stage: str
    stage_index: int
    seed: int
    checkpoint_dir: str
    checkpoint_every: int
    keep_checkpoints: int = 2
    log_every: int = 10
    samples_per_step: int = 1
    is_main: bool = True
    run_config: Optional[dict] = None  # the experiment config, stored in every checkpoint


def trainable_parameters(module: paddle.nn.Layer) -> Dict[str, paddle.Tensor]:
    return {name: p for name, p in module.named_parameters() if not p.stop_gradient}


class LoopHooks:
    """What a distributed layout changes in the loop. These defaults: one process, or Paddle's
    wrappers that synchronise by themselves, and checkpoints written by the main process.
    (Expert parallelism: :class:`~ernie_vilg2.training.expert_parallel.ExpertParallelHooks`.)"""

    clips_gradients = False  # True: after_backward clips, the optimizer must not

    def setup(self, params: Dict[str, paddle.Tensor], max_grad_norm: Optional[float]) -> None:
        pass

    def after_backward(self) -> None:
        pass

    def holds(self, name: str) -> bool:
        """Whether this process trains parameter ``name`` (a checkpoint may hold more)."""
        return True

    def writes_checkpoints(self, is_main: bool) -> bool:
        return is_main

    def save_checkpoint(self, folder, step, model_state, optimizer_state, ema_state, meta, keep, config) -> str:
        return save_checkpoint(folder, step, model_state, optimizer_state, ema_state, meta=meta, keep=keep,
                               config=config)

    def load_checkpoint(self, path: str) -> dict:
        return load_checkpoint(path, checksum=False)  # verified by find_resume_checkpoint or the caller


def build_optimizer(params: Dict[str, paddle.Tensor], cfg: StageConfig, clip: bool = True):
    schedule = lr_schedule(cfg.lr, cfg.warmup_steps)
    clip = paddle.nn.ClipGradByGlobalNorm(cfg.max_grad_norm) if cfg.max_grad_norm and clip else None
    optimizer = paddle.optimizer.AdamW(
        learning_rate=schedule,
        beta1=cfg.betas[0],
        beta2=cfg.betas[1],
        weight_decay=cfg.weight_decay,
        parameters=list(params.values()),
        grad_clip=clip,
    )
    return optimizer, schedule


def _rename_state(state: dict, renames: Dict[str, str]) -> dict:
    """Rename optimizer-state keys ``<old>_<accumulator>`` (and nested master weights)."""
    out = {}
    for key, value in state.items():
        if isinstance(value, dict) and key != "LR_Scheduler":
            value = _rename_state(value, renames)
        new_key = key
        for old, new in renames.items():
            if key == old or key.startswith(old + "_"):
                new_key = new + key[len(old):]
                break
        out[new_key] = value
    return out


def portable_optimizer_state(state: dict, params: Dict[str, paddle.Tensor]) -> dict:
    """Key accumulators by structured parameter name instead of Paddle's global
    ``linear_12.w_0`` names, which depend on how many layers a process built before."""
    # Longest names first so that "linear_1.w_0" never claims "linear_1.w_0_x" of another.
    renames = {p.name: name for name, p in sorted(params.items(), key=lambda kv: -len(kv[1].name))}
    return _rename_state(state, renames)


def restore_optimizer_state(state: dict, params: Dict[str, paddle.Tensor]) -> dict:
    renames = {name: p.name for name, p in sorted(params.items(), key=lambda kv: -len(kv[0]))}
    return _rename_state(state, renames)


def step_rng(seed: int, stage_index: int, step: int) -> np.random.Generator:
    return np.random.default_rng([seed, stage_index, step])


class Trainer:
    """Runs ``step_fn`` for ``cfg.steps`` steps with checkpointing and resume."""

    def __init__(
        self,
        module: paddle.nn.Layer,
        step_fn: StepFn,
        cfg: StageConfig,
        settings: LoopSettings,
        writer=None,
        on_step: Optional[Callable[[int], None]] = None,
        wrap_fn: Optional[Callable] = None,
        hooks: Optional[LoopHooks] = None,
        on_checkpoint: Optional[Callable[[], None]] = None,
    ):
        self.module = module
        self.step_fn = step_fn
        self.cfg = cfg
        self.settings = settings
        self.writer = writer
        self.on_step = on_step  # called after every step with the step count (sample grids)
        # called on every rank after a checkpoint step: a barrier that outlasts gloo's 30 s
        self.on_checkpoint = on_checkpoint
        self.hooks = hooks or LoopHooks()
        self.params = trainable_parameters(module)
        if not self.params:
            raise ValueError(f"stage {settings.stage!r}: nothing to train (all parameters are frozen)")
        self.hooks.setup(self.params, cfg.max_grad_norm)
        self.optimizer, self.schedule = build_optimizer(self.params, cfg, clip=not self.hooks.clips_gradients)
        if wrap_fn is not None:  # distributed wrappers (DataParallel / Fleet)
            self.optimizer = wrap_fn(self.optimizer)
        self.ema = ExponentialMovingAverage(self.params, cfg.ema_decay) if cfg.ema_decay else None
        self.step = 0

    # -- checkpoints -----------------------------------------------------------------
    def resume(self, path: Optional[str] = None) -> bool:
        """Load checkpoint ``path``, or else the newest intact one of the checkpoint folder
        (damaged newer ones are set aside with a warning). False if there is none."""
        if path is None:
            path, damaged = find_resume_checkpoint(self.settings.checkpoint_dir)
            if path is not None and damaged and self.settings.is_main:
                set_aside_damaged(damaged, path)
            if path is None:
                return False
        ckpt = self.hooks.load_checkpoint(path)
        self._load_parameters(self._held(ckpt["model"]), path)
        self.optimizer.set_state_dict(restore_optimizer_state(self._held(ckpt["optimizer"]), self.params))
        # The schedule's lr from the config (base lr x warm-up factor of the restored step):
        # equal to the saved one unless train.<stage>.lr or warmup_steps was changed on resume.
        self.schedule.last_lr = self.schedule.get_lr()
        if self.ema is not None:
            if ckpt["ema"] is None:
                logger.warning("checkpoint %s has no EMA state (ema_decay was off): the EMA starts from its weights",
                               path)
                self.ema = ExponentialMovingAverage(self.params, self.cfg.ema_decay)
            else:
                self.ema.load_state_dict(self._held(ckpt["ema"]))
        self.step = ckpt["step"]
        logger.info("resumed stage %s from %s (step %d)", self.settings.stage, path, self.step)
        return True

    def _held(self, state: dict) -> dict:
        """``state`` without the tensors of parameters another process trains (expert parallelism)."""
        return {k: (self._held(v) if isinstance(v, dict) else v) for k, v in state.items()
                if isinstance(v, dict) or self.hooks.holds(k)}

    def _load_parameters(self, state: Dict[str, paddle.Tensor], path: str) -> None:
        """Set every parameter the checkpoint holds (frozen ones too); a missing trainable
        one or a shape that differs is a one-line :class:`CheckpointMismatch`."""
        own = dict(self.module.named_parameters())
        problems = [f"it lacks {name}" for name in sorted(set(self.params) - set(state))]
        problems += [f"the model has no {name}" for name in sorted(set(state) - set(own))]
        problems += [f"{name} has shape {list(value.shape)} there, {list(own[name].shape)} here"
                     for name, value in state.items() if name in own and list(value.shape) != list(own[name].shape)]
        if problems:
            raise CheckpointMismatch(f"checkpoint {path} does not fit the model of this config: {problems[0]}"
                                     f"{f' (and {len(problems) - 1} more)' if len(problems) > 1 else ''}")
        for name, value in state.items():
            own[name].set_value(value)

    def save(self) -> str:
        return self.hooks.save_checkpoint(
            self.settings.checkpoint_dir,
            self.step,
            self.params,
            portable_optimizer_state(self.optimizer.state_dict(), self.params),
            self.ema.state_dict() if self.ema else None,
            meta={"stage": self.settings.stage},
            keep=self.settings.keep_checkpoints,
            config=self.settings.run_config,
        )

    # -- loop ----------------------------------------------------------------------------
    def train(self) -> None:
        s = self.settings
        bar = tqdm(total=self.cfg.steps, initial=self.step, desc=f"train[{s.stage}]", disable=not s.is_main,
                   dynamic_ncols=True)
        window_start, window_steps, window_wait = time.time(), 0, 0.0
        while self.step < self.cfg.steps:
            rng = step_rng(s.seed, s.stage_index, self.step)
            loss, logs = self.step_fn(self.step, rng)
            wait = logs.pop("data_wait_s", None)  # seconds the step waited for its batch
            value = float(loss)
            if not math.isfinite(value):
                last = latest_checkpoint(s.checkpoint_dir)
                raise TrainingDiverged(
                    f"stage {s.stage}: loss is {value} at step {self.step}; stopped without saving. "
                    f"Last good checkpoint: {last or 'none'} (lower train.{s.stage}.lr or enable clipping)"
                )
            loss.backward()
            self.hooks.after_backward()
            self.optimizer.step()
            # set_to_zero=False: experts a batch did not reach keep grad None, so AdamW
            # (momentum, weight decay) leaves them untouched, as stage 2 requires.
            self.optimizer.clear_grad(set_to_zero=False)
            self.schedule.step()
            if self.ema is not None:
                self.ema.update()
            self.step += 1
            window_steps += 1
            window_wait += wait or 0.0
            bar.update(1)
            bar.set_postfix(loss=f"{value:.4f}", **({} if wait is None else {"data_wait": f"{wait:.3f}s"}))
            if self.step % s.log_every == 0 or self.step == self.cfg.steps:
                elapsed = max(time.time() - window_start, 1e-9)
                logs = {"loss": value, **logs, "lr": float(self.schedule.get_lr()),
                        "samples_per_s": window_steps * s.samples_per_step / elapsed}
                if wait is not None:  # the mean over the steps since the last log
                    logs["data_wait_s"] = window_wait / window_steps
                self._log(logs)
                window_start, window_steps, window_wait = time.time(), 0, 0.0
            if self.step % s.checkpoint_every == 0 or self.step == self.cfg.steps:
                if self.hooks.writes_checkpoints(s.is_main):
                    self.save()
                if self.on_checkpoint is not None:  # the other ranks wait here, not in a collective
                    self.on_checkpoint()
            if self.on_step is not None:
                self.on_step(self.step)
        bar.close()

    def _log(self, logs: Dict[str, float]) -> None:
        if self.writer is not None and self.settings.is_main:
            for key, value in logs.items():
                self.writer.add_scalar(f"{self.settings.stage}/{key}", value, self.step)
        if self.settings.is_main:
            logger.debug("step %d: %s", self.step, logs)

    def finalize_weights(self) -> None:
        """Leave the EMA weights in the module (what gets exported)."""
        if self.ema is not None:
            self.ema.copy_to_params()
