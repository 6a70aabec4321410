"""Stage 2 straight from a pretrained U-Net (configs/tiny_pretrained.yaml on the fixture folder
diffusers wrote): no vae or base stage, every expert starts as the pretrained U-Net, the VAE is
the folder's, and the text encoder's new projection trains with it."""
import os
import subprocess

import numpy as np
import pytest

from ernie_vilg2.pipelines.loading import load_pipeline
from ernie_vilg2.training.config import load_config
from ernie_vilg2.training.runner import run_training

from helpers.paths import TOOL_ENV
from helpers.pretrained_folders import (ATOL, RTOL, TINY_PRETRAINED_YAML, TINY_SD, diffusers_outputs,
                                        pretrained_run_overrides, unet_outputs, vae_outputs)
from helpers.training_runs import train_cli

pytestmark = pytest.mark.slow


def _train(tmp_path, **extra):
    cfg = load_config(TINY_PRETRAINED_YAML, pretrained_run_overrides(tmp_path, **extra))
    return load_pipeline(run_training(cfg))


def test_experts_start_as_the_pretrained_unet_and_the_vae_is_the_folders(tmp_path, caplog):
    pipe = _train(tmp_path, **{"train.experts.steps": 0, "model.beta_end": 0.02})
    assert "noise schedule differs from the pretrained model's" in caplog.text
    assert "model.beta_end: 0.02 vs 0.012" in caplog.text
    assert not os.path.exists(tmp_path / "run" / "vae")  # no vae stage
    assert not os.path.exists(tmp_path / "run" / "base")  # no base stage
    data = diffusers_outputs()
    assert pipe.unet.num_experts == 2
    for expert in pipe.unet.experts:
        np.testing.assert_allclose(unet_outputs(expert, data), data["unet_out"], rtol=RTOL, atol=ATOL)
    for name, value in vae_outputs(pipe.vae, data).items():
        np.testing.assert_allclose(value, data[name], rtol=RTOL, atol=ATOL, err_msg=name)
    assert pipe.vae.config.scaling_factor == 0.5  # the folder's, not estimated from the data
    assert type(pipe.text_encoder).__name__ == "ErnieWithContextProjection"
    assert pipe.text_encoder.context_projection.weight.shape == [16, 32]


def test_a_short_run_trains_the_experts_and_the_projection(tmp_path):
    untrained = _train(tmp_path / "a", **{"train.experts.steps": 0})
    trained = _train(tmp_path / "b", **{"train.experts.steps": 2, "train.experts.lr": 0.01})
    projection = [p.text_encoder.context_projection.weight.numpy() for p in (untrained, trained)]
    assert not np.allclose(*projection)  # trained with the text side
    data = diffusers_outputs()
    moved = [not np.allclose(unet_outputs(e, data), data["unet_out"], atol=1e-3) for e in trained.unet.experts]
    assert any(moved)
    image = trained(["红苹果"], num_inference_steps=2, seed=0, output_type="np").images
    assert np.isfinite(image).all()


def _cli(tmp_path, *opts, config=TINY_PRETRAINED_YAML):
    args = train_cli(pretrained_run_overrides(tmp_path) + list(opts))
    args[args.index("--config") + 1] = config
    return subprocess.run(args, env=TOOL_ENV, capture_output=True, text=True, timeout=600)


def test_a_frozen_new_projection_is_refused_naming_the_field(tmp_path):
    result = _cli(tmp_path, "train.experts.train_text_encoder=false")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(
        "error: config field 'train.experts.train_text_encoder': must be true")


def test_a_pickle_only_unet_folder_is_one_line_naming_the_file(tmp_path):
    import shutil

    folder = shutil.copytree(TINY_SD, tmp_path / "sd")
    os.rename(folder / "unet" / "diffusion_pytorch_model.safetensors", folder / "unet" / "diffusion_pytorch_model.bin")
    result = _cli(tmp_path, f"model.unet.pretrained={folder}")
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {folder}/unet/diffusion_pytorch_model.bin: pickle weights are never loaded")


def test_a_base_stage_fine_tunes_the_pretrained_unet_and_the_experts_branch_from_it(tmp_path):
    pipe = _train(tmp_path, **{"train.stages": "[vae, base, experts]", "train.base.steps": 0,
                               "train.experts.steps": 0})
    assert not os.path.exists(tmp_path / "run" / "vae")  # listed, but the VAE is pretrained
    base = load_pipeline(str(tmp_path / "run" / "base"))
    data = diffusers_outputs()
    np.testing.assert_allclose(unet_outputs(base.unet, data), data["unet_out"], rtol=RTOL, atol=ATOL)
    for expert in pipe.unet.experts:
        np.testing.assert_allclose(unet_outputs(expert, data), data["unet_out"], rtol=RTOL, atol=ATOL)
