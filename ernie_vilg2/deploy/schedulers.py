"""NumPy DDIM and DPM-Solver++ samplers, equal to PPDiffusers' to float32 rounding.

The runner's scheduler loop stays outside the exported graphs (as in PPDiffusers' own
Paddle Inference pipelines) and must not need PPDiffusers, so these two re-implement the
deterministic paths of PPDiffusers 0.29's ``DDIMScheduler`` (eta = 0) and
``DPMSolverMultistepScheduler`` (``dpmsolver++``, multistep, order 1 or 2, midpoint or
heun, ``lower_order_final``). :func:`build_scheduler` configures them from the saved
scheduler config exactly as :func:`ernie_vilg2.models.factory.build_sampler` does (DDIM
with ``clip_sample=False, set_alpha_to_one=False``; DPM-Solver++ with
``algorithm_type="dpmsolver++", solver_order=2``), or as saved when no sampler is named.
Every quantity is float32 as in PPDiffusers. Settings outside these paths (thresholding,
Karras sigmas, SDE variants, ...) are refused with the field's name.
tests/deploy/test_deploy_schedulers.py compares them with PPDiffusers step by step.
"""
from __future__ import annotations

import math
from typing import List, Mapping, Optional

import numpy as np

SAMPLERS = ("ddim", "dpm")
# Bounds the arrays of T numbers a config can ask for; the manifest's T also equals its
# programs' timestep tables (program_bounds).
MAX_TRAIN_TIMESTEPS = 100_000
_F32 = np.float32


def _config_error(field: str, value, supported) -> ValueError:
    return ValueError(f"scheduler.{field}: {value!r} is not supported by the deploy runner (supported: {supported})")


def _number(config: Mapping, field: str, default, low: float, high: float, integer: bool = False):
    """``config[field]`` (or ``default``), a finite number in [low, high] (an integer if asked)."""
    value = config.get(field, default)
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not (math.isfinite(value) and low <= value <= high):
        kind = "an integer" if integer else "a finite number"
        raise ValueError(f"scheduler.{field}: must be {kind} in [{low}, {high}], got {value!r}")
    return value


def _betas(config: Mapping, steps: int) -> np.ndarray:
    trained = config.get("trained_betas")
    if trained is not None:
        if not (isinstance(trained, list) and len(trained) == steps):
            raise ValueError(f"scheduler.trained_betas: expected a list of num_train_timesteps ({steps}) numbers")
        for i in range(steps):
            _number({"trained_betas": trained[i]}, "trained_betas", None, 0.0, 1.0)
        return np.asarray(trained, dtype=_F32)
    schedule = config.get("beta_schedule", "linear")
    start = _number(config, "beta_start", 0.0001, 0.0, 1.0)
    end = _number(config, "beta_end", 0.02, 0.0, 1.0)
    if schedule == "linear":
        return np.linspace(start, end, steps, dtype=_F32)
    if schedule == "scaled_linear":
        return np.linspace(start**0.5, end**0.5, steps, dtype=_F32) ** 2
    if schedule == "squaredcos_cap_v2":
        def alpha_bar(t):
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        return np.array(
            [min(1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), 0.999) for i in range(steps)], dtype=_F32
        )
    raise _config_error("beta_schedule", schedule, "linear, scaled_linear, squaredcos_cap_v2")


def _require(config: Mapping, field: str, allowed, default):
    value = config.get(field, default)
    if value not in allowed:
        raise _config_error(field, value, ", ".join(map(str, allowed)))
    return value


class _Scheduler:
    def __init__(self, config: Mapping):
        self.config = dict(config)
        self.num_train_timesteps = _number(config, "num_train_timesteps", 1000, 1, MAX_TRAIN_TIMESTEPS, integer=True)
        self.prediction_type = _require(config, "prediction_type", ("epsilon", "v_prediction", "sample"), "epsilon")
        _require(config, "thresholding", (False,), False)
        self.timestep_spacing = _require(config, "timestep_spacing", ("linspace", "leading", "trailing"),
                                         self.default_spacing)
        self.steps_offset = _number(config, "steps_offset", 0, 0, self.num_train_timesteps - 1, integer=True)
        self.alphas_cumprod = np.cumprod(1.0 - _betas(config, self.num_train_timesteps), dtype=_F32)
        self.init_noise_sigma = 1.0
        self.timesteps = np.zeros(0, dtype=np.int64)

    default_spacing = "leading"

    def scale_model_input(self, sample: np.ndarray, timestep=None) -> np.ndarray:
        return sample


