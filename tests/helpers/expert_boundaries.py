"""Pipelines whose experts switch at given timesteps, and the sampling loop written out by hand
(tests/pipelines/test_expert_guidance.py, tests/deploy/test_deploy_boundaries.py)."""
from __future__ import annotations

import copy

import numpy as np


def with_boundaries(pipe, boundaries):
    """A pipeline sharing ``pipe``'s components and expert weights whose router switches at
    ``boundaries`` (None: uniform)."""
    from ernie_vilg2.models.expert_bank import MixtureOfDenoisingExperts

    unet = pipe.unet
    bank = MixtureOfDenoisingExperts(num_experts=unet.num_experts, num_train_timesteps=unet.config.num_train_timesteps,
                                     unet=dict(unet.config.unet), expert_boundaries=boundaries)
    bank.set_state_dict(unet.state_dict())
    bank.eval()
    new = type(pipe)(**{**pipe.components, "unet": bank})
    new.set_progress_bar_config(disable=True)
    return new


def hand_sampling_loop(pipe, prompt: str, scales, boundaries, steps: int, seed: int) -> np.ndarray:
    """One image with classifier-free guidance, written without the pipeline's loop: the expert
    of each step from ``boundaries`` (counted by hand), its guidance scale from ``scales``."""
    import paddle

    context = paddle.concat([pipe.encode_prompt([""]), pipe.encode_prompt([prompt])])
    size = pipe.unet.sample_size
    noise = np.random.default_rng(seed).standard_normal([1, pipe.unet.in_channels, size, size]).astype("float32")
    scheduler = copy.deepcopy(pipe.scheduler)
    scheduler.set_timesteps(steps)
    latents = paddle.to_tensor(noise) * scheduler.init_noise_sigma
    with paddle.no_grad():
        for t in scheduler.timesteps:
            expert = sum(int(t) >= b for b in boundaries)
            model_input = scheduler.scale_model_input(paddle.concat([latents, latents]), t)
            eps = pipe.unet.experts[expert](model_input, t, context).sample
            uncond, text = eps.chunk(2)
            latents = scheduler.step(uncond + scales[expert] * (text - uncond), t, latents).prev_sample
        return pipe.decode_latents(latents)
