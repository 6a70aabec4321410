"""Expert offload and model CPU offload of ErnieViLG2Pipeline: the same images as sampling
with every expert in memory, one expert resident at a time, at most N - 1 switches per
run, and clear errors for what offloading cannot do."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import paddle
import pytest

from ernie_vilg2.models.attention_processor import FastAttnProcessor
from ernie_vilg2.models.factory import build_sampler
from ernie_vilg2.pipelines import ErnieViLG2Pipeline
from ernie_vilg2.pipelines.offload import ExpertOffload, ModelCpuOffload
from ernie_vilg2.utils.integrity import DamagedFileError

pytestmark = pytest.mark.slow  # every test here trains, samples or exports a tiny model

N = 4  # experts of the tiny bank (tiny_mode_pipeline)
STEPS = 6  # enough for every expert: DDIM 833..0 and DPM-Solver++ 999..166 cover all four stages
PROMPTS = ["红苹果", "a blue heart"]


@pytest.fixture(scope="module")
def bank_dir(tiny_mode_pipeline, tmp_path_factory):
    path = tmp_path_factory.mktemp("offload") / "bank"
    tiny_mode_pipeline.save_pretrained(str(path))
    return str(path)


def _with_sampler(pipe, name):
    new = ErnieViLG2Pipeline(**{**pipe.components, "scheduler": build_sampler(name, dict(pipe.scheduler.config))})
    new.set_progress_bar_config(disable=True)
    return new


def _load(folder, sampler="ddim", **kwargs):
    return _with_sampler(ErnieViLG2Pipeline.from_pretrained(folder, **kwargs), sampler)


def _images(pipe, steps=STEPS, **kwargs):
    return pipe(PROMPTS, num_inference_steps=steps, guidance_scale=3.0, seed=7, output_type="np", **kwargs).images


@pytest.fixture(scope="module")
def reference(bank_dir):
    """The bank loaded with every expert in memory. Read-only."""
    return _load(bank_dir)


def _routed(pipe):
    """The expert of each step of the last run: t * N // T, computed here from the timesteps."""
    return [int(t) * N // 1000 for t in pipe.scheduler.timesteps]


def _is_loaded(layer) -> bool:
    return any(p._is_initialized() for p in layer.parameters())


@pytest.mark.parametrize("offload", ["disk", "cpu"])
@pytest.mark.parametrize("sampler", ["ddim", "dpm"])
def test_offloaded_sampling_gives_the_in_memory_images(bank_dir, reference, sampler, offload):
    expected = _images(_with_sampler(reference, sampler))
    pipe = _load(bank_dir, sampler, expert_offload=offload)
    # Exact: the same weights run the same kernels; only where they are kept differs.
    np.testing.assert_array_equal(_images(pipe), expected)
    run = pipe.expert_offload.run
    assert run.experts == (3, 2, 1, 0) and run.switches == N - 1
    assert run.loads == (N if offload == "disk" else 0)  # "cpu" on a CPU: nothing to copy


def test_a_run_reads_each_expert_once_and_switches_at_most_n_minus_1_times(bank_dir, monkeypatch):
    pipe = _load(bank_dir, "ddim", expert_offload="disk")
    weights = pipe.expert_offload.weights
    reads, read = [], weights.tensors
    monkeypatch.setattr(weights, "tensors", lambda index, names: (reads.append(index), read(index, names))[1])
    for sampler, steps in (("ddim", 50), ("dpm", 25), ("ddim", 50)):
        reads.clear()
        _images(_with_sampler(pipe, sampler), steps=steps)
        run = pipe.expert_offload.run
        assert reads == [3, 2, 1, 0], (sampler, steps)
        assert run.experts == (3, 2, 1, 0) and run.switches == N - 1 and run.loads == N
    # One DDIM step runs at t = 0: expert 0, still loaded from the last run.
    reads.clear()
    _images(pipe, steps=1)
    assert reads == [] and pipe.expert_offload.run.experts == (0,) and pipe.expert_offload.run.switches == 0


def test_disk_offload_keeps_only_the_active_expert_in_memory(bank_dir, reference):
    pipe = _load(bank_dir, expert_offload="disk")
    offload = pipe.expert_offload
    per_expert = sum(math.prod(p.shape) for p in reference.unet.experts[0].parameters())
    assert not any(_is_loaded(e) for e in pipe.unet.experts)  # nothing until sampling needs it
    seen = []

    def check(step, t, latents):
        active = offload.active
        assert [i for i, e in enumerate(pipe.unet.experts) if _is_loaded(e)] == [active]
        assert pipe.unet.experts[active] is offload.slot
        assert not any(_is_loaded(e) for e in offload.experts)  # the stand-ins never get storage
        resident = sum(math.prod(p.shape) for p in pipe.unet.parameters() if p._is_initialized())
        assert resident == per_expert
        for name, value in reference.unet.experts[active].state_dict().items():
            np.testing.assert_array_equal(offload.slot.state_dict()[name].numpy(), value.numpy(), err_msg=name)
        seen.append(active)

    _images(pipe, callback=check)
    assert seen == _routed(pipe) and sorted(set(seen)) == list(range(N))


def test_cpu_offload_copy_path_moves_one_expert_and_saves_the_bank(bank_dir, reference, tmp_path):
    """The GPU path (a device copy of the active expert in the slot), forced on a CPU."""
    pipe = _load(bank_dir)
    originals = list(pipe.unet.experts)
    pipe._start_expert_offload(ExpertOffload(pipe.unet, copy=True))
    offload = pipe.expert_offload
    seen = []

    def check(step, t, latents):
        active = offload.active
        assert pipe.unet.experts[active] is offload.slot
        assert [pipe.unet.experts[i] for i in range(N) if i != active] == [e for i, e in enumerate(originals)
                                                                          if i != active]
        host = originals[active].conv_in.weight
        assert offload.slot.conv_in.weight.data_ptr() != host.data_ptr()  # a copy, not the host tensor
        np.testing.assert_array_equal(offload.slot.conv_in.weight.numpy(), host.numpy())
        seen.append(active)

    np.testing.assert_array_equal(_images(pipe, callback=check), _images(reference))
    assert seen == _routed(pipe) and offload.run.loads == N
    # The slot stands at the active expert's place, so the saved bank is the original one.
    pipe.save_pretrained(str(tmp_path / "saved"))
    np.testing.assert_array_equal(_images(_load(str(tmp_path / "saved"))), _images(reference))
    pipe.disable_expert_offload()
    assert pipe.expert_offload is None
    # The last active expert stays in its device copy (the slot); the others are the originals.
    assert pipe.unet.experts[0] is offload.slot and list(pipe.unet.experts)[1:] == originals[1:]
    np.testing.assert_array_equal(_images(pipe), _images(reference))


def test_disable_disk_offload_reads_every_expert(bank_dir, reference):
    pipe = _load(bank_dir, expert_offload="disk")
    _images(pipe, steps=1)  # expert 0 in the slot
    pipe.disable_expert_offload()
    assert pipe.expert_offload is None and all(_is_loaded(e) for e in pipe.unet.experts)
    for mine, theirs in zip(pipe.unet.experts, reference.unet.experts):
        for name, value in theirs.state_dict().items():
            np.testing.assert_array_equal(mine.state_dict()[name].numpy(), value.numpy(), err_msg=name)
    # Several experts in one call work again (training-style routing).
    sample = paddle.to_tensor(np.random.default_rng(0).standard_normal((2, 4, 8, 8)).astype("float32"))
    context = reference.encode_prompt(PROMPTS)
    t = paddle.to_tensor([10, 990])
    np.testing.assert_array_equal(pipe.unet(sample, t, context).sample.numpy(),
                                  reference.unet(sample, t, context).sample.numpy())


def test_keyword_emphasis_reaches_the_loaded_expert(bank_dir, reference):
    mask = np.zeros((len(PROMPTS), reference.max_length), dtype="float32")
    mask[:, 1:3] = 1.0
    pipe = _load(bank_dir, expert_offload="disk")
    plain = _images(pipe, key_token_mask=mask)
    pipe.unet.set_attn_processor(FastAttnProcessor(0.5))
    emphasised = _images(pipe, key_token_mask=mask)
    memory = _load(bank_dir)
    memory.unet.set_attn_processor(FastAttnProcessor(0.5))
    np.testing.assert_array_equal(emphasised, _images(memory, key_token_mask=mask))
    assert np.abs(emphasised - plain).max() > 1e-4


@pytest.mark.parametrize("expert_offload", [None, "disk"])
def test_model_cpu_offload_moves_each_model_in_turn_and_keeps_the_images(bank_dir, reference, expert_offload,
                                                                         monkeypatch):
    pipe = _load(bank_dir, expert_offload=expert_offload)
    pipe.enable_model_cpu_offload()
    onloaded, onload = [], ModelCpuOffload.onload
    monkeypatch.setattr(ModelCpuOffload, "onload", lambda self, name: (onloaded.append(name), onload(self, name))[1])
    np.testing.assert_array_equal(_images(pipe), _images(reference))
    assert onloaded == ["text_encoder", "unet", "vae"]


def test_bad_use_gives_clear_errors(bank_dir, reference, tmp_path):
    with pytest.raises(ValueError, match="expert_offload must be one of"):
        ErnieViLG2Pipeline.from_pretrained(bank_dir, expert_offload="gpu")
    with pytest.raises(ValueError, match="expert_offload needs a local pipeline folder"):
        ErnieViLG2Pipeline.from_pretrained(str(tmp_path / "nowhere"), expert_offload="disk")
    memory = _load(bank_dir)
    with pytest.raises(ValueError, match=r"from_pretrained\(folder, expert_offload='disk'\)"):
        memory.enable_expert_offload("disk")
    with pytest.raises(ValueError, match="offload must be one of"):
        memory.enable_expert_offload("gpu")

    pipe = _load(bank_dir, expert_offload="disk")
    with pytest.raises(ValueError, match="disable_expert_offload"):
        pipe.enable_expert_offload("cpu")
    with pytest.raises(ValueError, match="disable_expert_offload"):
        pipe.to("cpu")
    with pytest.raises(ValueError, match="not in memory"):
        pipe.save_pretrained(str(tmp_path / "copy"))
    assert not (tmp_path / "copy").exists()
    sample = paddle.zeros([2, 4, 8, 8])
    context = reference.encode_prompt(PROMPTS)
    with pytest.raises(RuntimeError, match=r"one expert at a time.*experts \[0, 3\]"):
        pipe.unet(sample, paddle.to_tensor([10, 990]), context)
    with pytest.raises(RuntimeError, match="this expert is offloaded"):
        pipe.unet.experts[2](sample, paddle.to_tensor(500), context)
    pipe.enable_expert_offload("disk")  # already on: nothing to do
    assert pipe.expert_offload.offload == "disk"


def test_disk_offload_names_a_weight_file_without_the_experts(make_tiny_pipeline, tmp_path):
    make_tiny_pipeline(num_experts=2, seed=3).save_pretrained(str(tmp_path))
    config_path = tmp_path / "unet" / "config.json"
    config = json.loads(config_path.read_text())
    config["num_experts"] = 4  # the config promises experts the weights do not have
    config_path.write_text(json.dumps(config))
    with pytest.raises(DamagedFileError) as info:
        ErnieViLG2Pipeline.from_pretrained(str(tmp_path), expert_offload="disk")
    message = str(info.value)
    assert os.path.join("unet", "diffusion_paddle_model.safetensors") in message and "'experts.2." in message


def test_generate_cli_with_expert_offload_writes_the_same_grid(bank_dir, tmp_path):
    import subprocess
    import sys

    from PIL import Image

    from helpers.paths import REPO_ROOT

    grids = []
    for offload in ([], ["--expert-offload", "disk"]):
        out = tmp_path / f"grid{len(grids)}.png"
        proc = subprocess.run(
            [sys.executable, os.path.join(REPO_ROOT, "tools", "generate.py"), "--model", bank_dir, "--prompt", "红苹果",
             "--prompt", "a blue heart", "--steps", "4", "--seed", "0", "--out", str(out), *offload],
            cwd=REPO_ROOT, env={**os.environ, "GLOG_minloglevel": "2"}, capture_output=True, text=True, timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        grids.append(np.asarray(Image.open(out)))
    np.testing.assert_array_equal(grids[0], grids[1])
