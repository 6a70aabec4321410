"""The memory plan of LoRA experts (model.expert_type: lora): the adapters counted from the lazily
built U-Net equal a really built bank's, the experts stage holds the frozen base U-Net and trains
only the adapters (exact bytes against full experts), expert groups are refused and not
suggested, and the 24B config plans with LoRA experts."""
import json
import os
import subprocess
import sys

import pytest

from helpers.paths import REPO_ROOT, TINY_YAML, TOOL_ENV

PLAN = os.path.join(REPO_ROOT, "tools", "plan.py")
CONFIG_24B = os.path.join(REPO_ROOT, "configs", "ernie_vilg2_24b.yaml")
LORA = ["model.expert_type=lora"]


def _numel(layer) -> int:
    return sum(int(p.numel()) for p in layer.parameters())


def _run_plan(*args, timeout=300):
    return subprocess.run([sys.executable, PLAN, *args], capture_output=True, text=True, env=TOOL_ENV, timeout=timeout)


@pytest.mark.parametrize("settings", [
    [],  # tiny.yaml's: rank 4 on to_q, to_k, to_v, to_out.0
    ["model.lora.rank=3", "model.lora.alpha=6", "model.lora.targets=[attn2.to_k,ff.net.2]"],
])
def test_adapter_count_equals_the_built_banks(settings):
    from ernie_vilg2.models.factory import build_denoiser
    from ernie_vilg2.planning.memory_plan import measure_models
    from ernie_vilg2.training.config import load_config

    cfg = load_config(TINY_YAML, LORA + settings)
    sizes = measure_models(cfg)
    bank = build_denoiser(cfg.model, cfg.data.resolution, num_experts=cfg.model.num_experts, expert_type="lora")
    assert sizes.adapters == bank.adapter_parameters() > 0
    assert sizes.adapters == sizes.adapter_set * 10 and sizes.lora_layers == bank.target_names
    assert sizes.experts == _numel(bank)  # the base U-Net and every adapter


def test_tiny_adapters_by_hand():
    """tiny.yaml: transformer blocks of width C = 32 (3) and 64 (1), text width D = 64; rank r
    adapters on q, k, v, out of self- and cross-attention: 8rC + 4rC + 2r(D + C) per block."""
    from ernie_vilg2.planning.memory_plan import measure_models
    from ernie_vilg2.training.config import load_config

    r, d = 4, 64
    per_block = {c: 14 * r * c + 2 * r * d for c in (32, 64)}
    sizes = measure_models(load_config(TINY_YAML, LORA))
    assert sizes.adapter_set == 3 * per_block[32] + per_block[64] == 11_008
    assert len(sizes.lora_layers) == 4 * 8


def test_a_target_that_names_no_linear_layer_is_a_config_error():
    from ernie_vilg2.config import ConfigError
    from ernie_vilg2.planning.memory_plan import measure_models
    from ernie_vilg2.training.config import load_config

    with pytest.raises(ConfigError, match="model.lora.targets") as err:
        measure_models(load_config(TINY_YAML, LORA + ["model.lora.targets=[conv1]"]))
    assert "\n" not in str(err.value)


@pytest.fixture(scope="module")
def tiny_models():
    from ernie_vilg2.planning.memory_plan import measure_models
    from ernie_vilg2.training.config import load_config

    full, lora = load_config(TINY_YAML), load_config(TINY_YAML, LORA)
    return full, measure_models(full), lora, measure_models(lora)


@pytest.mark.parametrize("sharding", [0, 1, 3])
def test_experts_stage_bytes_of_lora_and_full_experts(tiny_models, sharding):
    """N = 10, fp32 (4 bytes a weight or gradient, 8 of AdamW state), 2 ranks: full experts hold
    10 U-Nets and step one; LoRA experts hold the frozen base whole and 10 adapter sets, step one
    set, and keep the activations of one U-Net."""
    from ernie_vilg2.planning.memory_plan import default_layout, plan_stage

    full_cfg, full, lora_cfg, lora = tiny_models
    e, a = full.expert, lora.adapters
    assert lora.expert == e and a == 110_080 and full.num_experts == lora.num_experts == 10
    frozen = full.text_encoder + full.vae  # experts stage: text encoder frozen
    split = [2 if sharding >= k else 1 for k in (1, 2, 3)]
    layout = default_layout(full_cfg, gpus=2, gpu_mem_gib=16, sharding_stage=sharding)
    f = plan_stage(full, full_cfg, layout, "experts")
    lo = plan_stage(lora, lora_cfg, layout, "experts")
    assert (f.params, f.grads, f.optimizer) == (10 * e * 4 / split[2] + frozen * 4, e * 4 / split[1],
                                                10 * e * 8 / split[0])
    assert (lo.params, lo.grads, lo.optimizer) == (a * 4 / split[2] + (e + frozen) * 4, a / 10 * 4 / split[1],
                                                   a * 8 / split[0])
    assert lo.activations == f.activations > 0
    assert (lo.experts_held, lo.experts_stepped, lo.adapter_sets_held, lo.adapter_sets_stepped) == (1, 0, 10, 1)
    assert lo.trained_parameters == a
    assert plan_stage(lora, lora_cfg, layout, "base").total == plan_stage(full, full_cfg, layout, "base").total


