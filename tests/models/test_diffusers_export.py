"""Experts written as diffusers-format U-Net folders (models/diffusers_export.py,
tools/export_diffusers.py) load back, with PPDiffusers' from_diffusers=True and with diffusers
itself (the peer virtualenv, when made), and compute what the experts compute."""
import json
import os
import subprocess

import numpy as np
import paddle
import pytest

from ernie_vilg2.models.diffusers_export import export_to_diffusers
from ernie_vilg2.models.expert_bank import MixtureOfDenoisingExperts
from ernie_vilg2.models.pretrained import load_pretrained_unet, load_pretrained_vae

from helpers.paths import REPO_ROOT
from helpers.pretrained_folders import ATOL, RTOL, TINY_SD, diffusers_outputs, unet_outputs

PEER_PYTHON = os.path.join(REPO_ROOT, ".venv-peer", "bin", "python")


@pytest.fixture(scope="module")
def bank():
    """Two experts branched from the fixture's U-Net, the second one changed."""
    bank = MixtureOfDenoisingExperts.from_unet(load_pretrained_unet(TINY_SD), num_experts=2)
    with paddle.no_grad():
        for p in bank.experts[1].parameters():
            p.set_value(p * 1.1)
    return bank.eval()


@pytest.fixture(scope="module")
def exported(bank, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("export") / "diffusers")
    export_to_diffusers(bank, out, vae=load_pretrained_vae(TINY_SD))
    return out


def test_layout_and_router_record(exported):
    with open(os.path.join(exported, "experts.json")) as f:
        record = json.load(f)
    assert record == {"num_experts": 2, "num_train_timesteps": 1000, "experts": [
        {"folder": "expert-00", "timesteps": [0, 500]}, {"folder": "expert-01", "timesteps": [500, 1000]}]}
    for folder in ("expert-00", "expert-01", "vae"):
        assert sorted(os.listdir(os.path.join(exported, folder))) == ["config.json",
                                                                       "diffusion_pytorch_model.safetensors"]


def test_round_trip_through_from_diffusers(bank, exported):
    from ppdiffusers import UNet2DConditionModel

    data = diffusers_outputs()
    outputs = [unet_outputs(e, data) for e in bank.experts]
    assert not np.allclose(outputs[0], outputs[1])  # two different experts, each in its own folder
    for i, expected in enumerate(outputs):
        loaded = UNet2DConditionModel.from_pretrained(os.path.join(exported, f"expert-{i:02d}"), from_diffusers=True)
        np.testing.assert_allclose(unet_outputs(loaded, data), expected, rtol=1e-6, atol=1e-6)


_PEER_SCRIPT = """
import json, sys
import numpy as np, torch
from diffusers import AutoencoderKL, UNet2DConditionModel
folder, data_path, out_path = sys.argv[1:]
d = dict(np.load(data_path))
out = {}
with torch.no_grad():
    for name in ("expert-00", "expert-01"):
        unet = UNet2DConditionModel.from_pretrained(f"{folder}/{name}").eval()
        out[name] = unet(torch.from_numpy(d["unet_sample"]), torch.from_numpy(d["unet_timesteps"]),
                         torch.from_numpy(d["unet_context"])).sample.numpy()
    vae = AutoencoderKL.from_pretrained(f"{folder}/vae").eval()
    out["vae_decoded"] = vae.decode(torch.from_numpy(d["vae_latents"])).sample.numpy()
np.savez(out_path, **out)
"""


@pytest.mark.skipif(not os.path.isfile(PEER_PYTHON), reason="no peer virtualenv (make .venv-peer/.installed)")
def test_diffusers_itself_loads_the_export(bank, exported, tmp_path):
    data = diffusers_outputs()
    out_path = str(tmp_path / "peer.npz")
    script = tmp_path / "peer.py"
    script.write_text(_PEER_SCRIPT)
    inputs = os.path.join(REPO_ROOT, "tests", "fixtures", "pretrained", "outputs.npz")
    result = subprocess.run([PEER_PYTHON, str(script), exported, inputs, out_path], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    peer = np.load(out_path)
    for i, expert in enumerate(bank.experts):
        np.testing.assert_allclose(peer[f"expert-{i:02d}"], unet_outputs(expert, data), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(peer["vae_decoded"], data["vae_decoded"], rtol=RTOL, atol=ATOL)


def test_a_partial_bank_is_refused(tmp_path):
    partial = MixtureOfDenoisingExperts.from_unet(load_pretrained_unet(TINY_SD), num_experts=2, expert_ids=[1])
    with pytest.raises(ValueError, match="holds experts \\[1\\] of 2"):
        export_to_diffusers(partial, str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")
