"""LoRA-expert pipelines as a user meets them: tools/branch_experts.py --lora-rank, sampling,
tools/merge_lora_experts.py, the merged folder through tools/export_model.py and both runners,
and one-line refusals where LoRA experts do not apply (export before merging, expert offload)."""
from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys

import numpy as np
import paddle
import pytest
from PIL import Image

from ernie_vilg2.deploy import InferencePipeline
from ernie_vilg2.deploy.schedulers import build_scheduler
from ernie_vilg2.models.lora_experts import LoRAExperts
from ernie_vilg2.pipelines import ErnieViLG2Pipeline, load_pipeline

from helpers.deploy_exports import load_tool
from helpers.paths import REPO_ROOT, TOOL_ENV

pytestmark = pytest.mark.slow

PROMPTS = ["红苹果在猫脸的左边", "a blue heart"]
SAMPLE = dict(num_inference_steps=6, guidance_scale=[3.0, 1.0, 2.0, 0.5], seed=3, output_type="np")
PY_RUNNER = os.path.join(REPO_ROOT, "deploy", "python", "infer.py")


def _tool(script, *args):
    """A tool's main() in-process (no Paddle start-up per call): (exit status, stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = load_tool(script).main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code
    return code, err.getvalue()


def _ok(result):
    assert result[0] == 0, result[1][-3000:]


def _one_line_error(result, text):
    code, err = result
    assert code == 2, err[-3000:]
    assert err.strip().splitlines() == [err.strip().splitlines()[-1]] and err.startswith("error: ") and text in err, err


@pytest.fixture(scope="module")
def lora_folders(tiny_pipeline_dir, tmp_path_factory):
    """(stage-1 folder, LoRA folder with 4 experts whose adapters are made non-zero, merged folder)."""
    root = tmp_path_factory.mktemp("lora")
    _ok(_tool("tools/branch_experts.py", "--model", tiny_pipeline_dir, "--num-experts", 4, "--lora-rank", 2,
              "--lora-alpha", 4, "--out", root / "branched"))
    pipe = load_pipeline(str(root / "branched"))
    rng = np.random.default_rng(0)
    for target in pipe.unet.target_names:  # as if trained: a fresh adapter adds nothing
        for p in pipe.unet.adapters(target).parameters():
            p.set_value(paddle.to_tensor(0.3 * rng.standard_normal(p.shape).astype("float32")))
    pipe.save_pretrained(str(root / "lora"))
    _ok(_tool("tools/merge_lora_experts.py", "--model", root / "lora", "--out", root / "merged"))
    return tiny_pipeline_dir, str(root / "lora"), str(root / "merged")


def _images(folder, **kwargs):
    pipe = load_pipeline(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe, pipe(PROMPTS, **{**SAMPLE, **kwargs}).images


def test_branched_lora_experts_start_as_the_stage1_model(lora_folders, tmp_path):
    stage1, _, _ = lora_folders
    _ok(_tool("tools/branch_experts.py", "--model", stage1, "--num-experts", 4, "--lora-rank", 3,
              "--lora-targets", "to_q,to_v", "--out", tmp_path / "b"))
    pipe, branched = _images(str(tmp_path / "b"), guidance_scale=2.0)
    assert isinstance(pipe.unet, LoRAExperts) and pipe.unet.num_experts == 4
    assert {name.rsplit(".", 1)[-1] for name in pipe.unet.target_names} == {"to_q", "to_v"}
    _, reference = _images(stage1, guidance_scale=2.0)
    np.testing.assert_allclose(branched, reference, atol=1e-5)


def test_merged_experts_sample_as_the_lora_experts(lora_folders):
    _, lora, merged = lora_folders
    lora_pipe, ours = _images(lora)
    merged_pipe, theirs = _images(merged)
    assert isinstance(lora_pipe.unet, LoRAExperts) and not isinstance(merged_pipe.unet, LoRAExperts)
    assert merged_pipe.unet.num_experts == 4
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    changed = [_images(folder, guidance_scale=3.0)[1] for folder in (lora, lora_folders[0])]
    assert not np.allclose(*changed, atol=1e-3)  # the adapters change the stage-1 model's images


def test_merged_experts_export_and_run_in_both_runners(lora_folders, cpp_runner, tmp_path):
    _, lora, merged = lora_folders
    _ok(_tool("tools/export_model.py", "--model", merged, "--out", tmp_path / "export"))
    runner = InferencePipeline.from_export(str(tmp_path / "export"))
    runner.scheduler = build_scheduler("ddim", runner.samplers)
    lora_pipe, reference = _images(lora)
    assert float(np.abs(runner(PROMPTS, **SAMPLE).images - reference).max()) < 1e-4
    common = ["--model", tmp_path / "export", "--steps", 6, "--guidance", "3,1,2,0.5", "--seed", 3, "--sampler",
              "ddim", "--prompt", PROMPTS[0]]
    noise = tmp_path / "noise.npy"
    py = subprocess.run([sys.executable, PY_RUNNER, *[str(a) for a in common], "--out", str(tmp_path / "py.png"),
                         "--save-noise", str(noise)], capture_output=True, timeout=300, env=TOOL_ENV)
    assert py.returncode == 0, py.stderr.decode()[-3000:]
    cpp = subprocess.run([str(a) for a in [cpp_runner, *common, "--noise", noise, "--out", tmp_path / "cpp.png"]],
                         capture_output=True, timeout=300, env=TOOL_ENV)
    assert cpp.returncode == 0, cpp.stderr.decode()[-3000:]
    a, b = (np.asarray(Image.open(tmp_path / name), dtype=int) for name in ("cpp.png", "py.png"))
    assert np.abs(a - b).max() <= 1


def test_lora_folders_are_refused_where_full_experts_are_needed(lora_folders, tmp_path):
    stage1, lora, merged = lora_folders
    _one_line_error(_tool("tools/export_model.py", "--model", lora, "--out", tmp_path / "e"),
                    "merge them into full experts first (python tools/merge_lora_experts.py")
    _one_line_error(_tool("tools/merge_lora_experts.py", "--model", merged, "--out", tmp_path / "m"),
                    "its experts are full U-Nets already")
    _one_line_error(_tool("tools/branch_experts.py", "--model", stage1, "--num-experts", 2, "--lora-rank", 2,
                          "--lora-targets", "conv1", "--out", tmp_path / "c"), "--lora-targets: 'conv1' matches")
    _one_line_error(_tool("tools/branch_experts.py", "--model", stage1, "--num-experts", 2, "--lora-alpha", 2,
                          "--out", tmp_path / "c"), "only with --lora-rank")
    assert not any(os.path.exists(tmp_path / name) for name in ("e", "m", "c"))
    for offload in ("cpu", "disk"):
        with pytest.raises(ValueError, match="LoRA experts share one base U-Net"):
            ErnieViLG2Pipeline.from_pretrained(lora, expert_offload=offload)
    with pytest.raises(ValueError, match="merge them into full experts first"):
        load_pipeline(lora).enable_expert_offload("cpu")


def test_diffusers_export_writes_the_merged_experts(lora_folders, tmp_path):
    from ppdiffusers import UNet2DConditionModel

    _, lora, merged = lora_folders
    _ok(_tool("tools/export_diffusers.py", "--model", lora, "--out", tmp_path / "diffusers"))
    bank = load_pipeline(merged).unet
    rng = np.random.default_rng(0)
    sample = paddle.to_tensor(rng.standard_normal([2, 4, 8, 8]).astype("float32"))
    context = paddle.to_tensor(rng.standard_normal([2, 5, bank.experts[0].config.cross_attention_dim])
                               .astype("float32"))
    for i in (0, 3):
        loaded = UNet2DConditionModel.from_pretrained(str(tmp_path / "diffusers" / f"expert-{i:02d}"),
                                                      from_diffusers=True)
        with paddle.no_grad():
            ours, theirs = (u(sample, paddle.to_tensor([900]), context).sample.numpy()
                            for u in (bank.experts[i], loaded))
        np.testing.assert_allclose(theirs, ours, rtol=1e-5, atol=1e-5)
