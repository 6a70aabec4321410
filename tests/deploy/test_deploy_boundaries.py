"""An export whose experts switch at snr boundaries, guided per expert: the manifest's router
section, both runners against ErnieViLG2Pipeline, and the manifest checks of the boundaries."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ernie_vilg2.deploy import InferencePipeline, ManifestError
from ernie_vilg2.deploy.export import export_pipeline
from ernie_vilg2.deploy.schedulers import build_scheduler
from ernie_vilg2.models.factory import build_sampler
from ernie_vilg2.models.routing import snr_boundaries
from ernie_vilg2.pipelines import ErnieViLG2Pipeline

from helpers import deploy_exports
from helpers.expert_boundaries import with_boundaries
from helpers.paths import REPO_ROOT

PY_RUNNER = os.path.join(REPO_ROOT, "deploy", "python", "infer.py")
PROMPTS = ["红苹果在猫脸的左边", "a blue heart"]
SCALES = [3.0, 1.0, 0.5, 2.0]
ATOL = 1e-4  # the runner's stated tolerance against the dynamic pipeline (test_deploy_runner.py)


@pytest.fixture(scope="module")
def snr_export(tiny_mode_pipeline, tmp_path_factory):
    """(dynamic pipeline with the saved folder's DDIM, export folder, boundaries) for the tiny
    4-expert bank switching at the snr boundaries of its schedule."""
    boundaries = snr_boundaries(tiny_mode_pipeline.scheduler.alphas_cumprod.numpy(), 4)
    root = tmp_path_factory.mktemp("snr_export")
    pipe = with_boundaries(tiny_mode_pipeline, boundaries)
    pipe.save_pretrained(str(root / "pipeline"))
    export_pipeline(str(root / "pipeline"), str(root / "export"), log=lambda message: None)
    with open(root / "pipeline" / "scheduler" / "scheduler_config.json", encoding="utf-8") as f:
        dynamic = ErnieViLG2Pipeline(**{**pipe.components, "scheduler": build_sampler("ddim", json.load(f))})
    dynamic.set_progress_bar_config(disable=True)
    return dynamic, str(root / "export"), boundaries


def _manifest(folder):
    with open(os.path.join(folder, "manifest.json"), encoding="utf-8") as f:
        return json.load(f)


@pytest.mark.slow
def test_the_manifest_records_the_boundaries(snr_export):
    _, export, boundaries = snr_export
    manifest = _manifest(export)
    assert boundaries != [250, 500, 750]
    assert manifest["router"] == {"num_experts": 4, "num_train_timesteps": 1000, "boundaries": boundaries}
    edges = [0, *boundaries, 1000]
    assert [e["timesteps"] for e in manifest["programs"]["experts"]] == [edges[i:i + 2] for i in range(4)]
    assert manifest["format_version"] == 2


@pytest.mark.slow
def test_python_runner_equals_the_pipeline_with_snr_boundaries_and_per_expert_guidance(snr_export):
    dynamic, export, _ = snr_export
    runner = InferencePipeline.from_export(export)
    runner.scheduler = build_scheduler("ddim", runner.samplers)
    kwargs = dict(num_inference_steps=10, guidance_scale=SCALES, seed=7, negative_prompt="blurry", output_type="np")
    ours, ref = runner(PROMPTS, **kwargs).images, dynamic(PROMPTS, **kwargs).images
    assert float(np.abs(ours - ref).max()) < ATOL
    assert not np.allclose(ours, runner(PROMPTS, **{**kwargs, "guidance_scale": 3.0}).images, atol=1e-3)
    with pytest.raises(ValueError, match=r"^guidance_scale must be one number or 4 \(one per expert\), got 3$"):
        runner(PROMPTS, num_inference_steps=2, guidance_scale=[3.0, 2.0, 1.0])


def _run(args, cwd=None):
    return subprocess.run([str(a) for a in args], capture_output=True, timeout=300, cwd=cwd,
                          env={**os.environ, "GLOG_minloglevel": "2"})


@pytest.mark.slow
def test_cpp_runner_equals_the_python_runner(cpp_runner, snr_export, tmp_path):
    export = snr_export[1]
    common = ["--model", export, "--steps", 10, "--guidance", "3,1,0.5,2", "--seed", 7, "--sampler", "ddim"]
    for prompt in PROMPTS:
        common += ["--prompt", prompt]
    noise = tmp_path / "noise.npy"
    py = _run([sys.executable, PY_RUNNER, *common, "--out", tmp_path / "py" / "grid.png", "--save-noise", noise])
    assert py.returncode == 0, py.stderr.decode()
    cpp = _run([cpp_runner, *common, "--noise", noise, "--out", tmp_path / "cpp.png"])
    assert cpp.returncode == 0, cpp.stderr.decode()
    for i in range(len(PROMPTS)):
        ours = np.asarray(Image.open(tmp_path / f"cpp_{i:03d}.png"), dtype=int)
        theirs = np.asarray(Image.open(tmp_path / "py" / f"grid_{i:03d}.png"), dtype=int)
        assert np.abs(ours - theirs).max() <= 1
    for record in (tmp_path / "cpp.json", tmp_path / "py" / "grid.json"):
        assert json.loads(record.read_text(encoding="utf-8"))["guidance"] == SCALES


@pytest.mark.slow
@pytest.mark.parametrize("guidance, python_error, cpp_error", [
    ("3,2", "error: --guidance must be one number or 4 (one per expert), got 2",
     "error: --guidance: expected one number or 4 (one per expert), got 2"),
    ("3,1,-1,2", "error: --guidance must be >= 0 and finite, got -1.0", "error: --guidance: must be >= 0, got -1"),
])
def test_bad_per_expert_guidance_is_one_line_in_both_runners(cpp_runner, snr_export, tmp_path, guidance,
                                                             python_error, cpp_error):
    args = ["--model", snr_export[1], "--prompt", "x", f"--guidance={guidance}", "--out", tmp_path / "g.png"]
    for command, error in (([sys.executable, PY_RUNNER], python_error), ([cpp_runner], cpp_error)):
        proc = _run([*command, *args], cwd=tmp_path)
        assert proc.returncode == 2
        assert proc.stderr.decode().strip().splitlines()[-1:] == [error]
        assert "Traceback" not in proc.stderr.decode()
    assert not list(tmp_path.glob("g*"))


def _edit(router=None, timesteps=None):
    def edit(manifest):
        if router is not None:
            manifest["router"].update(router) if router else manifest["router"].pop("boundaries")
        if timesteps is not None:
            manifest["programs"]["experts"][1]["timesteps"] = timesteps
    return edit


BAD_ROUTERS = [
    (_edit(router={"boundaries": [4, 17]}), "router.boundaries", "expected 3 boundaries"),
    (_edit(router={"boundaries": [0, 17, 303]}), "router.boundaries", "[1, 999]"),
    (_edit(router={"boundaries": [17, 17, 303]}), "router.boundaries", "increasing"),
    (_edit(router={"boundaries": [4, 17, 1000]}), "router.boundaries", "[1, 999]"),
    (_edit(router={"boundaries": "snr"}), "router.boundaries", ""),
    (_edit(timesteps=[0, 17]), "programs.experts[1].timesteps", "expected ["),
    (_edit(router={}), "programs.experts[0].timesteps", "expected [0, 250]"),  # no boundaries: uniform
]


@pytest.mark.slow
@pytest.mark.parametrize("edit, field, problem", BAD_ROUTERS)
def test_bad_boundaries_are_refused_by_both_runners_naming_the_field(cpp_runner, snr_export, tmp_path, edit, field,
                                                                    problem):
    folder = deploy_exports.copy_export(snr_export[1], tmp_path / "export")
    path = os.path.join(folder, "manifest.json")
    manifest = _manifest(folder)
    edit(manifest)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(manifest, f)
    with pytest.raises(ManifestError) as info:
        InferencePipeline.from_export(folder)
    assert f"field '{field}'" in str(info.value) and problem in str(info.value)
    proc = _run([cpp_runner, "--model", folder, "--prompt", "x", "--out", tmp_path / "g.png"])
    lines = proc.stderr.decode().strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and f"'{field}'" in lines[0], lines
    assert problem in lines[0] or field == "router.boundaries", lines
