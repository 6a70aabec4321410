"""The runners' samplers equal PPDiffusers' step by step.

A saved scheduler config (as PPDiffusers writes it) goes through the exporter's resolution
(ernie_vilg2.deploy.sampler_export: build_sampler's rules, applied once); the Python runner's NumPy
samplers and the C++ runner's (deploy/cpp's scheduler_trace tool) then run from those settings
alone, and must give build_sampler's PPDiffusers sampler's timesteps and, fed the same model
outputs, its samples after every step. Stated tolerances, relative to the sample's magnitude:
C++ DDIM with linear betas bit for bit; other C++ runs 1e-6 (Paddle's vectorised pow and
division round a few sigmas and squared betas differently from std::pow), NumPy 2e-6 (its own
order of float32 operations); twice and five times that over the thousand steps of the step limit.
"""
from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import paddle
import ppdiffusers
import pytest

from ernie_vilg2.deploy.sampler_export import resolve_samplers
from ernie_vilg2.deploy.schedulers import SettingError, build_scheduler, check_samplers
from ernie_vilg2.models.factory import build_sampler

from helpers.paths import CPP_BUILD_DIR

BASE = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
            prediction_type="epsilon")
CPP_TOLERANCE = 1e-6
NUMPY_TOLERANCE = 2e-6


def saved_config(class_name: str, **overrides) -> dict:
    """scheduler_config.json as PPDiffusers saves a ``class_name`` made with ``overrides``."""
    scheduler = getattr(ppdiffusers, class_name)(**{**BASE, **overrides})
    return json.loads(scheduler.to_json_string())


@pytest.fixture(scope="module")
def scheduler_trace(cpp_runner):
    """deploy/cpp's test tool, built with the runner (tools/scheduler_trace.cc)."""
    return os.path.join(CPP_BUILD_DIR, "scheduler_trace")


def _inputs(steps, shape, seed):
    rng = np.random.default_rng(seed)
    sample = rng.standard_normal(shape).astype("float32")
    return sample, [rng.standard_normal(shape).astype("float32") for _ in range(steps)]


def _reference(name, saved, steps, sample, outputs):
    """build_sampler's PPDiffusers sampler: (timesteps, the sample after each step)."""
    ref = build_sampler(name, saved)
    ref.set_timesteps(steps)
    x, samples = paddle.to_tensor(sample), []
    for t, out in zip(ref.timesteps, outputs):
        x = ref.step(paddle.to_tensor(out), t, x).prev_sample
        samples.append(x.numpy())
    return ref.timesteps.numpy().tolist(), samples


def _numpy(name, samplers, steps, sample, outputs):
    ours = build_scheduler(name, samplers)
    ours.set_timesteps(steps)
    x, samples = sample, []
    for t, out in zip(ours.timesteps, outputs):
        x = ours.step(out, int(t), x)
        assert x.dtype == np.float32
        samples.append(x)
    return ours.timesteps.tolist(), samples


