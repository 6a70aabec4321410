"""Pretrained U-Nets and VAEs from local folders (models/pretrained.py, models/pretrained_folder.py):
diffusers' own folder (PyTorch layout) and a PPDiffusers one reproduce diffusers' outputs; a
damaged or mismatched folder is one line naming the file or config field; pickle weights are
refused without being read."""
import json
import os

import numpy as np
import pytest

from ernie_vilg2.config import ConfigError
from ernie_vilg2.models.config import ModelConfig, UNetConfig, VAEConfig
from ernie_vilg2.models.pretrained import load_pretrained_unet, load_pretrained_vae
from ernie_vilg2.utils.integrity import DamagedFileError

from helpers.pretrained_folders import (ATOL, RTOL, TINY_SD, copy_of_tiny_sd, diffusers_outputs, unet_outputs,
                                        vae_outputs, write_pickle_weights)


def _assert_reproduces(unet, vae, data):
    np.testing.assert_allclose(unet_outputs(unet, data), data["unet_out"], rtol=RTOL, atol=ATOL)
    for name, value in vae_outputs(vae, data).items():
        np.testing.assert_allclose(value, data[name], rtol=RTOL, atol=ATOL, err_msg=name)


def test_a_diffusers_pipeline_folder_reproduces_diffusers_outputs():
    unet, vae = load_pretrained_unet(TINY_SD), load_pretrained_vae(TINY_SD)
    _assert_reproduces(unet, vae, diffusers_outputs())
    assert vae.config.scaling_factor == 0.5  # the folder's


def test_component_folders_load_as_the_pipeline_folder_does():
    unet = load_pretrained_unet(os.path.join(TINY_SD, "unet"))
    vae = load_pretrained_vae(os.path.join(TINY_SD, "vae"))
    _assert_reproduces(unet, vae, diffusers_outputs())


def test_a_ppdiffusers_folder_reproduces_diffusers_outputs(tmp_path):
    out = tmp_path / "ppdiffusers"
    load_pretrained_unet(TINY_SD).save_pretrained(str(out / "unet"))
    load_pretrained_vae(TINY_SD).save_pretrained(str(out / "vae"))
    assert sorted(os.listdir(out / "unet")) == ["config.json", "diffusion_paddle_model.safetensors"]
    _assert_reproduces(load_pretrained_unet(str(out)), load_pretrained_vae(str(out)), diffusers_outputs())


def _ppdiffusers_from_pretrained(folder):
    from ppdiffusers import UNet2DConditionModel

    try:
        UNet2DConditionModel.from_pretrained(folder, subfolder="unet", from_diffusers=True)
    except Exception:  # noqa: BLE001 - what it raises on the payload does not matter
        pass


def test_pickle_weights_are_refused_unread(tmp_path):
    folder = copy_of_tiny_sd(tmp_path)
    os.remove(os.path.join(folder, "unet", "diffusion_pytorch_model.safetensors"))
    marker = tmp_path / "unpickled"
    write_pickle_weights(os.path.join(folder, "unet", "diffusion_pytorch_model.bin"), marker)
    with pytest.raises(DamagedFileError) as exc:
        load_pretrained_unet(folder)
    message = str(exc.value)
    assert "\n" not in message and "diffusion_pytorch_model.bin" in message
    assert "safe_serialization=True" in message  # how to convert it
    assert not marker.exists()
    _ppdiffusers_from_pretrained(folder)  # PPDiffusers' own lookup falls back to the pickle
    assert marker.exists()


def test_pickles_beside_safetensors_are_never_chosen(tmp_path):
    folder = copy_of_tiny_sd(tmp_path)
    marker = tmp_path / "unpickled"
    shard = "diffusion_pytorch_model-00001-of-00001.bin"
    write_pickle_weights(os.path.join(folder, "unet", shard), marker)
    with open(os.path.join(folder, "unet", "diffusion_pytorch_model.bin.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": 1}, "weight_map": {"conv_in.weight": shard}}, f)
    data = diffusers_outputs()
    np.testing.assert_allclose(unet_outputs(load_pretrained_unet(folder), data), data["unet_out"], rtol=RTOL,
                               atol=ATOL)
    assert not marker.exists()
    _ppdiffusers_from_pretrained(folder)  # PPDiffusers' own lookup prefers a sharded .bin to one safetensors
    assert marker.exists()


