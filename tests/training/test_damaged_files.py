"""Damaged model folders: a truncated, empty or missing weight file or a malformed JSON
file is reported in one line naming the file, by the library and by the CLIs."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import save_file

from ernie_vilg2.pipelines import load_pipeline

from helpers.paths import REPO_ROOT as REPO

ENV = {**os.environ, "GLOG_minloglevel": "2"}
UNET_WEIGHTS = os.path.join("unet", "diffusion_paddle_model.safetensors")


@pytest.fixture
def model_copy(tiny_pipeline_dir, tmp_path):
    return shutil.copytree(tiny_pipeline_dir, tmp_path / "model")


def _truncate(path, keep=None):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 if keep is None else keep])


def _one_line_naming(err, path):
    message = str(err.value)
    assert message.startswith(str(path)), message
    assert "\n" not in message
    return message


@pytest.mark.parametrize("damage, expected", [
    ("truncate", r"truncated \(expected \d+ bytes, found \d+\)"),
    ("empty", "expected at least 8 bytes, found 0"),
    ("delete", r"no weight file beside config.json \(expected a \*.safetensors"),
])
def test_damaged_unet_weights_are_named(model_copy, damage, expected):
    path = model_copy / UNET_WEIGHTS
    if damage == "truncate":
        _truncate(path)
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        path.unlink()
    with pytest.raises(ValueError, match=expected) as err:
        load_pipeline(str(model_copy))
    _one_line_naming(err, path if damage != "delete" else path.parent)


@pytest.mark.slow
@pytest.mark.parametrize("load", ["load_pipeline", "from_pretrained"])
def test_damaged_text_encoder_and_vae_are_named(model_copy, load):
    from ernie_vilg2 import ErnieViLG2Pipeline

    load = load_pipeline if load == "load_pipeline" else ErnieViLG2Pipeline.from_pretrained
    for part in ("text_encoder/model.safetensors", "vae/diffusion_paddle_model.safetensors"):
        path = model_copy / part
        original = path.read_bytes()
        _truncate(path, keep=20)
        with pytest.raises(ValueError) as err:
            load(str(model_copy))
        _one_line_naming(err, path)
        path.write_bytes(original)
    load(str(model_copy))  # intact again


def test_malformed_json_is_named(model_copy):
    index = model_copy / "model_index.json"
    index.write_text(index.read_text()[:40])
    with pytest.raises(ValueError, match="not valid JSON") as err:
        load_pipeline(str(model_copy))
    _one_line_naming(err, index)


def test_damaged_expert_bank_is_named(model_copy):
    from ernie_vilg2.models.expert_bank import MixtureOfDenoisingExperts

    weights = model_copy / UNET_WEIGHTS
    _truncate(weights)
    with pytest.raises(ValueError, match="truncated") as err:
        MixtureOfDenoisingExperts.from_pretrained(str(model_copy / "unet"))
    _one_line_naming(err, weights)
    config = model_copy / "unet" / "config.json"
    config.write_text("{")
    with pytest.raises(ValueError, match="not valid JSON") as err:
        MixtureOfDenoisingExperts.from_pretrained(str(model_copy), subfolder="unet")
    _one_line_naming(err, config)


def test_damaged_detector_weights_and_checkpoint_are_named(tmp_path):
    import paddle

    from ernie_vilg2.knowledge.visual.detector import read_weights
    from ernie_vilg2.training.checkpoint import save_checkpoint
    from ernie_vilg2.training.detector.loop import CHECKPOINTS_DIR, resume_detector_training

    path = tmp_path / "detector.safetensors"
    save_file({"w": np.ones((64, 64), "float32")}, str(path), metadata={"meta": "{}"})
    _truncate(path)
    with pytest.raises(ValueError, match="truncated") as err:
        read_weights(str(path))
    _one_line_naming(err, path)
    folder = tmp_path / "run" / CHECKPOINTS_DIR
    step = save_checkpoint(str(folder), 1, {"w": paddle.ones([64, 64])}, {"m": paddle.zeros([64, 64])})
    _truncate(tmp_path / step / "model.safetensors")
    with pytest.raises(ValueError, match=r"model.safetensors: wrong size") as err:
        resume_detector_training(str(tmp_path / "run"), None, None, None)
    assert "--no-resume" in _one_line_naming(err, folder)


def test_damaged_training_checkpoint_is_named(tmp_path):
    import paddle

    from ernie_vilg2.training.checkpoint import load_checkpoint, save_checkpoint

    path = save_checkpoint(str(tmp_path), 1, {"w": paddle.ones([64, 64])}, {"m": paddle.zeros([64, 64])})
    weights = os.path.join(path, "model.safetensors")
    with open(weights, "r+b") as f:
        f.truncate(os.path.getsize(weights) - 8)
    with pytest.raises(ValueError, match="expected") as err:
        load_checkpoint(path)
    _one_line_naming(err, weights)


@pytest.mark.slow
def test_generate_cli_names_the_damaged_file(model_copy, tmp_path):
    path = model_copy / UNET_WEIGHTS
    _truncate(path)
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "generate.py"), "--model", str(model_copy), "--prompt", "猫",
         "--steps", "1", "--out", str(tmp_path / "g.png")],
        capture_output=True, text=True, env=ENV, timeout=300,
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and str(path) in last and "truncated" in last


@pytest.mark.parametrize("safetensors", [True, False])
def test_pretrained_text_encoder_loads_and_a_damaged_one_is_named(tmp_path, safetensors):
    from ernie_vilg2.models.text_encoder import build_text_encoder

    folder = tmp_path / "ernie"
    build_text_encoder(vocab_size=40, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=16, max_position_embeddings=8
                       ).save_pretrained(str(folder), safe_serialization=safetensors)
    loaded = build_text_encoder(vocab_size=42, pretrained=str(folder))  # grown by two added tokens
    assert loaded.config.vocab_size == 42 and loaded.config.hidden_size == 8
    weights = next(folder.glob("*.safetensors" if safetensors else "*.pdparams"))
    _truncate(weights)
    with pytest.raises(ValueError) as err:
        build_text_encoder(vocab_size=42, pretrained=str(folder))
    message = _one_line_naming(err, weights if safetensors else folder)
    assert str(weights) in message