def _run_trace(binary, folder, case):
    path = os.path.join(folder, "case.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(case, f)
    return subprocess.run([binary, path], capture_output=True, text=True, timeout=120)


def _cpp(binary, folder, name, samplers, steps, sample, outputs):
    proc = _run_trace(binary, folder, {"samplers": samplers, "sampler": name, "steps": steps,
                                       "sample": sample.ravel().tolist(),
                                       "model_outputs": [o.ravel().tolist() for o in outputs]})
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    return result["timesteps"], [np.asarray(s, dtype=np.float32).reshape(sample.shape) for s in result["samples"]]


def _worst(ref, ours):
    """The largest difference over the steps, relative to the sample's magnitude."""
    assert len(ref) == len(ours)
    return max(float(np.abs(a - b).max() / max(1.0, np.abs(a).max())) for a, b in zip(ref, ours))


def _compare(binary, folder, name, saved, steps, shape=(2, 4, 8, 8), seed=0):
    """(C++ difference, NumPy difference) from build_sampler's sampler; the timesteps must be equal."""
    samplers = resolve_samplers(saved, log=print)
    sample, outputs = _inputs(steps, shape, seed)
    ref_t, ref = _reference(name, saved, steps, sample, outputs)
    cpp_t, cpp = _cpp(binary, folder, name, samplers, steps, sample, outputs)
    np_t, numpy_samples = _numpy(name, samplers, steps, sample, outputs)
    assert cpp_t == ref_t and np_t == ref_t
    return _worst(ref, cpp), _worst(ref, numpy_samples)


# (saved class, the saved config's settings): saved by either class, so that both the same
# class's settings and another class's noise schedule alone are exercised.
CONFIGS = {
    "ddim-linear": ("DDIMScheduler", dict(clip_sample=False, set_alpha_to_one=False)),
    "ddim-scaled-leading-offset": ("DDIMScheduler", dict(beta_schedule="scaled_linear", beta_start=0.00085,
                                                         beta_end=0.012, timestep_spacing="leading", steps_offset=1)),
    "ddim-linspace-v": ("DDIMScheduler", dict(timestep_spacing="linspace", prediction_type="v_prediction")),
    "ddim-trailing-sample": ("DDIMScheduler", dict(timestep_spacing="trailing", prediction_type="sample")),
    "dpm-linear": ("DPMSolverMultistepScheduler", {}),
    "dpm-leading-offset-heun": ("DPMSolverMultistepScheduler", dict(timestep_spacing="leading", steps_offset=1,
                                                                    solver_type="heun")),
    "dpm-trailing-v-no-lower-order-final": ("DPMSolverMultistepScheduler", dict(
        timestep_spacing="trailing", prediction_type="v_prediction", lower_order_final=False)),
    "dpm-scaled-euler-at-final": ("DPMSolverMultistepScheduler", dict(beta_schedule="scaled_linear",
                                                                      beta_start=0.00085, beta_end=0.012,
                                                                      euler_at_final=True)),
    "dpm-first-order": ("DPMSolverMultistepScheduler", dict(solver_order=1, prediction_type="sample")),
    "dpm-cosine-200": ("DPMSolverMultistepScheduler", dict(beta_schedule="squaredcos_cap_v2",
                                                           num_train_timesteps=200)),
    "ddim-trained-betas": ("DDIMScheduler", dict(trained_betas=np.linspace(1e-4, 0.02, 1000).tolist())),
}


def _tolerance(name, saved, cpp_diff, scale=1):
    """Bit for bit for C++ DDIM on linear betas (given or trained), else ``scale`` * CPP_TOLERANCE."""
    exact = name == "ddim" and (saved.get("trained_betas") is not None or saved["beta_schedule"] == "linear")
    return cpp_diff == 0.0 if exact else cpp_diff < scale * CPP_TOLERANCE


@pytest.mark.parametrize("steps", [1, 2, 5, 25])
@pytest.mark.parametrize("name", ["ddim", "dpm"])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_runner_samplers_match_ppdiffusers_step_by_step(scheduler_trace, tmp_path, config, name, steps,
                                                        record_property):
    class_name, overrides = CONFIGS[config]
    saved = saved_config(class_name, **overrides)
    cpp_diff, numpy_diff = _compare(scheduler_trace, tmp_path, name, saved, steps)
    record_property("cpp_diff", cpp_diff)
    record_property("numpy_diff", numpy_diff)
    assert _tolerance(name, saved, cpp_diff), cpp_diff
    assert numpy_diff < NUMPY_TOLERANCE, numpy_diff


@pytest.mark.parametrize("name,steps", [("ddim", 1000), ("ddim", 999), ("dpm", 999), ("dpm", 998)])
def test_runner_samplers_match_ppdiffusers_up_to_the_step_limit(scheduler_trace, tmp_path, name, steps,
                                                                record_property):
    saved = saved_config("DDIMScheduler", clip_sample=False, set_alpha_to_one=False)
    assert resolve_samplers(saved, log=print)[name]["max_steps"] == (1000 if name == "ddim" else 999)
    cpp_diff, numpy_diff = _compare(scheduler_trace, tmp_path, name, saved, steps, shape=(1, 4, 2, 2))
    record_property("cpp_diff", cpp_diff)
    record_property("numpy_diff", numpy_diff)
    assert _tolerance(name, saved, cpp_diff, scale=2), cpp_diff
    assert numpy_diff < 5 * NUMPY_TOLERANCE, numpy_diff


@pytest.mark.parametrize("settings", [dict(clip_sample=True, clip_sample_range=0.5),
                                      dict(clip_sample=True, set_alpha_to_one=True)])
def test_ddim_settings_build_sampler_does_not_use_match_ppdiffusers(scheduler_trace, tmp_path, settings):
    """Clipping and set_alpha_to_one (build_sampler turns both off, the runners implement them)."""
    samplers = resolve_samplers(saved_config("DDIMScheduler"), log=print)
    samplers["ddim"]["config"].update(settings)
    ref = ppdiffusers.DDIMScheduler.from_config(samplers["ddim"]["config"])
    ref.set_timesteps(6)
    sample, outputs = _inputs(6, (2, 4, 8, 8), seed=5)
    outputs = [3 * o for o in outputs]  # predicted samples beyond the clipping range
    x, expected = paddle.to_tensor(sample), []
    for t, out in zip(ref.timesteps, outputs):
        x = ref.step(paddle.to_tensor(out), t, x).prev_sample
        expected.append(x.numpy())
    _, cpp = _cpp(scheduler_trace, tmp_path, "ddim", samplers, 6, sample, outputs)
    _, numpy_samples = _numpy("ddim", samplers, 6, sample, outputs)
    assert _worst(expected, cpp) == 0.0
    assert _worst(expected, numpy_samples) < NUMPY_TOLERANCE


# -- the resolution: build_sampler's rules, applied once by the exporter ------------------------------
def test_resolved_settings_rebuild_build_samplers_sampler():
    """A PPDiffusers sampler made from the written settings alone is build_sampler's, setting for setting;
    a config saved by the other class gives only its noise schedule (build_sampler's rule)."""
    saved = saved_config("DDIMScheduler", timestep_spacing="trailing", steps_offset=1, clip_sample=True)
    samplers = resolve_samplers(saved, log=print)
    for name, class_name in (("ddim", "DDIMScheduler"), ("dpm", "DPMSolverMultistepScheduler")):
        entry = samplers[name]
        assert entry["class"] == class_name
        rebuilt = dict(getattr(ppdiffusers, class_name).from_config(entry["config"]).config)
        expected = dict(build_sampler(name, saved).config)
        assert {k: v for k, v in rebuilt.items() if not k.startswith("_")} == \
               {k: v for k, v in expected.items() if not k.startswith("_")}
    assert samplers["ddim"]["config"]["timestep_spacing"] == "trailing"
    assert samplers["ddim"]["config"]["clip_sample"] is False  # build_sampler's override
    assert samplers["dpm"]["config"]["timestep_spacing"] == "linspace"  # DPM-Solver++'s own default
    assert samplers["dpm"]["config"]["steps_offset"] == 0
    assert (samplers["ddim"]["max_steps"], samplers["dpm"]["max_steps"]) == (1000, 999)
    assert samplers["default"] == "ddim"  # the saved pipeline's sampler
    json.dumps(samplers, allow_nan=False)  # plain JSON for both runners


def test_a_sampler_the_runners_cannot_run_is_left_out_with_the_reason():
    logged = []
    samplers = resolve_samplers(saved_config("DPMSolverMultistepScheduler", use_karras_sigmas=True), log=logged.append)
    assert set(samplers) == {"ddim", "default"} and samplers["default"] == "ddim"
    assert logged == ["sampler dpm not exported: use_karras_sigmas: True is not implemented by the deploy runners"]
    with pytest.raises(ValueError, match="sampler 'dpm' is not offered by this export"):
        build_scheduler("dpm", samplers)
    with pytest.raises(ValueError, match="sampler must be one of"):
        build_scheduler("euler", samplers)
    with pytest.raises(ValueError, match="the deploy runners can run neither sampler"):
        resolve_samplers({**saved_config("DDIMScheduler"), "beta_schedule": "sigmoid"}, log=print)


# -- each setting checked by both runners, by its field --------------------------------------------------
BAD_SETTINGS = [
    ("ddim", "config.timestep_spacing", "random"),
    ("ddim", "config.beta_schedule", "cosine"),
    ("ddim", "config.beta_start", 2.0),
    ("ddim", "config.clip_sample", "yes"),
    ("ddim", "config.trained_betas", [0.1] * 3),
    ("ddim", "config.thresholding", False),  # a setting the runners do not read
    ("ddim", "class", "DPMSolverMultistepScheduler"),
    ("ddim", "max_steps", 1001),
    ("dpm", "config.prediction_type", "x"),
    ("dpm", "config.solver_order", 3),
    ("dpm", "config.algorithm_type", "sde-dpmsolver++"),
    ("dpm", "config.solver_type", "bh2"),
    ("dpm", "config.steps_offset", 1000),
    ("dpm", "config.num_train_timesteps", 10**6),
    ("dpm", "max_steps", 0),
]


@pytest.mark.parametrize("name,field,value", BAD_SETTINGS, ids=[f"{n}.{f}={v!r}"[:40] for n, f, v in BAD_SETTINGS])
def test_bad_settings_are_refused_by_both_runners_naming_the_field(scheduler_trace, tmp_path, name, field, value):
    samplers = resolve_samplers(saved_config("DDIMScheduler"), log=print)
    *parents, last = field.split(".")
    node = samplers[name]
    for key in parents:
        node = node[key]
    node[last] = value
    path = f"samplers.{name}.{field}"
    with pytest.raises(SettingError, match=path.replace(".", r"\.")):
        check_samplers(samplers)
    proc = _run_trace(scheduler_trace, tmp_path, {"samplers": samplers, "sampler": name, "steps": 2, "sample": [0.0],
                                                  "model_outputs": [[0.0], [0.0]]})
    assert proc.returncode == 2 and f"field '{path}'" in proc.stderr, proc.stderr


@pytest.mark.parametrize("edit,field", [
    (lambda s: s.update(default="euler"), "samplers.default"),
    (lambda s: s.pop("default"), "samplers.default"),
    (lambda s: s.update(euler=s["ddim"]), "samplers.euler"),
    (lambda s: s["dpm"]["config"].pop("euler_at_final"), "samplers.dpm.config.euler_at_final"),
])
def test_bad_samplers_section_is_refused_by_both_runners(scheduler_trace, tmp_path, edit, field):
    samplers = resolve_samplers(saved_config("DDIMScheduler"), log=print)
    edit(samplers)
    with pytest.raises(SettingError, match=field.replace(".", r"\.")):
        check_samplers(samplers)
    proc = _run_trace(scheduler_trace, tmp_path, {"samplers": samplers, "sampler": "ddim", "steps": 1,
                                                  "sample": [0.0], "model_outputs": [[0.0]]})
    assert proc.returncode == 2 and f"field '{field}'" in proc.stderr, proc.stderr


def test_timesteps_past_the_training_range_are_refused_by_both_runners(scheduler_trace, tmp_path):
    """leading spacing with steps_offset 1 reaches t = T at T steps (PPDiffusers: an IndexError)."""
    samplers = resolve_samplers(saved_config("DDIMScheduler", steps_offset=1), log=print)
    message = "with timestep_spacing 'leading' and steps_offset 1, a 1000-step run has timestep 1000, outside 0..999"
    with pytest.raises(SettingError, match=message):
        build_scheduler("ddim", samplers).set_timesteps(1000)
    proc = _run_trace(scheduler_trace, tmp_path, {"samplers": samplers, "sampler": "ddim", "steps": 1000,
                                                  "sample": [0.0], "model_outputs": [[0.0]] * 1000})
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_ddim_refuses_more_steps_than_training_timesteps_like_ppdiffusers():
    samplers = resolve_samplers(saved_config("DDIMScheduler"), log=print)
    with pytest.raises(ValueError, match="num_inference_steps"):
        build_scheduler("ddim", samplers).set_timesteps(1001)
