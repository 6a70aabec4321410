"""The Python runner (ernie_vilg2.deploy.InferencePipeline, deploy/python/infer.py): same images
as ErnieViLG2Pipeline for the same seed, no training stack at run time, clear errors."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ernie_vilg2.deploy import InferencePipeline, ManifestError
from ernie_vilg2.deploy.schedulers import build_scheduler
from ernie_vilg2.models.factory import build_sampler
from ernie_vilg2.pipelines import ErnieViLG2Pipeline, generate_images
from ernie_vilg2.utils.integrity import DamagedFileError

from helpers import deploy_exports
from helpers.paths import REPO_ROOT

INFER = os.path.join(REPO_ROOT, "deploy", "python", "infer.py")
GENERATE = os.path.join(REPO_ROOT, "tools", "generate.py")
PROMPTS = ["红苹果在猫脸的左边", "a blue heart"]
# Stated tolerance: float images (in [0, 1]) within 1e-4 of the dynamic pipeline; measured
# 3-4e-6 with the native kernels (the dynamic graph's C++ attention operator; with
# ERNIE_VILG2_CPU_OPS=0, 0 for DDIM and ~2e-6 for DPM-Solver++, float32 rounding in the NumPy
# scheduler), 5-7e-6 with oneDNN. PNGs may differ by one level where a value sits on a
# rounding boundary.
ATOL = 1e-4


@pytest.fixture(scope="module")
def runners(export_n1, bank):
    return {1: InferencePipeline.from_export(export_n1), 10: InferencePipeline.from_export(bank[2]),
            "10-onednn": InferencePipeline.from_export(bank[2], engine="onednn")}


def _dynamic(pipe, saved_dir, sampler):
    """``pipe`` with the sampler tools/generate.py builds for its saved folder. (The saved
    scheduler config, not the in-memory one: PPDiffusers' from_config skips the keys an
    in-memory config lists in ``_use_default_values``, e.g. DDIM's timestep_spacing.)"""
    with open(os.path.join(saved_dir, "scheduler", "scheduler_config.json"), encoding="utf-8") as f:
        scheduler = build_sampler(sampler, json.load(f))
    new = ErnieViLG2Pipeline(**{**pipe.components, "scheduler": scheduler})
    new.set_progress_bar_config(disable=True)
    return new


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["ddim", "dpm"])
@pytest.mark.parametrize("n", [1, 10, "10-onednn"])
def test_runner_images_equal_the_dynamic_pipeline(runners, tiny_pipeline, tiny_pipeline_dir, bank, n, sampler,
                                                  record_property):
    """Native kernels (default) and oneDNN (``engine="onednn"``, measured ~4e-6)."""
    runner = runners[n]
    runner.scheduler = build_scheduler(sampler, runner.samplers)
    dynamic = _dynamic(*((tiny_pipeline, tiny_pipeline_dir) if n == 1 else bank[:2]), sampler)
    kwargs = dict(num_inference_steps=6, guidance_scale=3.0, seed=7, num_images_per_prompt=2,
                  negative_prompt="blurry")
    ours = runner(PROMPTS, output_type="np", **kwargs).images
    ref = dynamic(PROMPTS, output_type="np", **kwargs).images
    assert ours.shape == ref.shape == (4, 32, 32, 3) and ours.dtype == np.float32
    diff = float(np.abs(ours - ref).max())
    record_property("max_abs_diff", diff)
    assert diff < ATOL, diff
    pngs = [np.asarray(im, dtype=int) for im in runner(PROMPTS, **kwargs).images]
    ref_pngs = [np.asarray(im, dtype=int) for im in dynamic(PROMPTS, **kwargs).images]
    assert max(np.abs(a - b).max() for a, b in zip(pngs, ref_pngs)) <= 1


def test_runner_without_guidance_and_with_given_latents(runners, bank):
    runner, dynamic = runners[10], _dynamic(*bank[:2], "ddim")
    runner.scheduler = build_scheduler("ddim", runner.samplers)
    latents = np.random.default_rng(3).standard_normal((2, 4, 8, 8)).astype("float32")
    import paddle

    ours = runner(PROMPTS, num_inference_steps=4, guidance_scale=1.0, latents=latents, output_type="np").images
    ref = dynamic(PROMPTS, num_inference_steps=4, guidance_scale=1.0, latents=paddle.to_tensor(latents),
                  output_type="np").images
    assert np.abs(ours - ref).max() < ATOL


