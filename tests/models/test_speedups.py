"""The faster attention and layers are installed from outside the model (models/speedups.py):
the expert bank is plain, and every builder of a model that runs applies them."""
import json
import shutil

import paddle
import pytest
from ppdiffusers import UNet2DConditionModel
from ppdiffusers.models.activations import GEGLU
from ppdiffusers.models.lora import LoRACompatibleConv, LoRACompatibleLinear

from ernie_vilg2.models.attention_processor import FastAttnProcessor
from ernie_vilg2.models.expert_bank import MixtureOfDenoisingExperts
from ernie_vilg2.models.factory import build_denoiser
from ernie_vilg2.models.fast_layers import FastConv, FastConv2D, FastGEGLU, FastLinear
from ernie_vilg2.models.speedups import apply_speedups
from ernie_vilg2.pipelines import branch_pipeline, load_pipeline
from ernie_vilg2.pipelines.offload import ExpertOffload

FAST_LAYERS = {FastLinear, FastConv, FastConv2D, FastGEGLU}
STOCK_LAYERS = {LoRACompatibleLinear, LoRACompatibleConv, paddle.nn.Conv2D, GEGLU}


def _processors(model):
    experts = model.experts if isinstance(model, MixtureOfDenoisingExperts) else [model]
    return [p for e in experts for p in e.attn_processors.values()]


def _layer_kinds(model):
    return {type(m) for m in model.sublayers()}


def _fast(model) -> bool:
    procs = _processors(model)
    return bool(procs) and all(isinstance(p, FastAttnProcessor) for p in procs) \
        and FAST_LAYERS <= _layer_kinds(model) and not STOCK_LAYERS & _layer_kinds(model)


def test_the_bank_installs_nothing_on_itself(tiny_unet_kwargs):
    bank = MixtureOfDenoisingExperts(num_experts=1, unet=tiny_unet_kwargs)
    assert not any(isinstance(p, FastAttnProcessor) for p in _processors(bank))
    assert not FAST_LAYERS & _layer_kinds(bank)
    assert apply_speedups(bank) is bank and _fast(bank)
    assert not _fast(MixtureOfDenoisingExperts.branch(bank, 2))  # a new bank is plain again


def test_an_installed_emphasis_stays_and_the_layers_are_optional(tiny_unet_kwargs):
    unet = UNet2DConditionModel(**tiny_unet_kwargs)
    unet.set_attn_processor(FastAttnProcessor(w_t=0.3))
    apply_speedups(unet)
    assert all(p.w_t == 0.3 for p in _processors(unet)) and _fast(unet)
    plain_layers = apply_speedups(UNet2DConditionModel(**tiny_unet_kwargs), layers=False)
    assert all(type(p) is FastAttnProcessor for p in _processors(plain_layers))
    assert not FAST_LAYERS & _layer_kinds(plain_layers)


@pytest.mark.slow
def test_every_builder_of_a_running_model_applies_them(tiny_model_config, tiny_pipeline, tiny_pipeline_dir,
                                                       tmp_path):
    assert _fast(build_denoiser(tiny_model_config, 32, num_experts=2))
    assert _fast(tiny_pipeline.unet)  # build_pipeline
    assert _fast(load_pipeline(tiny_pipeline_dir).unet)
    assert _fast(branch_pipeline(tiny_pipeline, 2).unet)
    disk = load_pipeline(tiny_pipeline_dir, expert_offload="disk")
    assert _fast(disk.unet) and _fast(disk.expert_offload.slot)
    # A folder saved before the bank's module was renamed names the old module in its index.
    old = tmp_path / "old"
    shutil.copytree(tiny_pipeline_dir, old)
    index = json.loads((old / "model_index.json").read_text())
    assert index["unet"] == [MixtureOfDenoisingExperts.__module__, "MixtureOfDenoisingExperts"]
    index["unet"][0] = "ernie_vilg2.models.mode"
    (old / "model_index.json").write_text(json.dumps(index))
    assert _fast(load_pipeline(str(old)).unet)


def test_the_offload_slot_gets_the_layers_and_the_active_experts_processors(tiny_pipeline):
    pipe = branch_pipeline(tiny_pipeline, 2)
    pipe.unet.set_attn_processor(FastAttnProcessor(w_t=0.5))
    offload = ExpertOffload(pipe.unet, copy=True)
    try:
        offload.activate(1)
        assert _fast(offload.slot) and all(p.w_t == 0.5 for p in _processors(offload.slot))
    finally:
        offload.remove()
