"""tools/evaluate.py --guidance G or G0,G1,...: one guidance scale per expert (in-process runs)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from helpers.deploy_exports import load_tool
from helpers.paths import FIXTURES

PROMPTS = ["红苹果在猫脸的左边", "a blue heart"]
SCALES = [3.0, 1.0, 0.5, 2.0]
FID_REF = os.path.join(FIXTURES, "fid", "a")


@pytest.fixture(scope="module")
def four_experts(tiny_mode_pipeline, tmp_path_factory):
    """The tiny 4-expert pipeline, saved, and a prompt file."""
    root = tmp_path_factory.mktemp("four_experts")
    tiny_mode_pipeline.save_pretrained(str(root / "pipeline"))
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    return str(root / "pipeline"), str(root / "prompts.txt")


def _evaluate(model, prompts, out, guidance):
    return load_tool("tools/evaluate.py").main([
        "--model", model, "--prompts", prompts, "--fid-ref", FID_REF, "--out", str(out), f"--guidance={guidance}",
        "--steps", "4", "--sampler", "ddim", "--seed", "5"])


@pytest.mark.slow
def test_evaluate_takes_one_scale_per_expert(tiny_mode_pipeline, four_experts, fid_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", fid_cache["dir"])
    out = tmp_path / "eval"
    assert _evaluate(*four_experts, out, "3,1,0.5,2") == 0  # 4 DDIM steps: each expert runs one
    expected = tiny_mode_pipeline(PROMPTS, num_inference_steps=4, guidance_scale=SCALES, seed=5).images
    got = [np.asarray(Image.open(out / "images" / f"{i:05d}.png")) for i in range(2)]
    for image, want in zip(got, expected, strict=True):
        np.testing.assert_array_equal(image, np.asarray(want))
    one_scale = tiny_mode_pipeline(PROMPTS[0], num_inference_steps=4, guidance_scale=3.0, seed=5).images[0]
    assert not np.array_equal(got[0], np.asarray(one_scale))  # the list decides
    for record in ("generation.json", "report.json"):
        assert json.loads((out / record).read_text(encoding="utf-8"))["guidance"] == SCALES


@pytest.mark.parametrize("guidance, message", [
    ("3,2", "error: --guidance must be one number or 4 (one per expert), got 2"),
    ("3,x,1,1", "error: --guidance: expected a number or one number per expert separated by commas (e.g. 3,3,2), "
                "got '3,x,1,1'"),
    ("3,1,nan,1", "error: --guidance must be >= 0 and finite, got nan"),
    ("3,-1,1,1", "error: --guidance must be >= 0 and finite, got -1.0"),
])
def test_bad_per_expert_guidance_is_one_line_naming_the_flag(four_experts, tmp_path, capsys, guidance, message):
    with pytest.raises(SystemExit) as exit_info:
        _evaluate(*four_experts, tmp_path / "eval", guidance)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == message
    assert not list(tmp_path.iterdir())
