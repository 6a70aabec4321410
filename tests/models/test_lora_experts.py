"""LoRA experts: the adapter follows the timestep, a mixed batch equals row-by-row calls, the
merged bank equals base + adapter, only adapters train, recompute and save/load keep the function."""
from __future__ import annotations

import numpy as np
import paddle
import pytest
from ppdiffusers import UNet2DConditionModel

from ernie_vilg2.config import ConfigError
from ernie_vilg2.models.config import LoRAConfig, ModelConfig
from ernie_vilg2.models.expert_bank import MixtureOfDenoisingExperts
from ernie_vilg2.models.factory import branch_denoiser
from ernie_vilg2.models.lora_experts import LoRAExperts, find_targets
from ernie_vilg2.models.speedups import apply_speedups

T = 1000
N = 4


def _inputs(batch: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    sample = paddle.to_tensor(rng.standard_normal([batch, 4, 8, 8]).astype("float32"))
    context = paddle.to_tensor(rng.standard_normal([batch, 5, 32]).astype("float32"))
    return sample, context


def _trained_looking(bank: LoRAExperts, seed: int = 1) -> LoRAExperts:
    """Give every adapter distinct non-zero weights (fresh ones add nothing: up = 0)."""
    rng = np.random.default_rng(seed)
    for target in bank.target_names:
        for p in bank.adapters(target).parameters():
            p.set_value(paddle.to_tensor(0.2 * rng.standard_normal(p.shape).astype("float32")))
    return bank


@pytest.fixture()
def unet(tiny_unet_kwargs):
    paddle.seed(0)
    return UNet2DConditionModel(**tiny_unet_kwargs)


@pytest.fixture()
def lora_bank(unet):
    bank = _trained_looking(LoRAExperts.from_unet(unet, N, T, lora_rank=2, lora_alpha=4.0))
    bank.eval()
    return apply_speedups(bank)


def _run(model, sample, t, context):
    with paddle.no_grad():
        return model(sample, paddle.to_tensor(t, dtype="int64"), context).sample.numpy()


def test_fresh_bank_equals_its_unet_and_counts_few_parameters(unet):
    bank = apply_speedups(LoRAExperts.from_unet(unet, N, T, lora_rank=2))
    sample, context = _inputs(2)
    for t in (0, 999):
        np.testing.assert_allclose(_run(bank, sample, [t], context), _run(apply_speedups(unet), sample, [t], context),
                                   atol=1e-6)
    assert bank.target_names == find_targets(unet, ["to_q", "to_k", "to_v", "to_out.0"])
    assert all(name.endswith(("to_q", "to_k", "to_v", "to_out.0")) for name in bank.target_names)
    per_expert = sum(int(np.prod(unet.get_sublayer(t).weight.shape[:1])) * 2 +
                     int(unet.get_sublayer(t).weight.shape[1]) * 2 for t in bank.target_names)
    assert bank.adapter_parameters() == N * per_expert  # rank 2: (in + out) * 2 per target and expert


def test_the_adapter_follows_the_timestep(lora_bank):
    """Every t runs the base with the adapter of expert t * N // T: the merged expert of that id."""
    merged = apply_speedups(lora_bank.merge())
    merged.eval()
    sample, context = _inputs(2)
    outputs = {}
    for t in (0, 249, 250, 600, 999):
        expected = _run(merged.experts[t * N // T], sample, [t], context)
        outputs[t] = _run(lora_bank, sample, [t], context)
        np.testing.assert_allclose(outputs[t], expected, atol=2e-5)
    assert not np.allclose(outputs[249], _run(lora_bank.base, sample, [249], context), atol=1e-3)  # adapter used


def test_mixed_batch_equals_row_by_row(lora_bank):
    """Training batches mix timesteps: each row gets its expert's adapter in one base pass."""
    sample, context = _inputs(5)
    timesteps = [999, 10, 260, 10, 740]
    batched = _run(lora_bank, sample, timesteps, context)
    for b, t in enumerate(timesteps):
        single = _run(lora_bank, sample[b:b + 1], [t], context[b:b + 1])
        np.testing.assert_allclose(batched[b:b + 1], single, atol=2e-5)


def test_merged_weights_are_base_plus_scaled_adapter(lora_bank):
    merged = lora_bank.merge()
    assert isinstance(merged, MixtureOfDenoisingExperts) and merged.num_experts == N
    target = lora_bank.target_names[0]
    base = lora_bank.base.get_sublayer(target).weight.numpy()
    for e in range(N):
        adapter = lora_bank.adapters(target)[e]
        expected = base + (4.0 / 2) * adapter.down.weight.numpy() @ adapter.up.weight.numpy()
        np.testing.assert_allclose(merged.experts[e].get_sublayer(target).weight.numpy(), expected, rtol=1e-6,
                                   atol=1e-7)
    untouched = "conv_in.weight"
    assert np.array_equal(merged.experts[3].state_dict()[untouched].numpy(),
                          lora_bank.base.state_dict()[untouched].numpy())


def test_only_the_adapters_of_the_experts_in_the_batch_get_gradients(unet):
    bank = apply_speedups(_trained_looking(LoRAExperts.from_unet(unet, N, T, lora_rank=2)))
    trainable = [n for n, p in bank.named_parameters() if not p.stop_gradient]
    assert trainable == [n for n, _ in bank.named_parameters() if ".lora_experts." in n]
    sample, context = _inputs(3)
    bank(sample, paddle.to_tensor([10, 600, 620]), context).sample.square().mean().backward()
    target = bank.target_names[0]
    adapters = bank.adapters(target)
    assert [adapters[e].down.weight.grad is not None for e in range(N)] == [True, False, True, False]
    assert bank.base.get_sublayer(target).weight.grad is None


def test_gradient_checkpointing_keeps_the_gradients(unet):
    grads = []
    for recompute in (False, True):
        bank = apply_speedups(_trained_looking(LoRAExperts.from_unet(unet, N, T, lora_rank=2)))
        bank.train()
        if recompute:
            bank.enable_gradient_checkpointing()
        sample, context = _inputs(3)
        bank(sample, paddle.to_tensor([10, 600, 999]), context).sample.square().mean().backward()
        adapters = bank.adapters(bank.target_names[-1])
        grads.append(np.concatenate([adapters[e].up.weight.grad.numpy().ravel() for e in (0, 2, 3)]))
    np.testing.assert_allclose(grads[1], grads[0], rtol=1e-4, atol=1e-7)


def test_save_and_load_keep_the_bank(lora_bank, tmp_path):
    lora_bank.save_pretrained(str(tmp_path / "unet"))
    loaded = apply_speedups(LoRAExperts.from_pretrained(str(tmp_path / "unet")))
    loaded.eval()
    assert loaded.config.lora_rank == 2 and loaded.config.lora_alpha == 4.0
    sample, context = _inputs(3)
    np.testing.assert_array_equal(_run(loaded, sample, [10, 500, 990], context),
                                  _run(lora_bank, sample, [10, 500, 990], context))


@pytest.mark.parametrize("targets, message", [
    (["to_z"], "'to_z' names no layer"),
    (["conv1"], "LoRA experts adapt linear layers"),
    (["ff.net.0.proj"], "in a GEGLU"),
])
def test_targets_that_are_not_linear_layers_are_refused(unet, targets, message):
    with pytest.raises(ValueError, match=message):
        LoRAExperts.from_unet(unet, N, T, lora_targets=targets)


def test_config_names_the_lora_fields(unet):
    with pytest.raises(ConfigError, match="model.expert_type"):
        ModelConfig(expert_type="moe")
    with pytest.raises(ConfigError, match="model.lora.rank"):
        LoRAConfig(rank=0)
    with pytest.raises(ConfigError, match="model.lora.alpha"):
        LoRAConfig(alpha=-1.0)
    with pytest.raises(ConfigError, match="model.lora.targets"):
        LoRAConfig(targets=[])
    cfg = ModelConfig(num_experts=N, expert_type="lora", lora=LoRAConfig(targets=["attn9"]))
    with pytest.raises(ConfigError, match=r"'model\.lora\.targets': 'attn9' names no layer"):
        branch_denoiser(cfg, unet, N, expert_type="lora")


def test_branch_denoiser_places_boundaries_for_lora_as_for_full(unet):
    cfg = ModelConfig(num_experts=N, expert_type="lora", expert_boundaries="snr")
    lora = branch_denoiser(cfg, unet, N, expert_type="lora")
    full = branch_denoiser(cfg, unet, N)
    assert isinstance(lora, LoRAExperts) and lora.router.boundaries == full.router.boundaries != [250, 500, 750]