def test_lora_experts_are_never_suggested_expert_groups(tiny_models):
    """Full experts that do not fit get --expert-groups; LoRA experts get a line saying groups do
    not apply, and a smaller micro batch, which makes the stage fit."""
    from ernie_vilg2.planning.memory_plan import build_plan, default_layout, fits, format_plan, plan_stage

    full_cfg, full, lora_cfg, lora = tiny_models
    full_layout = default_layout(full_cfg, gpus=2, gpu_mem_gib=0.08)
    suggestions = build_plan(full_cfg, full_layout, models=full).stages["experts"].suggestions
    assert any(s.startswith("--expert-groups") for s in suggestions), suggestions

    layout = default_layout(lora_cfg, gpus=2, gpu_mem_gib=0.02)
    plan = build_plan(lora_cfg, layout, models=lora)
    stage = plan.stages["experts"]
    assert not fits(stage, layout) and not any("--expert-groups" in s for s in stage.suggestions)
    assert stage.suggestions[-1].startswith("expert groups do not apply: LoRA experts train data-parallel")
    batch = [s for s in stage.suggestions if s.startswith("--micro-batch ")]
    assert batch, stage.suggestions
    smaller = default_layout(lora_cfg, gpus=2, gpu_mem_gib=0.02, micro_batch=int(batch[0].split()[1]))
    assert fits(plan_stage(lora, lora_cfg, smaller, "experts"), smaller)
    text = format_plan(plan)
    assert "no expert groups; every rank holds the base U-Net and all 10 adapter sets" in text
    assert "| LoRA adapters, 10 sets of rank 4 on 32 layers | 110,080 (110.1 k); 13.71% of one U-Net |" in text


@pytest.mark.parametrize("groups", ["2", "5"])
def test_expert_groups_with_lora_experts_is_one_error_line(groups):
    proc = _run_plan("-c", TINY_YAML, "-o", "model.expert_type=lora", "--gpus", "10", "--gpu-mem", "16",
                     "--expert-groups", groups, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --expert-groups: LoRA experts"), proc.stderr


@pytest.mark.slow
def test_24b_config_with_lora_experts_plans():
    """Adapters by hand: rank 4 on q, k, v, out of both attentions of 16 transformer blocks
    (width C: 5 of 512, 5 of 1024, 6 of 2048; text width D = 2048): 56 C + 8 D each."""
    proc = _run_plan("-c", CONFIG_24B, "-o", "model.expert_type=lora", "-o", "train.expert_parallel=false",
                     "--gpus", "320", "--gpu-mem", "80", "--json")
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    p, lora = plan["parameters"], plan["parameters"]["lora_adapters"]
    per_expert = 56 * (5 * 512 + 5 * 1024 + 6 * 2048) + 16 * 8 * 2048
    assert p["expert_type"] == "lora" and p["expert"] == 2_232_641_028
    assert lora["per_expert"] == per_expert == 1_380_352 and lora["total"] == 10 * per_expert
    assert lora["layers"] == 128 and lora["ratio_to_unet"] == pytest.approx(lora["total"] / p["expert"])
    assert p["experts"] == p["expert"] + lora["total"]
    assert plan["layout"]["expert_groups"] == 1 and plan["layout"]["ranks_per_group"] == 320
    experts = plan["stages"]["experts"]
    assert (experts["experts_held"], experts["adapter_sets_held"], experts["adapter_sets_stepped"]) == (1, 10, 1)
    frozen = p["expert"] + p["text_encoder"] + p["vae"]  # bf16 weights, sharding stage 1 over 320 ranks
    assert experts["bytes"]["params"] == (lora["total"] + frozen) * 2
    assert experts["bytes"]["grads"] == per_expert * 2 and experts["bytes"]["optimizer"] == lora["total"] * 12 // 320
    assert plan["fits"]
    assert "| LoRA adapters, 10 sets of rank 4 on 128 layers | 13,803,520 (13.8 M); 0.62% of one U-Net |" in proc.stderr
