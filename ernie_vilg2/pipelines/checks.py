"""Input checks shared by ErnieViLG2Pipeline and the Paddle Inference runner
(``ernie_vilg2.deploy.InferencePipeline``): the same rules and messages, each naming its
argument. Imports neither paddle nor PPDiffusers.
"""
from __future__ import annotations

import math
import numbers
from typing import List

import numpy as np

from ..errors import ErnieViLG2Error

# The C++ runner reads --seed as a signed 64-bit integer; one range for every entry point.
MAX_SEED = 2**63 - 1


class NonFiniteLatentsError(ErnieViLG2Error, ValueError):
    """Sampling produced NaN/inf latents: they would decode to a black image."""


def _train_timesteps(scheduler) -> int:
    # The runner's schedulers hold it as an attribute, PPDiffusers' in their config (reading
    # it as an attribute there is deprecated and warns).
    own = vars(scheduler).get("num_train_timesteps")
    return int(own if own is not None else scheduler.config.num_train_timesteps)


def max_inference_steps(scheduler) -> int:
    """The most sampling steps ``scheduler`` can take: one per training timestep.

    DPM-Solver++ takes one fewer: its grid of n + 1 points over [0, T - 1] repeats a
    timestep when n >= T, the solver's step size becomes zero and the images NaN (black),
    and from n = 2T its last step indexes past its sigmas (IndexError after every step ran).
    The deploy runner's schedulers carry the limit their export wrote (``max_steps``, this
    function's result for PPDiffusers' sampler at export time).
    """
    own = vars(scheduler).get("max_steps")
    if own is not None:
        return int(own)
    steps = _train_timesteps(scheduler)
    return steps - 1 if type(scheduler).__name__ == "DPMSolverMultistepScheduler" else steps


def check_seed(seed) -> None:
    """``seed`` is None or an integer in [0, MAX_SEED]."""
    if seed is None:
        return
    # int(): NumPy compares uint64 with a Python int through float64 (2**63 <= 2**63 - 1)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) <= MAX_SEED:
        raise ValueError(f"seed must be an integer >= 0 and <= 2**63 - 1, got {seed!r}")


def check_guidance_scale(guidance_scale) -> None:
    """A finite number >= 0: NaN or inf guidance turns every latent NaN (black images)."""
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, numbers.Real):
        raise ValueError(f"guidance_scale must be a number, got {guidance_scale!r}")
    try:
        finite = math.isfinite(guidance_scale)
    except OverflowError:  # an integer no float holds (a JSON request may carry one)
        finite = False
    if not (finite and guidance_scale >= 0):
        raise ValueError(f"guidance_scale must be >= 0 and finite, got {guidance_scale}")


def expert_guidance_scales(guidance_scale, num_experts: int) -> List[float]:
    """One guidance scale per expert: a number is every expert's, a list or tuple of
    ``num_experts`` numbers gives expert ``i`` its own (diffusers' Wan pipeline has a
    ``guidance_scale_2`` for its second expert)."""
    if isinstance(guidance_scale, (list, tuple)):
        if len(guidance_scale) != num_experts:
            raise ValueError(f"guidance_scale must be one number or {num_experts} (one per expert), "
                             f"got {len(guidance_scale)}")
        for scale in guidance_scale:
            check_guidance_scale(scale)
        return [float(scale) for scale in guidance_scale]
    check_guidance_scale(guidance_scale)
    return [float(guidance_scale)] * num_experts


def check_finite_latents(latents, step: int, num_steps: int) -> None:
    """Raise :class:`NonFiniteLatentsError` if ``latents`` (a NumPy array or a Paddle tensor,
    the result of denoising step ``step``, 0-based) hold NaN or inf: every later step and the
    decoded image would be NaN too, and a NaN image is saved as a black one."""
    isfinite = getattr(latents, "isfinite", None)  # Paddle's, on the tensor's device
    finite = isfinite().all() if isfinite is not None else np.isfinite(latents).all()
    if not bool(finite):
        raise NonFiniteLatentsError(
            f"sampling produced non-finite latents (NaN/inf) at step {step + 1} of {num_steps}; "
            "check the guidance scale, the number of steps and the model weights"
        )


def check_sampling_settings(scheduler, num_inference_steps, guidance_scale, num_images_per_prompt, seed,
                            output_type, num_experts: int = 1) -> None:
    """The settings of a sampling call (the size is each pipeline's own check)."""
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps <= 0:
        raise ValueError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}")
    limit = max_inference_steps(scheduler)
    if num_inference_steps > limit:
        raise ValueError(
            f"num_inference_steps must be <= {limit} with {type(scheduler).__name__} "
            f"(num_train_timesteps {_train_timesteps(scheduler)}), got {num_inference_steps}"
        )
    expert_guidance_scales(guidance_scale, num_experts)
    if num_images_per_prompt < 1:
        raise ValueError(f"num_images_per_prompt must be >= 1, got {num_images_per_prompt}")
    check_seed(seed)
    if output_type not in ("pil", "np"):
        raise ValueError(f"output_type must be 'pil' or 'np', got {output_type!r}")