class DDIMScheduler(_Scheduler):
    """DDIM with eta 0."""

    default_spacing = "leading"

    def __init__(self, config: Mapping):
        super().__init__(config)
        _require(config, "rescale_betas_zero_snr", (False,), False)
        self.clip_sample = bool(config.get("clip_sample", True))
        self.clip_sample_range = _F32(_number(config, "clip_sample_range", 1.0, 0.0, math.inf))
        self.final_alpha_cumprod = _F32(1.0) if config.get("set_alpha_to_one", True) else self.alphas_cumprod[0]
        self.num_inference_steps: Optional[int] = None

    def set_timesteps(self, num_inference_steps: int) -> None:
        T = self.num_train_timesteps
        if num_inference_steps > T:
            raise ValueError(
                f"`num_inference_steps`: {num_inference_steps} cannot be larger than `self.config.train_timesteps`:"
                f" {T} as the unet model trained with this scheduler can only handle maximal {T} timesteps."
            )
        self.num_inference_steps = num_inference_steps
        if self.timestep_spacing == "linspace":
            timesteps = np.linspace(0, T - 1, num_inference_steps).round()[::-1].astype(np.int64)
        elif self.timestep_spacing == "leading":
            ratio = T // num_inference_steps
            timesteps = (np.arange(0, num_inference_steps) * ratio).round()[::-1].astype(np.int64)
            timesteps += self.steps_offset
        else:
            timesteps = np.round(np.arange(T, 0, -T / num_inference_steps)).astype(np.int64) - 1
        self.timesteps = timesteps

    def step(self, model_output: np.ndarray, timestep: int, sample: np.ndarray) -> np.ndarray:
        timestep = int(timestep)
        prev = timestep - self.num_train_timesteps // self.num_inference_steps
        alpha_t = self.alphas_cumprod[timestep]
        alpha_prev = self.alphas_cumprod[prev] if prev >= 0 else self.final_alpha_cumprod
        beta_t = _F32(1) - alpha_t
        if self.prediction_type == "epsilon":
            x0 = (sample - beta_t ** _F32(0.5) * model_output) / alpha_t ** _F32(0.5)
            eps = model_output
        elif self.prediction_type == "sample":
            x0 = model_output
            eps = (sample - alpha_t ** _F32(0.5) * x0) / beta_t ** _F32(0.5)
        else:
            x0 = alpha_t ** _F32(0.5) * sample - beta_t ** _F32(0.5) * model_output
            eps = alpha_t ** _F32(0.5) * model_output + beta_t ** _F32(0.5) * sample
        if self.clip_sample:
            x0 = np.clip(x0, -self.clip_sample_range, self.clip_sample_range)
        direction = (_F32(1) - alpha_prev) ** _F32(0.5) * eps
        return (alpha_prev ** _F32(0.5) * x0 + direction).astype(_F32)


