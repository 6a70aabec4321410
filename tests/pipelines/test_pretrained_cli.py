"""The tools on a pretrained folder (tests/fixtures/pretrained/tiny-sd, written by diffusers):
tools/branch_experts.py branches its U-Net into experts, tools/export_diffusers.py writes them
back for diffusers, and a config that contradicts the folder is one line naming the field."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from helpers.paths import REPO_ROOT, TINY_YAML
from helpers.pretrained_folders import (ATOL, RTOL, TINY_PRETRAINED_YAML, TINY_SD, diffusers_outputs,
                                        unet_outputs, vae_outputs)

TOOLS = os.path.join(REPO_ROOT, "tools")
SMALL_TEXT_ENCODER = ["-o", "model.text_encoder.hidden_size=16", "-o", "model.text_encoder.intermediate_size=32",
                      "-o", "model.text_encoder.num_hidden_layers=1", "-o", f"model.vae.pretrained={TINY_SD}"]


def _run(tool, *args):
    return subprocess.run([sys.executable, os.path.join(TOOLS, tool), *map(str, args)], cwd=REPO_ROOT,
                          env={**os.environ, "GLOG_minloglevel": "2"}, capture_output=True, text=True, timeout=300)


def _one_line_error(proc):
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def branched(tmp_path_factory):
    out = tmp_path_factory.mktemp("branch") / "experts"
    proc = _run("branch_experts.py", "--model", TINY_SD, "--config", TINY_PRETRAINED_YAML, *SMALL_TEXT_ENCODER,
                "--num-experts", 4, "--out", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return str(out)


@pytest.mark.slow
def test_branch_experts_from_a_diffusers_pipeline_folder(branched):
    from ernie_vilg2.pipelines.loading import load_pipeline

    pipe = load_pipeline(branched)
    data = diffusers_outputs()
    assert pipe.unet.num_experts == 4
    for expert in pipe.unet.experts:
        np.testing.assert_allclose(unet_outputs(expert, data), data["unet_out"], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(vae_outputs(pipe.vae, data)["vae_decoded"], data["vae_decoded"], rtol=RTOL, atol=ATOL)
    assert pipe.text_encoder.config.context_dim == 32  # ERNIE's 16 projected to the U-Net's context


@pytest.mark.slow
def test_branch_experts_from_a_unet_folder(tmp_path):
    out = tmp_path / "experts"
    proc = _run("branch_experts.py", "--model", os.path.join(TINY_SD, "unet"), "--config", TINY_PRETRAINED_YAML,
                *SMALL_TEXT_ENCODER, "--num-experts", 2, "--out", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(out / "unet" / "config.json") as f:
        assert json.load(f)["num_experts"] == 2


@pytest.mark.slow
def test_export_diffusers_cli_round_trip(branched, tmp_path):
    from ppdiffusers import UNet2DConditionModel

    out = tmp_path / "diffusers"
    proc = _run("export_diffusers.py", "--model", branched, "--out", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(os.listdir(out)) == ["expert-00", "expert-01", "expert-02", "expert-03", "experts.json",
                                       "scheduler", "vae"]
    data = diffusers_outputs()
    loaded = UNet2DConditionModel.from_pretrained(str(out / "expert-03"), from_diffusers=True)
    np.testing.assert_allclose(unet_outputs(loaded, data), data["unet_out"], rtol=RTOL, atol=ATOL)
    assert "already exists" in _one_line_error(_run("export_diffusers.py", "--model", branched, "--out", out))


def test_branching_a_pretrained_folder_needs_a_config(tmp_path):
    line = _one_line_error(_run("branch_experts.py", "--model", TINY_SD, "--num-experts", 2, "--out",
                                tmp_path / "out"))
    assert line.startswith("error: --config: --model ") and "is not an ERNIE-ViLG 2.0 pipeline" in line


def test_a_config_field_contradicting_the_folder_is_named(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(TOOLS, "train.py"), "--config", TINY_YAML,
                           "-o", f"model.unet.pretrained={TINY_SD}", "-o", f"train.output_dir={tmp_path / 'run'}"],
                          cwd=REPO_ROOT, env={**os.environ, "GLOG_minloglevel": "2"}, capture_output=True, text=True,
                          timeout=300)
    line = _one_line_error(proc)
    assert line.startswith("error: config field 'model.unet.block_out_channels': [32, 64] contradicts the "
                           "pretrained unet's [8, 16]")