def test_batched_generation_reuses_generate_images(runners):
    """generate_images drives the runner exactly as it drives the dynamic pipeline."""
    runner = runners[1]
    runner.scheduler = build_scheduler("dpm", runner.samplers)
    kw = dict(num_inference_steps=3, guidance_scale=2.0, output_type="np", seed=5)
    one = np.stack(generate_images(runner, PROMPTS + ["一只猫"], batch_size=1, **kw))
    three = np.stack(generate_images(runner, PROMPTS + ["一只猫"], batch_size=3, **kw))
    np.testing.assert_allclose(one, three, atol=1e-5)


@pytest.mark.slow
def test_disk_offload_keeps_one_expert_predictor_and_the_same_images(runners, bank, monkeypatch):
    """``expert_offload="disk"``: each routed expert's predictor is created when its steps come,
    the previous one is dropped first, and the images are those of the all-in-memory runner."""
    from ernie_vilg2.deploy import pipeline as deploy_pipeline

    offloaded = InferencePipeline.from_export(bank[2], expert_offload="disk")
    assert len(offloaded.experts) == 10
    live, created = [], []
    real_program = deploy_pipeline.Program

    class CountingProgram(real_program):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            created.append(self.name)
            live.append(self.name)
            assert sum(n.startswith("expert") for n in live) == 1, live

        def __del__(self):
            live.remove(self.name)

    monkeypatch.setattr(deploy_pipeline, "Program", CountingProgram)
    reference = runners[10]
    kw = dict(num_inference_steps=5, guidance_scale=3.0, seed=11, output_type="np")
    for runner in (offloaded, reference):
        runner.scheduler = build_scheduler("ddim", runner.samplers)
    ours = offloaded(PROMPTS, **kw).images
    np.testing.assert_array_equal(ours, reference(PROMPTS, **kw).images)
    routed = [f"expert_{offloaded.router.expert_index(int(t)):02d}" for t in offloaded.scheduler.timesteps]
    assert created == list(dict.fromkeys(routed)) and len(created) == 5


def test_unknown_expert_offload_is_refused(export_n1):
    with pytest.raises(ValueError, match="expert_offload"):
        InferencePipeline.from_export(export_n1, expert_offload="cpu")


# -- bad input --------------------------------------------------------------------------------
def test_missing_folder_and_missing_manifest(tmp_path):
    with pytest.raises(FileNotFoundError, match="export folder not found"):
        InferencePipeline.from_export(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match=re.escape(f"{tmp_path}/manifest.json: no manifest")):
        InferencePipeline.from_export(str(tmp_path))


