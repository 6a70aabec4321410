"""Mixture of denoising experts: routing, one expert per sampling step, N=1 baseline,
branching, stage-2 updates and serialisation."""
from __future__ import annotations

import os

import numpy as np
import paddle
import pytest
from ppdiffusers import UNet2DConditionModel

from ernie_vilg2.config import ConfigError
from ernie_vilg2.models.config import ModelConfig
from ernie_vilg2.models.expert_bank import MixtureOfDenoisingExperts, TimestepRouter
from ernie_vilg2.models.factory import build_sampler
from ernie_vilg2.models.speedups import apply_speedups
from ernie_vilg2.pipelines import ErnieViLG2Pipeline, branch_pipeline

T = 1000
CONTEXT_LEN = 5  # tokens of a random text context


def _state(model) -> dict:
    return {k: v.numpy().copy() for k, v in model.state_dict().items()}


def _assert_same_state(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k


def _changed(before: dict, after: dict) -> bool:
    return any(not np.array_equal(before[k], after[k]) for k in before)


def _inputs(batch: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    sample = paddle.to_tensor(rng.standard_normal([batch, 4, 8, 8]).astype("float32"))
    context = paddle.to_tensor(rng.standard_normal([batch, CONTEXT_LEN, 32]).astype("float32"))
    return sample, context


# -- router ---------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 4, 5, 10])
def test_router_maps_every_timestep(n):
    router = TimestepRouter(n, T)
    expected = [t * n // T for t in range(T)]
    assert [router.expert_index(t) for t in range(T)] == expected
    as_tensor = router.expert_index(paddle.arange(T, dtype="int64"))
    assert as_tensor.numpy().tolist() == expected

    # stages are equal, contiguous and together cover 0..T-1 exactly once
    covered = []
    for e in range(n):
        lo, hi = router.stage(e)
        assert hi - lo == T // n
        assert all(router.expert_index(t) == e for t in (lo, hi - 1))
        covered.extend(range(lo, hi))
    assert covered == list(range(T))
    with pytest.raises(IndexError):
        router.stage(n)


@pytest.mark.parametrize("n", [3, 7, 0])
def test_router_rejects_experts_not_dividing_t(n):
    with pytest.raises(ValueError, match="num_experts"):
        TimestepRouter(n, T)


def test_model_config_rejects_experts_not_dividing_t():
    with pytest.raises(ConfigError, match="model.num_experts") as info:
        ModelConfig(num_experts=3)
    assert info.value.field == "model.num_experts"


# -- sampling: one expert per step ------------------------------------------------------
@pytest.mark.parametrize("sampler,guidance", [("ddim", 3.0), ("dpm", 3.0), ("ddim", 1.0)])
def test_sampling_runs_exactly_the_routed_expert_once_per_step(tiny_mode_pipeline, sampler, guidance):
    base = tiny_mode_pipeline
    pipe = ErnieViLG2Pipeline(**{**base.components, "scheduler": build_sampler(sampler, dict(base.scheduler.config))})
    pipe.set_progress_bar_config(disable=True)
    n = pipe.unet.num_experts
    calls = []  # (expert index, timestep, batch size)

    def recorder(index):
        def hook(layer, inputs):
            sample, timestep = inputs[0], inputs[1]
            calls.append((index, int(paddle.to_tensor(timestep).reshape([-1])[0]), sample.shape[0]))

        return hook

    handles = [e.register_forward_pre_hook(recorder(i)) for i, e in enumerate(pipe.unet.experts)]
    try:
        steps = 4
        pipe(["红苹果", "a blue heart"], num_inference_steps=steps, guidance_scale=guidance, seed=0, output_type="np")
    finally:
        for h in handles:
            h.remove()

    timesteps = [int(t) for t in pipe.scheduler.timesteps]
    assert len(timesteps) == steps
    assert len(calls) == steps, f"expected one expert call per step, got {calls}"
    batch = 2 * 2 if guidance != 1.0 else 2  # CFG doubles the batch inside the single call
    for (expert, t, b), step_t in zip(calls, timesteps):
        assert t == step_t
        assert expert == step_t * n // T
        assert b == batch
    # 4 steps spread over 0..999 reach at least 3 of the 4 experts: the check above is not vacuous.
    assert len({c[0] for c in calls}) >= n - 1


# -- equivalences -----------------------------------------------------------------------
def test_single_expert_equals_plain_unet(tiny_unet_kwargs):
    paddle.seed(1)
    unet = apply_speedups(UNet2DConditionModel(**tiny_unet_kwargs))  # what every expert carries
    unet.eval()
    mode = apply_speedups(MixtureOfDenoisingExperts.from_unet(unet, 1, T))
    mode.eval()
    assert mode.num_experts == 1
    sample, context = _inputs(3)
    for timestep in (paddle.to_tensor(500), paddle.to_tensor([999]), paddle.to_tensor([0, 420, 999])):
        ref = unet(sample, timestep, context).sample
        out = mode(sample, timestep, context).sample
        assert np.array_equal(out.numpy(), ref.numpy())
    # an int timestep (as some schedulers pass) works too
    ref = unet(sample, paddle.to_tensor(7), context).sample
    assert np.array_equal(mode(sample, 7, context).sample.numpy(), ref.numpy())


@pytest.mark.slow
def test_batch_routing_equals_per_sample_calls(tiny_unet_kwargs):
    paddle.seed(2)
    mode = MixtureOfDenoisingExperts(num_experts=4, num_train_timesteps=T, unet=tiny_unet_kwargs)
    mode.eval()
    timesteps = [0, 999, 249, 250, 499, 500, 749, 750, 333]  # every stage boundary
    sample, context = _inputs(len(timesteps), seed=3)
    t = paddle.to_tensor(timesteps, dtype="int64")
    batched = mode(sample, t, context).sample.numpy()
    for i, ti in enumerate(timesteps):
        ref = mode.experts[ti * 4 // T](sample[i : i + 1], t[i : i + 1], context[i : i + 1]).sample.numpy()
        np.testing.assert_allclose(batched[i : i + 1], ref, atol=1e-5, rtol=0)
        # The experts really differ, so a mis-routed row would fail the check above.
        other = mode.experts[(ti * 4 // T + 1) % 4](sample[i : i + 1], t[i : i + 1], context[i : i + 1]).sample
        assert np.abs(other.numpy() - ref).max() > 1e-3


# -- branching and stage 2 -----------------------------------------------------------------
@pytest.mark.slow
def test_branch_copies_stage1_unet_into_independent_experts(tiny_unet_kwargs):
    paddle.seed(4)
    stage1 = MixtureOfDenoisingExperts(num_experts=1, num_train_timesteps=T, unet=tiny_unet_kwargs)
    source = _state(stage1.experts[0])
    branched = MixtureOfDenoisingExperts.branch(stage1, 5)
    assert branched.num_experts == 5 and branched.router.num_experts == 5
    for expert in branched.experts:
        _assert_same_state(_state(expert), source)
    # copies, not shared parameters: changing one expert leaves the others and the source alone
    w = branched.experts[0].conv_in.weight
    w.set_value(w + 1.0)
    _assert_same_state(_state(branched.experts[1]), source)
    _assert_same_state(_state(stage1.experts[0]), source)

    via_unet = MixtureOfDenoisingExperts.from_unet(stage1.experts[0], 2, T)
    for expert in via_unet.experts:
        _assert_same_state(_state(expert), source)
    with pytest.raises(ValueError, match="single-expert"):
        MixtureOfDenoisingExperts.branch(branched, 2)


def test_branch_pipeline_shares_other_components(tiny_pipeline, tiny_mode_pipeline):
    branched = branch_pipeline(tiny_pipeline, 2)
    assert tiny_pipeline.unet.num_experts == 1  # the source is untouched
    for name in ("vae", "text_encoder", "tokenizer", "scheduler"):
        assert getattr(branched, name) is getattr(tiny_pipeline, name)
    source = _state(tiny_pipeline.unet.experts[0])
    for expert in branched.unet.experts:
        _assert_same_state(_state(expert), source)
    with pytest.raises(ValueError, match="1 expert"):
        branch_pipeline(tiny_mode_pipeline, 2)
    with pytest.raises(ValueError, match="num_experts"):
        branch_pipeline(tiny_pipeline, 3)


@pytest.mark.slow
def test_stage2_step_changes_only_the_routed_experts(tiny_unet_kwargs):
    """One AdamW step on a batch from stages {0, 3} of 5 leaves experts 1, 2, 4 bit-identical.

    Experts that no sample routed to get no gradient (None), and Paddle's optimizers
    skip such parameters. Between steps the training loop must clear gradients with
    ``clear_grad(set_to_zero=False)``: the default ``set_to_zero=True`` leaves zero
    gradients that let AdamW's momentum and weight decay move idle experts.
    """
    paddle.seed(5)
    stage1 = MixtureOfDenoisingExperts(num_experts=1, num_train_timesteps=T, unet=tiny_unet_kwargs)
    model = MixtureOfDenoisingExperts.branch(stage1, 5)  # stages of 200 timesteps
    model.train()
    opt = paddle.optimizer.AdamW(learning_rate=1e-3, parameters=model.parameters(), weight_decay=0.01)

    def step(timesteps, seed):
        sample, context = _inputs(len(timesteps), seed)
        target = paddle.to_tensor(np.random.default_rng(seed + 100).standard_normal(sample.shape).astype("float32"))
        before = [_state(e) for e in model.experts]
        out = model(sample, paddle.to_tensor(timesteps, dtype="int64"), context).sample
        paddle.nn.functional.mse_loss(out, target).backward()
        opt.step()
        opt.clear_grad(set_to_zero=False)
        return [i for i, e in enumerate(model.experts) if _changed(before[i], _state(e))]

    assert step([10, 650, 799, 150], seed=6) == [0, 3]
    # Second step: momentum from step 1 must not leak into experts 0 and 3.
    assert step([400, 599], seed=7) == [2]


# -- serialisation ------------------------------------------------------------------------
@pytest.mark.slow
def test_mode_save_and_load_round_trip(tiny_unet_kwargs, tmp_path):
    paddle.seed(8)
    mode = MixtureOfDenoisingExperts(num_experts=2, num_train_timesteps=T, unet=tiny_unet_kwargs)
    mode.eval()
    mode.save_pretrained(str(tmp_path))
    files = os.listdir(tmp_path)
    assert "config.json" in files and any(f.endswith(".safetensors") for f in files), files
    loaded = MixtureOfDenoisingExperts.from_pretrained(str(tmp_path))
    loaded.eval()
    assert loaded.num_experts == 2 and loaded.config.num_train_timesteps == T
    _assert_same_state(_state(loaded), _state(mode))
    sample, context = _inputs(2)
    t = paddle.to_tensor([100, 900], dtype="int64")
    assert np.array_equal(loaded(sample, t, context).sample.numpy(), mode(sample, t, context).sample.numpy())
