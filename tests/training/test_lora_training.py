"""Stage 2 with LoRA experts (model.expert_type: lora): the base stays the stage-1 U-Net, only the
adapters train, the run resumes exactly, and the saved bank samples as its merged full experts."""
import numpy as np
import pytest

from ernie_vilg2.config import ConfigError
from ernie_vilg2.models.lora_experts import LoRAExperts
from ernie_vilg2.pipelines import load_pipeline, merge_lora_pipeline
from ernie_vilg2.training import runner as runner_mod
from ernie_vilg2.training.config import load_config

from helpers.paths import TINY_YAML
from helpers.training_runs import crash_after, tiny_overrides, unet_weights

pytestmark = pytest.mark.slow

LORA = {"model.expert_type": "lora", "model.lora.rank": 2, "train.experts.steps": 4, "train.experts.lr": 0.01}


def _config(tmp_path, name, **extra):
    return load_config(TINY_YAML, tiny_overrides(tmp_path, **{**LORA, "data.builtin.out_dir": str(tmp_path / "data"),
                                                              "train.output_dir": str(tmp_path / name), **extra}))


def test_lora_stage_trains_only_the_adapters_and_resumes_exactly(tmp_path, monkeypatch):
    straight = _config(tmp_path, "a")
    runner_mod.run_training(straight)
    stage1 = unet_weights(straight.train.output_dir, "base")
    bank = unet_weights(straight.train.output_dir, "experts")
    base_keys = [k for k in bank if ".lora_experts." not in k]
    assert len(base_keys) == len(stage1)
    for key in base_keys:  # the frozen base is the stage-1 U-Net, bit for bit
        np.testing.assert_array_equal(bank[key], stage1["experts.0." + key.removeprefix("base.")], err_msg=key)
    ups = [k for k in bank if k.endswith(".up.weight")]
    assert ups and all(np.abs(bank[k]).max() > 0 for k in ups)  # every adapter moved from its zero start

    resumed = _config(tmp_path, "b")
    restore = crash_after(monkeypatch, "experts", 2)
    with pytest.raises(KeyboardInterrupt):
        runner_mod.run_training(resumed)
    restore()
    runner_mod.run_training(resumed, resume=True)
    again = unet_weights(resumed.train.output_dir, "experts")
    assert again.keys() == bank.keys()
    for key in bank:
        np.testing.assert_array_equal(again[key], bank[key], err_msg=key)

    pipe = load_pipeline(straight.train.output_dir + "/experts")
    assert isinstance(pipe.unet, LoRAExperts) and pipe.unet.config.lora_rank == 2
    merged = merge_lora_pipeline(pipe)
    images = [p(["红苹果", "a blue heart"], num_inference_steps=3, seed=0, output_type="np").images
              for p in (pipe, merged)]
    np.testing.assert_allclose(images[0], images[1], atol=1e-5)


def test_lora_experts_with_expert_parallel_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="train.expert_parallel.*LoRA experts share one base U-Net"):
        _config(tmp_path, "c", **{"train.expert_parallel": "true"})