def test_tampered_or_truncated_file_is_named(export_n1, tmp_path):
    folder = deploy_exports.copy_export(export_n1, tmp_path / "export")
    params = os.path.join(folder, "unet", "expert_00", "inference.pdiparams")
    data = bytearray(open(params, "rb").read())
    data[len(data) // 2] ^= 0xFF  # same size, one byte changed
    open(params, "wb").write(bytes(data))
    with pytest.raises(DamagedFileError, match=re.escape(f"{params}: ") + ".*SHA-256"):
        InferencePipeline.from_export(folder)
    open(params, "wb").write(bytes(data[:-10]))
    with pytest.raises(DamagedFileError, match=re.escape(f"{params}: ") + ".*" + re.escape(f"expected {len(data)} bytes")):
        InferencePipeline.from_export(folder, verify="size")
    os.remove(params)
    with pytest.raises(DamagedFileError, match=re.escape(f"{params}: file not found")):
        InferencePipeline.from_export(folder, verify="size")


@pytest.mark.parametrize("edit,match", [
    (lambda m: m.update(format_version=1),
     "field 'format_version': this runner reads version 2, the export is version 1 (re-export with this version's "
     "tools/export_model.py)"),
    (lambda m: m.update(format_version=3),
     "field 'format_version': this runner reads version 2, the export is version 3"),
    (lambda m: m.pop("samplers"), "field 'samplers' is missing"),
    (lambda m: m.update(format="something-else"), "field 'format'"),
    (lambda m: m["router"].pop("num_experts"), "field 'router.num_experts' is missing"),
    (lambda m: m["programs"]["experts"].append(m["programs"]["experts"][0]), "field 'programs.experts'"),
    (lambda m: m["files"].update({"../../etc/passwd": {"size": 1}}), "not a path inside the export folder"),
])
def test_foreign_or_broken_manifest_names_the_field(export_n1, tmp_path, edit, match):
    folder = deploy_exports.copy_export(export_n1, tmp_path / "export")
    path = os.path.join(folder, "manifest.json")
    manifest = json.load(open(path, encoding="utf-8"))
    edit(manifest)
    json.dump(manifest, open(path, "w", encoding="utf-8"))
    with pytest.raises(ManifestError, match=re.escape(match)) as info:
        InferencePipeline.from_export(folder)
    assert str(info.value).startswith(path)


@pytest.mark.parametrize("kwargs,match", [
    (dict(height=64), "height must be 32: the export was built for 32x32 (manifest field 'image.height'), got 64"),
    (dict(width=16), "width must be 32"),
    (dict(num_inference_steps=0), "num_inference_steps must be a positive integer"),
    (dict(num_inference_steps=1001), "num_inference_steps must be <= 1000 with DDIMScheduler"),
    (dict(seed=-1), "seed must be an integer >= 0"),
    (dict(guidance_scale=-1.0), "guidance_scale must be >= 0"),
    (dict(guidance_scale=float("nan")), "guidance_scale must be >= 0 and finite, got nan"),
    (dict(guidance_scale=float("inf")), "guidance_scale must be >= 0 and finite, got inf"),
    (dict(seed=2**63), "seed must be an integer >= 0 and <= 2**63 - 1, got 9223372036854775808"),
    (dict(prompt=["ok", "red \udcff apple"]), "prompt[1]: not valid Unicode text (lone surrogate U+DCFF"),
    (dict(prompt=["ok", "  "]), "prompt[1]: the prompt is empty"),
    (dict(negative_prompt=["a", "b", "c"]), "negative_prompt: expected 1 or 2 entries"),
    (dict(key_token_mask=np.ones((2, 16))), "key_token_mask"),
])
def test_bad_call_arguments_name_the_field(runners, kwargs, match):
    runner = runners[1]
    runner.scheduler = build_scheduler("ddim", runner.samplers)
    kwargs = {"prompt": PROMPTS, "num_inference_steps": 2, **kwargs}
    with pytest.raises(ValueError, match=re.escape(match)):
        runner(**kwargs)


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_nan_noise_is_an_error_naming_the_step(export_n1, monkeypatch, guidance):
    runner = InferencePipeline.from_export(export_n1, sampler="ddim")
    denoise, calls = runner.denoise, []

    def nan_from_the_second_call(*args):
        calls.append(1)
        noise = denoise(*args)
        return noise * np.float32("nan") if len(calls) >= 2 else noise

    monkeypatch.setattr(runner, "denoise", nan_from_the_second_call)
    seen = []
    with pytest.raises(ValueError, match=re.escape("sampling produced non-finite latents (NaN/inf) at step 2 of 3")):
        runner(PROMPTS, num_inference_steps=3, guidance_scale=guidance, callback=lambda i, t, x: seen.append(i))
    assert seen == [0]  # the callback never sees the NaN latents


# -- the CLI -------------------------------------------------------------------------------------
def _run(*args, script=INFER, code=None):
    """Run a CLI in a fresh interpreter; with ``code``, run that instead (argv = args)."""
    env = {**os.environ, "GLOG_minloglevel": "2"}
    command = [sys.executable, "-c", code, *map(str, args)] if code else [sys.executable, script, *map(str, args)]
    return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)


# Runs infer.py's main() and then reports which heavy packages the run imported.
_WATCH = """
import runpy, sys
sys.argv = [{infer!r}] + sys.argv[1:]
try:
    runpy.run_path({infer!r}, run_name="__main__")
except SystemExit as exc:
    assert not exc.code, exc.code
print("IMPORTED", sorted(m for m in ("ppdiffusers", "paddlenlp", "paddle") if m in sys.modules))
""".format(infer=INFER)


