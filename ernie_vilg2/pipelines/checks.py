"""Input checks shared by ErnieViLG2Pipeline and the Paddle Inference runner
(``ernie_vilg2.deploy.InferencePipeline``): the same rules and messages, each naming its
argument. Imports neither paddle nor PPDiffusers.
"""
from __future__ import annotations

import numpy as np


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
    Works for PPDiffusers' schedulers and the runner's NumPy ones (same class names).
    """
    steps = _train_timesteps(scheduler)
    return steps - 1 if type(scheduler).__name__ == "DPMSolverMultistepScheduler" else steps


def check_seed(seed) -> None:
    """``seed`` is None or an integer >= 0 (what ``numpy.random.default_rng`` accepts)."""
    if seed is None:
        return
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")


def check_sampling_settings(scheduler, num_inference_steps, guidance_scale, num_images_per_prompt, seed,
                            output_type) -> None:
    """The settings of a sampling call (the size is each pipeline's own check)."""
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps <= 0:
        raise ValueError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}")
    limit = max_inference_steps(scheduler)
    if num_inference_steps > limit:
        raise ValueError(
            f"num_inference_steps must be <= {limit} with {type(scheduler).__name__} "
            f"(num_train_timesteps {_train_timesteps(scheduler)}), got {num_inference_steps}"
        )
    if guidance_scale < 0:
        raise ValueError(f"guidance_scale must be >= 0, got {guidance_scale}")
    if num_images_per_prompt < 1:
        raise ValueError(f"num_images_per_prompt must be >= 1, got {num_images_per_prompt}")
    check_seed(seed)
    if output_type not in ("pil", "np"):
        raise ValueError(f"output_type must be 'pil' or 'np', got {output_type!r}")
