"""The deploy runner's NumPy DDIM and DPM-Solver++ equal PPDiffusers' step by step."""
from __future__ import annotations

import numpy as np
import paddle
import ppdiffusers
import pytest

from ernie_vilg2.deploy.schedulers import build_scheduler
from ernie_vilg2.models.factory import build_sampler

BASE = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
            prediction_type="epsilon")


def _run_both(name, config, steps, seed=0):
    """Feed both schedulers the same model outputs; return the largest difference of the
    samples relative to their magnitude. ``name`` None: the saved class as configured."""
    if name is None:
        ref = getattr(ppdiffusers, config["_class_name"]).from_config(config)
    else:
        ref = build_sampler(name, config)
    ours = build_scheduler(name, config)
    ref.set_timesteps(steps)
    ours.set_timesteps(steps)
    assert np.array_equal(ref.timesteps.numpy(), ours.timesteps)
    rng = np.random.default_rng(seed)
    x_ref = x_ours = rng.standard_normal((2, 4, 8, 8)).astype("float32")
    worst = 0.0
    for t in ours.timesteps:
        eps = rng.standard_normal(x_ours.shape).astype("float32")
        x_ref = ref.step(paddle.to_tensor(eps), paddle.to_tensor(t), paddle.to_tensor(x_ref)).prev_sample.numpy()
        x_ours = ours.step(eps, int(t), x_ours)
        assert x_ours.dtype == np.float32
        worst = max(worst, float(np.abs(x_ref - x_ours).max() / max(1.0, np.abs(x_ref).max())))
    return worst


@pytest.mark.parametrize("name", ["ddim", "dpm"])
@pytest.mark.parametrize("steps", [1, 2, 5, 25])
def test_samplers_match_ppdiffusers_step_by_step(name, steps):
    # relative to the sample's magnitude: float32 rounding of the two orders of operations
    assert _run_both(name, BASE, steps) < 2e-6


@pytest.mark.parametrize(
    "overrides",
    [
        dict(timestep_spacing="leading", steps_offset=1),   # a DDIM-saved config used for DPM and back
        dict(timestep_spacing="trailing"),
        dict(timestep_spacing="linspace"),
        dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
        dict(beta_schedule="squaredcos_cap_v2"),
        dict(prediction_type="v_prediction"),
        dict(prediction_type="sample"),
        dict(solver_type="heun"),
        dict(num_train_timesteps=200),
    ],
)
@pytest.mark.parametrize("name", ["ddim", "dpm"])
def test_samplers_match_ppdiffusers_for_other_saved_configs(name, overrides):
    assert _run_both(name, {**BASE, **overrides}, 7, seed=1) < 2e-6


@pytest.mark.parametrize(
    "config",
    [
        dict(_class_name="DDIMScheduler", clip_sample=True, set_alpha_to_one=True),
        dict(_class_name="DDIMScheduler", clip_sample=True, clip_sample_range=0.5, set_alpha_to_one=False),
        dict(_class_name="DPMSolverMultistepScheduler", solver_order=1),
        dict(_class_name="DPMSolverMultistepScheduler", solver_order=2, lower_order_final=False),
        dict(_class_name="DPMSolverMultistepScheduler", solver_order=2, euler_at_final=True),
    ],
)
def test_saved_scheduler_used_as_saved_matches_ppdiffusers(config):
    assert _run_both(None, {**BASE, **config}, 6, seed=2) < 2e-6


@pytest.mark.parametrize("saved", ["DDIMScheduler", "DPMSolverMultistepScheduler"])
@pytest.mark.parametrize("name", ["ddim", "dpm"])
def test_a_config_saved_by_either_class_gives_build_samplers_sampler(name, saved):
    # Another class's config gives only its noise schedule; the same class's keeps its settings.
    config = {**BASE, "_class_name": saved, "timestep_spacing": "trailing", "steps_offset": 1}
    assert _run_both(name, config, 7, seed=4) < 2e-6
    ours = build_scheduler(name, config)
    same = {"ddim": "DDIMScheduler", "dpm": "DPMSolverMultistepScheduler"}[name] == saved
    assert ours.timestep_spacing == ("trailing" if same else ours.default_spacing)


@pytest.mark.parametrize(
    "name,overrides,field",
    [
        ("ddim", dict(thresholding=True), "scheduler.thresholding"),
        ("dpm", dict(use_karras_sigmas=True), "scheduler.use_karras_sigmas"),
        ("ddim", dict(beta_schedule="cosine"), "scheduler.beta_schedule"),
        ("dpm", dict(timestep_spacing="random"), "scheduler.timestep_spacing"),
        ("dpm", dict(prediction_type="x"), "scheduler.prediction_type"),
        (None, dict(_class_name="DPMSolverMultistepScheduler", algorithm_type="sde-dpmsolver++"),
         "scheduler.algorithm_type"),
        (None, dict(_class_name="DPMSolverMultistepScheduler", solver_order=3), "scheduler.solver_order"),
        (None, dict(_class_name="EulerDiscreteScheduler"), "scheduler._class_name"),
        ("euler", {}, "sampler"),
    ],
)
def test_unsupported_settings_are_refused_by_name(name, overrides, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        build_scheduler(name, {**BASE, **overrides})


def test_ddim_refuses_more_steps_than_training_timesteps_like_ppdiffusers():
    with pytest.raises(ValueError, match="num_inference_steps"):
        build_scheduler("ddim", BASE).set_timesteps(1001)
