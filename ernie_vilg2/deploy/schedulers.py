"""NumPy DDIM and DPM-Solver++ built from an export's resolved sampler settings, equal to
PPDiffusers' to float32 rounding.

The runner's scheduler loop stays outside the exported graphs (as in PPDiffusers' own Paddle
Inference pipelines) and must not need PPDiffusers. The exporter writes, for each sampler,
the settings PPDiffusers' scheduler has when ``build_sampler`` builds it from the saved
scheduler config (the manifest's ``samplers`` section, deploy/README.md); these classes take
them as written: every setting must be there, none other may be, and each must be one these
classes implement, or :class:`SettingError` names it. They re-implement the deterministic
paths of PPDiffusers 0.29's ``DDIMScheduler`` (eta = 0) and ``DPMSolverMultistepScheduler``
(``dpmsolver++``, multistep, order 1 or 2, midpoint or heun), every quantity float32 as in
PPDiffusers. tests/deploy/test_deploy_schedulers.py compares them, and the C++ runner's
(deploy/cpp/src/scheduler.cc), with PPDiffusers step by step.
"""
from __future__ import annotations

import math
from typing import List, Mapping, Optional

import numpy as np

from ..errors import ErnieViLG2Error

SAMPLERS = ("ddim", "dpm")
CLASS_NAMES = {"ddim": "DDIMScheduler", "dpm": "DPMSolverMultistepScheduler"}
# Bounds the arrays of T numbers a manifest can ask for; T also equals its programs'
# timestep tables (program_bounds).
MAX_TRAIN_TIMESTEPS = 100_000
_NOISE_SCHEDULE = ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "trained_betas",
                   "prediction_type", "timestep_spacing", "steps_offset")
# The settings of each sampler in the manifest (PPDiffusers' config names): exactly these.
SETTINGS = {
    "ddim": _NOISE_SCHEDULE + ("clip_sample", "clip_sample_range", "set_alpha_to_one"),
    "dpm": _NOISE_SCHEDULE + ("algorithm_type", "solver_order", "solver_type", "lower_order_final", "euler_at_final"),
}
ENTRY_KEYS = ("class", "max_steps", "config")
_F32 = np.float32


class SettingError(ErnieViLG2Error, ValueError):
    """A sampler setting is missing, unknown or not implemented; ``field`` is its manifest path."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


def _check_keys(value, allowed, prefix: str) -> None:
    if not isinstance(value, Mapping):
        raise SettingError(prefix, "expected an object")
    for key in value:
        if key not in allowed:
            raise SettingError(f"{prefix}.{key}", f"is not a setting the deploy runners read ({', '.join(allowed)})")
    for key in allowed:
        if key not in value:
            raise SettingError(f"{prefix}.{key}", "missing")


def _integer(value, field: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise SettingError(field, f"must be an integer in [{low}, {high}], got {value!r}")
    return value


def _number(value, field: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            math.isfinite(value) and low <= value <= high):
        raise SettingError(field, f"must be a finite number in [{low}, {high}], got {value!r}")
    return float(value)


class _Settings:
    """One sampler's ``config``, read field by field; errors name ``samplers.<name>.config.<field>``."""

    def __init__(self, name: str, config):
        self.prefix = f"samplers.{name}.config"
        _check_keys(config, SETTINGS[name], self.prefix)
        self.config = config

    def integer(self, field: str, low: int, high: int) -> int:
        return _integer(self.config[field], f"{self.prefix}.{field}", low, high)

    def number(self, field: str, low: float, high: float) -> float:
        return _number(self.config[field], f"{self.prefix}.{field}", low, high)

    def flag(self, field: str) -> bool:
        value = self.config[field]
        if not isinstance(value, bool):
            raise SettingError(f"{self.prefix}.{field}", f"must be true or false, got {value!r}")
        return value

    def choice(self, field: str, allowed):
        value = self.config[field]
        if not any(value == a and type(value) is type(a) for a in allowed):
            raise SettingError(f"{self.prefix}.{field}", f"{value!r} is not implemented by the deploy runners "
                                                         f"(they implement {', '.join(map(str, allowed))})")
        return value

    def betas(self, steps: int) -> np.ndarray:
        """``trained_betas`` if given (PPDiffusers then ignores the others), else the schedule's."""
        schedule = self.choice("beta_schedule", ("linear", "scaled_linear", "squaredcos_cap_v2"))
        start, end = self.number("beta_start", 0.0, 1.0), self.number("beta_end", 0.0, 1.0)
        trained, field = self.config["trained_betas"], f"{self.prefix}.trained_betas"
        if trained is not None:
            if not (isinstance(trained, list) and len(trained) == steps):
                raise SettingError(field, f"expected null or a list of num_train_timesteps ({steps}) numbers")
            return np.asarray([_number(beta, field, 0.0, 1.0) for beta in trained], dtype=_F32)
        if schedule == "linear":
            return np.linspace(start, end, steps, dtype=_F32)
        if schedule == "scaled_linear":
            return np.linspace(start**0.5, end**0.5, steps, dtype=_F32) ** 2

        def alpha_bar(t):
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        return np.array([min(1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), 0.999) for i in range(steps)],
                        dtype=_F32)