@pytest.mark.parametrize("damage, named", [
    ("no weights", "unet: no weights file"),
    ("truncated", "diffusion_pytorch_model.safetensors: truncated"),
    ("no config", "neither a pipeline folder with unet/config.json"),
    ("other architecture", "diffusion_pytorch_model.safetensors: does not fit config.json's architecture"),
])
def test_a_damaged_folder_is_one_line_naming_the_file(tmp_path, damage, named):
    folder = copy_of_tiny_sd(tmp_path)
    unet_dir = os.path.join(folder, "unet")
    weights = os.path.join(unet_dir, "diffusion_pytorch_model.safetensors")
    if damage == "no weights":
        os.remove(weights)
    elif damage == "truncated":
        with open(weights, "r+b") as f:
            f.truncate(os.path.getsize(weights) - 100)
    elif damage == "no config":
        os.remove(os.path.join(unet_dir, "config.json"))
    else:
        config_path = os.path.join(unet_dir, "config.json")
        with open(config_path) as f:
            config = json.load(f)
        config["cross_attention_dim"] = 24
        with open(config_path, "w") as f:
            json.dump(config, f)
    with pytest.raises(DamagedFileError) as exc:
        load_pretrained_unet(folder)
    assert "\n" not in str(exc.value)
    assert named in str(exc.value)


def test_missing_weights_are_an_error_not_a_fresh_init(tmp_path):
    from safetensors.numpy import load_file, save_file

    folder = copy_of_tiny_sd(tmp_path)
    weights = os.path.join(folder, "vae", "diffusion_pytorch_model.safetensors")
    state = load_file(weights)
    del state["decoder.conv_out.bias"]
    save_file(state, weights, metadata={"format": "pt"})
    with pytest.raises(DamagedFileError, match="lacks 1 weights of config.json's architecture, e.g. "
                                               "decoder.conv_out.bias"):
        load_pretrained_vae(folder)


def test_the_architecture_comes_from_the_folder():
    unet = UNetConfig(pretrained=TINY_SD)
    assert (unet.block_out_channels, unet.attention_head_dim, unet.cross_attention_dim) == ([8, 16], 2, 32)
    vae = VAEConfig(pretrained=TINY_SD)
    assert (vae.block_out_channels, vae.scale_factor) == ([8, 16, 16], 4)
    assert UNetConfig().block_out_channels == [32, 64]  # without a folder: the defaults
    UNetConfig(pretrained=TINY_SD, block_out_channels=[8, 16], norm_num_groups=4)  # agreeing fields are fine


@pytest.mark.parametrize("section, field, value", [
    ("unet", "block_out_channels", [32, 64]), ("unet", "cross_attention_dim", 64), ("vae", "latent_channels", 8),
])
def test_a_field_contradicting_the_folder_names_it(section, field, value):
    cls = UNetConfig if section == "unet" else VAEConfig
    with pytest.raises(ConfigError) as exc:
        cls(pretrained=TINY_SD, **{field: value})
    assert str(exc.value).startswith(f"config field 'model.{section}.{field}': {value!r} contradicts")
    assert "config.json" in str(exc.value)


def test_a_missing_or_wrong_folder_names_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"'model.unet.pretrained': .*nope: folder not found"):
        UNetConfig(pretrained=str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match=r"'model.vae.pretrained': .*is a UNet2DConditionModel config"):
        VAEConfig(pretrained=os.path.join(TINY_SD, "unet"))


def test_text_encoder_of_another_width_gets_a_projection(tiny_tokenizer):
    import paddle

    from ernie_vilg2.models.factory import build_text_encoder_from_config
    from ernie_vilg2.models.text_encoder import context_width, encode_text

    cfg = ModelConfig(unet=UNetConfig(pretrained=TINY_SD), vae=VAEConfig(pretrained=TINY_SD))
    encoder = build_text_encoder_from_config(cfg, tiny_tokenizer)
    assert cfg.text_encoder.hidden_size == 64 and context_width(encoder) == 32
    encoder.eval()
    ids = paddle.to_tensor([[1, 5, 9, 2]])
    states = encode_text(encoder, ids)
    ernie_states = encoder.__class__.__mro__[1].forward(encoder, ids)[0]  # ERNIE's own output
    projection = encoder.context_projection
    np.testing.assert_allclose(states.numpy(), (paddle.matmul(ernie_states, projection.weight)
                                                + projection.bias).numpy(), rtol=1e-5, atol=1e-6)
    same_width = build_text_encoder_from_config(ModelConfig(), tiny_tokenizer)
    assert not hasattr(same_width, "context_projection")


def test_schedule_differences_name_the_fields():
    from ernie_vilg2.config import to_dict
    from ernie_vilg2.models.pretrained_folder import schedule_differences

    sd_schedule = ModelConfig(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    assert schedule_differences(TINY_SD, to_dict(sd_schedule)) == []
    assert schedule_differences(TINY_SD, to_dict(ModelConfig())) == [
        "model.beta_schedule: 'linear' vs 'scaled_linear'", "model.beta_start: 0.0001 vs 0.00085",
        "model.beta_end: 0.02 vs 0.012"]
    assert schedule_differences(os.path.join(TINY_SD, "unet"), to_dict(ModelConfig())) == []  # no scheduler/
