"""The tiny Stable-Diffusion-layout folder diffusers wrote (tests/fixtures/pretrained), diffusers'
outputs on fixed inputs, and copies of the folder to damage or convert."""
import os
import shutil

import numpy as np

from helpers.paths import FIXTURES, REPO_ROOT

PRETRAINED_DIR = os.path.join(FIXTURES, "pretrained")
TINY_SD = os.path.join(PRETRAINED_DIR, "tiny-sd")
TINY_PRETRAINED_YAML = os.path.join(REPO_ROOT, "configs", "tiny_pretrained.yaml")
# Float32 on both sides; what remains is the order of the sums (PyTorch vs Paddle kernels).
RTOL, ATOL = 1e-4, 1e-5


def diffusers_outputs():
    """The fixed inputs and what diffusers computed from them (make_fixture.py)."""
    with np.load(os.path.join(PRETRAINED_DIR, "outputs.npz")) as data:
        return dict(data)


def copy_of_tiny_sd(tmp_path, name="tiny-sd"):
    """A writable copy of the fixture folder."""
    return shutil.copytree(TINY_SD, os.path.join(str(tmp_path), name))


def unet_outputs(unet, data):
    import paddle

    with paddle.no_grad():
        return unet(paddle.to_tensor(data["unet_sample"]), paddle.to_tensor(data["unet_timesteps"]),
                    paddle.to_tensor(data["unet_context"])).sample.numpy()


def vae_outputs(vae, data):
    import paddle

    with paddle.no_grad():
        posterior = vae.encode(paddle.to_tensor(data["vae_pixels"])).latent_dist
        decoded = vae.decode(paddle.to_tensor(data["vae_latents"])).sample
    return {"vae_mean": posterior.mean.numpy(), "vae_std": posterior.std.numpy(), "vae_decoded": decoded.numpy()}


class _Payload:
    """Unpickling this creates ``marker``: proof that a pickle was (or was not) read."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write_pickle_weights(path, marker):
    """A PyTorch-format weights file (a zip holding ``archive/data.pkl``) whose unpickling creates ``marker``."""
    import pickle
    import zipfile

    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"conv_in.weight": _Payload(str(marker))}))


def pretrained_run_overrides(tmp_path, **extra):
    """configs/tiny_pretrained.yaml shrunk as tiny_overrides shrinks configs/tiny.yaml (the U-Net
    and VAE stay the fixture's): 2 experts, a 16-wide ERNIE (projected to the U-Net's 32)."""
    from helpers.training_runs import tiny_overrides

    extra = {"model.unet.pretrained": TINY_SD, "model.vae.pretrained": TINY_SD, **extra}  # wherever pytest runs
    return [o for o in tiny_overrides(tmp_path, **extra)
            if not o.startswith(("model.unet.block", "model.vae.block"))]