class DPMSolverMultistepScheduler(_Scheduler):
    """DPM-Solver++ (``algorithm_type="dpmsolver++"``), multistep, order 1 or 2."""

    default_spacing = "linspace"

    def __init__(self, config: Mapping):
        super().__init__(config)
        _require(config, "algorithm_type", ("dpmsolver++",), "dpmsolver++")
        self.solver_order = _require(config, "solver_order", (1, 2), 2)
        for field in ("use_karras_sigmas", "use_lu_lambdas"):
            _require(config, field, (False, None), False)
        _require(config, "variance_type", (None,), None)
        solver_type = _require(config, "solver_type", ("midpoint", "heun", "logrho", "bh1", "bh2"), "midpoint")
        self.solver_type = "heun" if solver_type == "heun" else "midpoint"  # PPDiffusers maps the others so
        self.lower_order_final = bool(config.get("lower_order_final", True))
        self.euler_at_final = bool(config.get("euler_at_final", False))
        clipped = config.get("lambda_min_clipped")  # -inf (no clipping) is how it is saved
        self.lambda_min_clipped = -math.inf if clipped in (None, -math.inf) else float(
            _number(config, "lambda_min_clipped", None, -math.inf, math.inf))
        alpha_t = np.sqrt(self.alphas_cumprod)
        sigma_t = np.sqrt(_F32(1) - self.alphas_cumprod)
        self.lambda_t = (np.log(alpha_t) - np.log(sigma_t)).astype(_F32)
        self.sigmas = np.zeros(0, dtype=_F32)
        self.num_inference_steps: Optional[int] = None

    def set_timesteps(self, num_inference_steps: int) -> None:
        T = self.num_train_timesteps
        clipped = 0 if math.isinf(self.lambda_min_clipped) else int(
            np.searchsorted(self.lambda_t[::-1], _F32(self.lambda_min_clipped))
        )
        last = T - clipped
        if self.timestep_spacing == "linspace":
            timesteps = np.linspace(0, last - 1, num_inference_steps + 1).round()[::-1][:-1].astype(np.int64)
        elif self.timestep_spacing == "leading":
            ratio = last // (num_inference_steps + 1)
            timesteps = (np.arange(0, num_inference_steps + 1) * ratio).round()[::-1][:-1].astype(np.int64)
            timesteps += self.steps_offset
        else:
            timesteps = np.arange(last, 0, -T / num_inference_steps).round().astype(np.int64) - 1
        sigmas = ((_F32(1) - self.alphas_cumprod) / self.alphas_cumprod) ** _F32(0.5)
        sigma_last = sigmas[0]
        sigmas = np.interp(timesteps, np.arange(0, len(sigmas)), sigmas)
        self.sigmas = np.concatenate([sigmas, [sigma_last]]).astype(_F32)
        self.timesteps = timesteps
        self.num_inference_steps = len(timesteps)
        self.model_outputs: List[Optional[np.ndarray]] = [None, None]
        self.lower_order_nums = 0
        self.step_index: Optional[int] = None

    @staticmethod
    def _alpha_sigma(sigma):
        alpha = _F32(1) / (sigma**2 + _F32(1)) ** _F32(0.5)
        return alpha, sigma * alpha

    def _lambda(self, index: int):
        alpha, sigma = self._alpha_sigma(self.sigmas[index])
        return alpha, sigma, np.log(alpha) - np.log(sigma)

    def step(self, model_output: np.ndarray, timestep: int, sample: np.ndarray) -> np.ndarray:
        if self.step_index is None:
            matches = np.nonzero(self.timesteps == int(timestep))[0]
            self.step_index = int(matches[1] if len(matches) > 1 else matches[0] if len(matches) else
                                  len(self.timesteps) - 1)
        n = len(self.timesteps)
        # First order on the first step and (lower_order_final, < 15 steps) on the last one.
        final = self.step_index == n - 1 and (self.euler_at_final or (self.lower_order_final and n < 15))

        alpha_s0, sigma_s0, lambda_s0 = self._lambda(self.step_index)
        if self.prediction_type == "epsilon":
            x0 = (sample - sigma_s0 * model_output) / alpha_s0
        elif self.prediction_type == "sample":
            x0 = model_output
        else:
            x0 = alpha_s0 * sample - sigma_s0 * model_output
        self.model_outputs = [self.model_outputs[1], x0]

        alpha_t, sigma_t, lambda_t = self._lambda(self.step_index + 1)
        h = lambda_t - lambda_s0
        if self.solver_order == 1 or self.lower_order_nums < 1 or final:
            prev = (sigma_t / sigma_s0) * sample - (alpha_t * (np.exp(-h) - _F32(1))) * x0
        else:
            _, _, lambda_s1 = self._lambda(self.step_index - 1)
            m0, m1 = self.model_outputs[1], self.model_outputs[0]
            r0 = (lambda_s0 - lambda_s1) / h
            d0, d1 = m0, (_F32(1) / r0) * (m0 - m1)
            if self.solver_type == "midpoint":
                prev = ((sigma_t / sigma_s0) * sample - (alpha_t * (np.exp(-h) - _F32(1))) * d0
                        - _F32(0.5) * (alpha_t * (np.exp(-h) - _F32(1))) * d1)
            else:
                prev = ((sigma_t / sigma_s0) * sample - (alpha_t * (np.exp(-h) - _F32(1))) * d0
                        + (alpha_t * ((np.exp(-h) - _F32(1)) / h + _F32(1))) * d1)
        if self.lower_order_nums < self.solver_order:
            self.lower_order_nums += 1
        self.step_index += 1
        return prev.astype(_F32)


_SAVED_CLASSES = {"DDIMScheduler": DDIMScheduler, "DPMSolverMultistepScheduler": DPMSolverMultistepScheduler}
_SAMPLER_CLASS_NAMES = {"ddim": "DDIMScheduler", "dpm": "DPMSolverMultistepScheduler"}
# = ernie_vilg2.models.factory.NOISE_SCHEDULE_KEYS (that module imports PPDiffusers).
NOISE_SCHEDULE_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                       "prediction_type")


def build_scheduler(name: Optional[str], config: Mapping):
    """A sampler from a saved scheduler config (the manifest's ``scheduler``): ``"ddim"`` or
    ``"dpm"`` as :func:`ernie_vilg2.models.factory.build_sampler` builds it (its overrides;
    from a config of another class only the noise schedule), or ``None`` for the saved class
    with its saved settings."""
    if name is None:
        saved = config.get("_class_name")
        if saved not in _SAVED_CLASSES:
            raise _config_error("_class_name", saved, ", ".join(_SAVED_CLASSES))
        return _SAVED_CLASSES[saved](config)
    if config.get("_class_name", _SAMPLER_CLASS_NAMES.get(name)) != _SAMPLER_CLASS_NAMES.get(name):
        config = {k: config[k] for k in NOISE_SCHEDULE_KEYS if k in config}
    if name == "ddim":
        return DDIMScheduler({**config, "clip_sample": False, "set_alpha_to_one": False})
    if name == "dpm":
        return DPMSolverMultistepScheduler({**config, "algorithm_type": "dpmsolver++", "solver_order": 2})
    raise ValueError(f"sampler must be one of {SAMPLERS}, got {name!r}")