@pytest.mark.slow
def test_cli_writes_what_generate_writes_and_imports_no_training_stack(export_n1, tiny_pipeline_dir, tmp_path,
                                                                       vilg300_csv):
    args = ["--prompt", "红苹果", "--prompt", "a red apple", "--prompt-file", vilg300_csv, "--limit", 1,
            "--steps", 3, "--sampler", "dpm", "--seed", 4, "--guidance", 3.0, "--num-images-per-prompt", 2]
    proc = _run("--model", export_n1, *args, "--out", tmp_path / "ours.png", "--save-noise", tmp_path / "noise.npy",
                code=_WATCH)
    assert proc.returncode == 0, proc.stderr
    assert "IMPORTED ['paddle']" in proc.stdout  # neither ppdiffusers nor paddlenlp
    assert str(tmp_path / "ours.png") in proc.stdout
    # tools/generate.py on the saved pipeline (in-process: PPDiffusers is already imported here)
    assert deploy_exports.load_tool("tools/generate.py").main(
        ["--model", tiny_pipeline_dir, *map(str, args), "--out", str(tmp_path / "ref.png")]) == 0

    ours = json.load(open(tmp_path / "ours.json", encoding="utf-8"))
    ref = json.load(open(tmp_path / "ref.json", encoding="utf-8"))
    assert list(ours["images"].values()) == list(ref["images"].values())
    assert len(ours["images"]) == 6
    for a, b in zip(ours["images"], ref["images"]):
        x, y = (np.asarray(Image.open(tmp_path / f), dtype=int) for f in (a, b))
        assert x.shape == (32, 32, 3) and np.abs(x - y).max() <= 1
    assert Image.open(tmp_path / "ours.png").size == Image.open(tmp_path / "ref.png").size

    # the saved noise is the initial noise the runner used (the C++ runner's --noise)
    noise = np.load(tmp_path / "noise.npy")
    assert noise.shape == (6, 4, 8, 8) and noise.dtype == np.float32
    # Same call as the CLI's single batch (batch size changes the kernels' rounding by 1 level).
    from ernie_vilg2.utils.prompts import read_prompts

    runner = InferencePipeline.from_export(export_n1, sampler="dpm")
    prompts = ["红苹果", "a red apple", *read_prompts(vilg300_csv, limit=1)]
    again = runner(prompts, num_inference_steps=3, guidance_scale=3.0, num_images_per_prompt=2,
                   latents=noise).images
    assert all(np.array_equal(np.asarray(im), np.asarray(Image.open(tmp_path / f"ours_{i:03d}.png")))
               for i, im in enumerate(again))


@pytest.mark.slow
def test_cli_errors_are_one_line_with_exit_2(export_n1, tmp_path):
    proc = _run("--model", export_n1, "--prompt", "x", "--steps", 0)
    assert proc.returncode == 2 and proc.stderr.strip() == "error: --steps must be >= 1, got 0"
    proc = _run("--model", export_n1, "--prompt", "x", "--steps", 1000, "--sampler", "dpm")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == ("error: --steps must be <= 999 with DPMSolverMultistepScheduler "
                                                    "(num_train_timesteps 1000), got 1000")
    proc = _run("--model", tmp_path / "nope", "--prompt", "x")
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: --model: export folder not found: {tmp_path / 'nope'}"
    folder = deploy_exports.copy_export(export_n1, tmp_path / "export")
    os.remove(os.path.join(folder, "vae_decoder", "inference.json"))
    proc = _run("--model", folder, "--prompt", "x", "--height", 64)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: {folder}/vae_decoder/inference.json: file not found"]
    proc = _run("--model", export_n1, "--prompt", "x", "--height", 64, "--out", tmp_path / "g.png")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --height must be 32: the export was built for")


def test_cli_mirrors_the_arguments_of_generate():
    """Every tools/generate.py option exists in infer.py, except key-word emphasis (not exported)."""
    def options(script):
        return set(re.findall(r"(--[a-z][a-z-]*)", _run("--help", script=script).stdout))

    missing = options(GENERATE) - options(INFER) - {"--keyword-emphasis", "--user-dict"}
    assert not missing, f"deploy/python/infer.py lacks {sorted(missing)}"
    from ernie_vilg2.deploy.predictor import ENGINES

    usage = _run("--help").stdout
    assert all(engine in usage for engine in ENGINES)
