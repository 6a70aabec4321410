"""tools/branch_experts.py --boundaries and branch_pipeline(expert_boundaries=...)."""
from __future__ import annotations

import json

import pytest

from ernie_vilg2.models.routing import snr_boundaries
from ernie_vilg2.pipelines import branch_pipeline

from helpers.deploy_exports import load_tool


def _branch(*args):
    return load_tool("tools/branch_experts.py").main([str(a) for a in args])


def _saved_boundaries(folder):
    with open(folder / "unet" / "config.json", encoding="utf-8") as f:
        return json.load(f)["expert_boundaries"]


def test_branch_pipeline_places_snr_boundaries_over_the_pipelines_schedule(tiny_pipeline):
    branched = branch_pipeline(tiny_pipeline, 3, expert_boundaries="snr")
    assert branched.unet.router.boundaries == snr_boundaries(tiny_pipeline.scheduler.alphas_cumprod.numpy(), 3)
    assert branch_pipeline(tiny_pipeline, 3, expert_boundaries=[10, 700]).unet.router.stage(1) == (10, 700)
    assert branch_pipeline(tiny_pipeline, 2).unet.router.boundaries == [500]


@pytest.mark.parametrize("boundaries, expected", [("snr", None), ("10,700", [10, 700]), ("uniform", None)])
def test_branch_tool_saves_the_boundaries(tiny_pipeline, tiny_pipeline_dir, tmp_path, boundaries, expected):
    out = tmp_path / "out"
    num_experts = 3 if boundaries != "uniform" else 2
    assert _branch("--model", tiny_pipeline_dir, "--num-experts", num_experts, "--boundaries", boundaries,
                   "--out", out) == 0
    if boundaries == "snr":
        expected = snr_boundaries(tiny_pipeline.scheduler.alphas_cumprod.numpy(), 3)
    assert _saved_boundaries(out) == expected  # uniform: none saved, the router's default


@pytest.mark.parametrize("args, message", [
    (["--num-experts", 3, "--boundaries", "10"],
     "error: --boundaries: expected 2 boundaries (one fewer than the 3 experts), got 1"),
    (["--num-experts", 3, "--boundaries", "700,10"], "error: --boundaries: boundaries must be strictly increasing"),
    (["--num-experts", 3, "--boundaries", "cosine"],
     "error: --boundaries: expected uniform, snr or increasing timesteps separated by commas, got 'cosine'"),
    (["--num-experts", 3], "error: --num-experts: 3 does not divide num_train_timesteps (1000)"),
])
def test_bad_boundaries_are_one_line_naming_the_flag(tiny_pipeline_dir, tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        _branch("--model", tiny_pipeline_dir, *args, "--out", tmp_path / "out")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().startswith(message)
    assert not (tmp_path / "out").exists()