class _Scheduler:
    name = ""

    def __init__(self, config: Mapping, max_steps: int):
        s = _Settings(self.name, config)
        self.settings = s
        self.num_train_timesteps = s.integer("num_train_timesteps", 1, MAX_TRAIN_TIMESTEPS)
        self.prediction_type = s.choice("prediction_type", ("epsilon", "v_prediction", "sample"))
        self.timestep_spacing = s.choice("timestep_spacing", ("leading", "linspace", "trailing"))
        self.steps_offset = s.integer("steps_offset", 0, self.num_train_timesteps - 1)
        self.alphas_cumprod = np.cumprod(1.0 - s.betas(self.num_train_timesteps), dtype=_F32)
        self.init_noise_sigma = 1.0
        self.timesteps = np.zeros(0, dtype=np.int64)
        # The most steps a run may take (pipelines.checks.max_inference_steps reads it).
        self.max_steps = _integer(max_steps, f"samplers.{self.name}.max_steps", 1, self.num_train_timesteps)

    def scale_model_input(self, sample: np.ndarray, timestep=None) -> np.ndarray:
        return sample

    def _set(self, timesteps: np.ndarray, steps: int) -> None:
        """As the C++ runner: a spacing and offset that reach past T are an error, not an IndexError."""
        T = self.num_train_timesteps
        outside = timesteps[(timesteps < 0) | (timesteps >= T)]
        if len(outside):
            raise SettingError(f"samplers.{self.name}.config", f"with timestep_spacing {self.timestep_spacing!r} and "
                                                                f"steps_offset {self.steps_offset}, a {steps}-step run "
                                                                f"has timestep {outside[0]}, outside 0..{T - 1}")
        self.timesteps = timesteps


class DDIMScheduler(_Scheduler):
    """DDIM with eta 0."""

    name = "ddim"

    def __init__(self, config: Mapping, max_steps: int):
        super().__init__(config, max_steps)
        s = self.settings
        self.clip_sample = s.flag("clip_sample")
        self.clip_sample_range = _F32(s.number("clip_sample_range", 0.0, math.inf))
        self.final_alpha_cumprod = _F32(1.0) if s.flag("set_alpha_to_one") else self.alphas_cumprod[0]
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
        self._set(timesteps, num_inference_steps)

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

    name = "dpm"

    def __init__(self, config: Mapping, max_steps: int):
        super().__init__(config, max_steps)
        s = self.settings
        s.choice("algorithm_type", ("dpmsolver++",))
        self.solver_order = s.choice("solver_order", (1, 2))
        self.solver_type = s.choice("solver_type", ("midpoint", "heun"))
        self.lower_order_final = s.flag("lower_order_final")
        self.euler_at_final = s.flag("euler_at_final")
        self.sigmas = np.zeros(0, dtype=_F32)
        self.num_inference_steps: Optional[int] = None

    def set_timesteps(self, num_inference_steps: int) -> None:
        T = self.num_train_timesteps
        if self.timestep_spacing == "linspace":
            timesteps = np.linspace(0, T - 1, num_inference_steps + 1).round()[::-1][:-1].astype(np.int64)
        elif self.timestep_spacing == "leading":
            ratio = T // (num_inference_steps + 1)
            timesteps = (np.arange(0, num_inference_steps + 1) * ratio).round()[::-1][:-1].astype(np.int64)
            timesteps += self.steps_offset
        else:
            timesteps = np.arange(T, 0, -T / num_inference_steps).round().astype(np.int64) - 1
        self._set(timesteps, num_inference_steps)
        sigmas = ((_F32(1) - self.alphas_cumprod) / self.alphas_cumprod) ** _F32(0.5)
        sigma_last = sigmas[0]
        sigmas = np.interp(timesteps, np.arange(0, len(sigmas)), sigmas)
        self.sigmas = np.concatenate([sigmas, [sigma_last]]).astype(_F32)
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


_CLASSES = {"ddim": DDIMScheduler, "dpm": DPMSolverMultistepScheduler}


def scheduler_from_settings(name: str, entry):
    """The sampler of one entry of the manifest's ``samplers`` section, ``{"class", "max_steps",
    "config"}``; :class:`SettingError` names a bad field."""
    prefix = f"samplers.{name}"
    if name not in SAMPLERS:
        raise SettingError(prefix, f"is not a sampler the deploy runners offer ({', '.join(SAMPLERS)})")
    _check_keys(entry, ENTRY_KEYS, prefix)
    if entry["class"] != CLASS_NAMES[name]:
        raise SettingError(f"{prefix}.class", f"expected {CLASS_NAMES[name]!r}, got {entry['class']!r}")
    return _CLASSES[name](entry["config"], entry["max_steps"])


def check_samplers(section) -> dict:
    """Validate the manifest's ``samplers`` section; return ``{name: scheduler}`` of the offered ones."""
    if not isinstance(section, Mapping):
        raise SettingError("samplers", "expected an object")
    built = {name: scheduler_from_settings(name, entry) for name, entry in section.items() if name != "default"}
    if not built:
        raise SettingError("samplers", "offers no sampler")
    default = section.get("default")
    if not isinstance(default, str) or default not in built:
        raise SettingError("samplers.default", f"must name an offered sampler ({', '.join(built)}), got {default!r}")
    return built


def build_scheduler(name: Optional[str], samplers: Mapping):
    """The sampler ``name`` (``"ddim"``, ``"dpm"``; None: the export's ``default``) from the
    manifest's ``samplers`` section (``InferencePipeline.samplers``)."""
    if name is None:
        name = samplers.get("default")
    if name not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {name!r}")
    if name not in samplers:
        offered = ", ".join(k for k in samplers if k != "default")
        raise ValueError(f"sampler {name!r} is not offered by this export (manifest field 'samplers' offers: "
                         f"{offered}; the exporter's log says why)")
    return scheduler_from_settings(name, samplers[name])
