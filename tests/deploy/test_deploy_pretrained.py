"""A pipeline branched from a pretrained U-Net whose text encoder projects ERNIE's states to the
U-Net's context width exports to Paddle Inference and samples the dynamic pipeline's images."""
import json

import numpy as np
import paddle
import pytest

from ernie_vilg2.deploy import InferencePipeline
from ernie_vilg2.deploy.export import export_pipeline
from ernie_vilg2.models.config import ModelConfig, TextEncoderConfig, UNetConfig, VAEConfig
from ernie_vilg2.pipelines import ErnieViLG2Pipeline
from ernie_vilg2.pipelines.building import build_pipeline

from helpers.pretrained_folders import TINY_SD

ATOL = 1e-4  # as tests/deploy/test_deploy_runner.py: float images within 1e-4 of the dynamic pipeline


@pytest.mark.slow
def test_a_projected_text_encoder_exports_and_runs(tmp_path):
    cfg = ModelConfig(num_experts=2, unet=UNetConfig(pretrained=TINY_SD), vae=VAEConfig(pretrained=TINY_SD),
                      text_encoder=TextEncoderConfig(hidden_size=16, num_hidden_layers=1, intermediate_size=32,
                                                     max_length=12))
    paddle.seed(0)
    build_pipeline(cfg, 32, num_experts=2).save_pretrained(str(tmp_path / "pipeline"))
    export_pipeline(str(tmp_path / "pipeline"), str(tmp_path / "export"))
    with open(tmp_path / "export" / "manifest.json") as f:
        assert json.load(f)["programs"]["text_encoder"]["hidden_size"] == 32  # the projection's width
    dynamic = ErnieViLG2Pipeline.from_pretrained(str(tmp_path / "pipeline"))
    dynamic.set_progress_bar_config(disable=True)
    runner = InferencePipeline.from_export(str(tmp_path / "export"))
    kwargs = dict(num_inference_steps=4, guidance_scale=3.0, seed=3, output_type="np")
    ours = runner(["红苹果", "a blue heart"], **kwargs).images
    ref = dynamic(["红苹果", "a blue heart"], **kwargs).images
    assert ours.shape == ref.shape == (2, 32, 32, 3)
    assert float(np.abs(ours - ref).max()) < ATOL
