"""tools/generate.py --guidance G or G0,G1,...: one guidance scale per expert (in-process runs)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from helpers.deploy_exports import load_tool
from helpers.expert_boundaries import with_boundaries

PROMPT = "红苹果在猫脸的左边"
SCALES = [3.0, 1.0, 0.5, 2.0]


@pytest.fixture(scope="module")
def placed_dir(tiny_mode_pipeline, tmp_path_factory):
    pipe = with_boundaries(tiny_mode_pipeline, [30, 300, 600])
    path = tmp_path_factory.mktemp("placed") / "pipeline"
    pipe.save_pretrained(str(path))
    return pipe, str(path)


def _generate(*args):
    return load_tool("tools/generate.py").main([str(a) for a in args])


def test_generate_takes_one_scale_per_expert(placed_dir, tmp_path):
    pipe, folder = placed_dir
    out = tmp_path / "grid.png"
    assert _generate("--model", folder, "--prompt", PROMPT, "--guidance", "3,1,0.5,2", "--sampler", "ddim",
                     "--steps", 10, "--seed", 5, "--out", out) == 0
    expected = pipe(PROMPT, num_inference_steps=10, guidance_scale=SCALES, seed=5).images[0]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "grid_000.png")), np.asarray(expected))
    assert json.loads((tmp_path / "grid.json").read_text(encoding="utf-8"))["guidance"] == SCALES


@pytest.mark.parametrize("guidance, message", [
    ("3,2", "error: --guidance must be one number or 4 (one per expert), got 2"),
    ("3,x,1,1", "error: --guidance: expected a number or one number per expert separated by commas (e.g. 3,3,2), "
                "got '3,x,1,1'"),
    ("3,-1,1,1", "error: --guidance must be >= 0 and finite, got -1.0"),
    ("3,1,inf,1", "error: --guidance must be >= 0 and finite, got inf"),
])
def test_bad_per_expert_guidance_is_one_line_naming_the_flag(placed_dir, tmp_path, capsys, guidance, message):
    with pytest.raises(SystemExit) as exit_info:
        _generate("--model", placed_dir[1], "--prompt", PROMPT, f"--guidance={guidance}", "--steps", 2,
                  "--out", tmp_path / "g.png")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == message
    assert not list(tmp_path.iterdir())
