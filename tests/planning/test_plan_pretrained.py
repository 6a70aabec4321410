"""The memory plan of a config that starts from a pretrained folder counts the folder's U-Net
(its architecture built under LazyGuard, no weights read) and the text encoder's projection."""
from ernie_vilg2.models.pretrained import load_pretrained_unet
from ernie_vilg2.planning.memory_plan import measure_models
from ernie_vilg2.training.config import load_config

from helpers.pretrained_folders import TINY_PRETRAINED_YAML, TINY_SD


def test_the_plan_counts_the_pretrained_unet_and_the_projection(monkeypatch):
    from ernie_vilg2.models import factory

    expected = sum(p.size for p in load_pretrained_unet(TINY_SD).parameters())
    cfg = load_config(TINY_PRETRAINED_YAML, [f"model.unet.pretrained={TINY_SD}", f"model.vae.pretrained={TINY_SD}"])

    def unread(path):
        raise AssertionError("the plan read the pretrained weights (gigabytes for Stable Diffusion)")

    monkeypatch.setattr(factory, "load_pretrained_unet", unread)
    sizes = measure_models(cfg)
    assert sizes.expert == expected
    assert sizes.text_config.context_dim == 32  # ERNIE's 64 projected to the U-Net's 32
